"""A saved pruned model reloads to the same logits and masks."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.evaluate import sparsity_summary
from llmprune.export import load_masks, save_pruned
from llmprune.models import LoadedModel
from llmprune.pruning import prune
from tests.conftest import build_tiny
from tests.pruning.cases import windows


def test_saved_model_reloads_to_the_same_logits_and_masks(tmp_path, tiny_tokenizer):
    model = build_tiny("gpt_neox")
    result = prune(model, calibration=windows(), method="sparsegpt", sparsity=0.5, progress=False)
    loaded = LoadedModel(model, tiny_tokenizer, "tiny")
    out = save_pruned(loaded, tmp_path / "pruned", result.masks, result.to_dict())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = windows(2)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    masks = load_masks(out)
    assert set(masks) == set(result.masks)
    assert all(torch.equal(masks[n], result.masks[n]) for n in masks)
    masks.check(reloaded)
    assert sparsity_summary(reloaded)["prunable_sparsity"] == pytest.approx(0.5, abs=1e-3)
