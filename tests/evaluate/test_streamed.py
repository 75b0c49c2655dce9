"""Perplexity streamed block by block from disk equals perplexity in memory."""

import pytest
import torch

from llmprune.evaluate.perplexity import perplexity
from llmprune.evaluate.streamed import streamed_perplexity
from llmprune.models import load_model
from tests.conftest import FAMILIES, VOCAB


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_perplexity_equals_in_memory(family, tiny_model_dirs):
    windows = torch.randint(0, VOCAB, (5, 24), generator=torch.Generator().manual_seed(3))
    directory = tiny_model_dirs[family]
    in_memory = perplexity(load_model(directory).model, windows, batch_size=2, progress=False)
    streamed = streamed_perplexity(directory, windows, batch_size=2)
    assert streamed.tokens == in_memory.tokens == 5 * 23
    assert streamed.perplexity == pytest.approx(in_memory.perplexity, rel=1e-5)
