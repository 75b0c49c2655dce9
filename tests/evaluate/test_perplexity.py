import math

import pytest
import torch

from llmprune.data import eval_windows, get_source, source_tokens
from llmprune.errors import LLMPruneError
from llmprune.evaluate import perplexity
from llmprune.evaluate.perplexity import evaluate_text
from llmprune.models import load_model
from tests.conftest import FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_perplexity_is_exp_of_the_models_own_loss(family, tiny_model_dirs):
    loaded = load_model(tiny_model_dirs[family])
    ids = source_tokens(loaded.tokenizer, get_source("pydoc"), "eval")
    windows = eval_windows(ids, 32, max_windows=6)
    with torch.no_grad():
        losses = [loaded.model(input_ids=w[None], labels=w[None]).loss for w in windows]
    expected = math.exp(torch.stack(losses).double().mean().item())
    result = perplexity(loaded.model, windows, batch_size=4, progress=False)
    assert result.tokens == 6 * 31
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_batch_size_does_not_change_the_result(tiny_model_dirs):
    loaded = load_model(tiny_model_dirs["gpt2"])
    windows = eval_windows(torch.randint(0, 500, (400,)), 40)
    one = perplexity(loaded.model, windows, batch_size=1, progress=False).perplexity
    many = perplexity(loaded.model, windows, batch_size=7, progress=False).perplexity
    assert one == pytest.approx(many, rel=1e-5)


def test_seqlen_above_context_is_refused(tiny_model_dirs):
    loaded = load_model(tiny_model_dirs["opt"])
    with pytest.raises(LLMPruneError, match="above the model's context of 256"):
        evaluate_text(loaded, "pydoc", seqlen=1024, progress=False)


def test_nan_weights_give_a_clear_error(tiny_model_dirs):
    loaded = load_model(tiny_model_dirs["llama"])
    with torch.no_grad():
        loaded.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(LLMPruneError, match="not finite"):
        evaluate_text(loaded, "pydoc", seqlen=32, max_windows=2, progress=False)
