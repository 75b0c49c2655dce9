"""Learned structured masks: hard-concrete gates, the Lagrangian toward a target size,
and the cut to a smaller model that reloads."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from llmprune.errors import LLMPruneError
from llmprune.structured.learned import (
    GATES,
    deterministic_gates,
    keep_probability,
    lagrangian,
    learn_structure,
    make_learned_config,
    sample_gates,
)
from tests.conftest import VOCAB, build_tiny

WINDOWS = torch.randint(0, VOCAB, (80, 32), generator=torch.Generator().manual_seed(5))
BASE = {"batch_size": 2, "seqlen": 32, "learning_rate": 1e-3, "multiple": 8}


def test_hard_concrete_gates():
    logits = torch.tensor([-10.0, 0.0, 10.0])
    assert deterministic_gates(logits).tolist() == pytest.approx([0.0, 0.5, 1.0])
    probabilities = keep_probability(logits)
    assert probabilities[0] < 0.01 and probabilities[2] > 0.99
    assert torch.all(probabilities[1:] > probabilities[:-1])
    torch.manual_seed(0)
    samples = sample_gates(torch.zeros(10_000))
    assert samples.min() >= 0 and samples.max() <= 1
    assert 0.1 < float((samples == 0).float().mean()) < 0.3  # stretched below 0: exact zeros
    assert lagrangian(torch.tensor(0.3), 0.5, 2.0, 10.0).item() == pytest.approx(0.0, abs=1e-6)
    assert lagrangian(torch.tensor(0.6), 0.5, 2.0, 10.0).item() == pytest.approx(0.3)


def test_the_expected_size_moves_to_its_target_and_the_cut_model_reloads(tmp_path):
    model = build_tiny("llama")
    config = make_learned_config(
        **BASE, sparsity=0.5, steps=30, target_warmup=0, gate_lr=0.2, lagrangian_lr=5.0
    )
    model, masks, summary = learn_structure(model, None, config, windows=WINDOWS[:60])
    trace = summary["gates"]
    assert abs(trace[-1]["expected"] - 0.5) < abs(trace[0]["expected"] - 0.5) - 0.1
    assert not any(name.startswith(GATES) for name, _ in model.named_parameters())
    structure = summary["structure"]
    assert model.config.intermediate_size == structure["ffn_width"] < 128
    assert model.config.num_attention_heads == structure["query_heads_per_group"] * 2
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = WINDOWS[70:72]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)


def test_a_learned_stage_in_a_recipe_saves_a_smaller_model(tmp_path, tiny_model_dirs):
    from llmprune.recipe import load_recipe
    from llmprune.run import run_recipe

    recipe = {
        "model": str(tiny_model_dirs["llama"]),
        "eval": {"seqlen": 32, "max_windows": 2},
        "stages": [
            {"learned": {**BASE, "sparsity": 0.4, "steps": 6, "units": ["ffn", "blocks"]}},
            {"save": {"out": str(tmp_path / "small")}},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    log = run_recipe(load_recipe(path), tmp_path / "run", echo=lambda *_: None)
    assert log[0]["kind"] == "learned" and log[0]["perplexity"] > 1
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert sum(p.numel() for p in saved.parameters()) == log[0]["parameters"]
    manifest = json.loads((tmp_path / "small" / "pruning_manifest.json").read_text())
    assert manifest["passes"][0]["learned"].startswith("learned ffn+blocks")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.0}, "less than 1"),
        ({"sparsity": 0.3, "units": ["rows"]}, "units"),
        ({"sparsity": 0.3, "trainable": ["all", "lora"]}, "no LoRA"),
        ({}, "sparsity"),
    ],
)
def test_bad_learned_configs(options, message):
    with pytest.raises(LLMPruneError, match=message):
        make_learned_config(**options)


def test_learned_heads_without_grouping_remove_whole_heads(tmp_path):
    model = build_tiny("llama", num_attention_heads=4, num_key_value_heads=4)
    config = make_learned_config(
        **BASE,
        sparsity=0.6,
        steps=30,
        target_warmup=0,
        gate_lr=0.5,
        lagrangian_lr=20.0,
        units=["heads"],
    )
    model, _, summary = learn_structure(model, None, config, windows=WINDOWS[:60])
    kept = model.config.num_attention_heads
    assert kept == model.config.num_key_value_heads < 4
    assert 64 % kept == 0  # a head count LlamaConfig accepts
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = WINDOWS[70:72]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)
