"""Streaming a checkpoint block by block gives exactly what pruning in memory gives."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.export import load_masks
from llmprune.plans import prune_and_save, summary
from llmprune.pruning import make_config
from tests.conftest import FAMILIES

CASES = [(family, "uniform") for family in FAMILIES] + [("llama", "owl"), ("gpt2", "owl")]


@pytest.mark.parametrize("family, allocation", CASES)
def test_streamed_pruning_equals_in_memory_pruning(family, allocation, tiny_model_dirs, tmp_path):
    options = dict(
        method="sparsegpt", sparsity=0.5, nsamples=4, seqlen=32, batch_size=3, allocation=allocation
    )
    runs = {}
    for stream in (True, False):
        out = tmp_path / f"out-{stream}"
        records = prune_and_save(
            str(tiny_model_dirs[family]),
            out,
            make_config(**options),
            evaluate=False,
            progress=False,
            stream=stream,
            echo=lambda *_: None,
        )
        assert summary(records)["streamed"] is stream
        runs[stream] = out
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))
    streamed = AutoModelForCausalLM.from_pretrained(runs[True]).eval()
    in_memory = AutoModelForCausalLM.from_pretrained(runs[False]).eval()
    with torch.no_grad():
        a, b = streamed(input_ids=ids).logits, in_memory(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    masks = load_masks(runs[True])
    other = load_masks(runs[False])
    assert all(torch.equal(masks[n], other[n]) for n in other)
    masks.check(streamed)
    # the head stays tied to the embeddings where the config says so
    if streamed.config.tie_word_embeddings:
        assert streamed.get_output_embeddings().weight.data_ptr() == (
            streamed.get_input_embeddings().weight.data_ptr()
        )
