"""Recovery keeps sparsity: full fine-tuning, PERP subsets, LoRA merged through masks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmprune.errors import LLMPruneError
from llmprune.finetune import finetune, make_finetune_config
from llmprune.finetune.lora import add_lora
from llmprune.finetune.trainable import trainable_names
from llmprune.pruning import prune
from tests.conftest import build_tiny, torchrun


def train_windows(count=32, seqlen=24):
    return torch.randint(0, 500, (count, seqlen), generator=torch.Generator().manual_seed(0))


def pruned(family="llama", sparsity=0.5):
    model = build_tiny(family)
    result = prune(model, method="magnitude", sparsity=sparsity, progress=False)
    return model, result.masks


def quick(**overrides):
    values = dict(steps=6, learning_rate=5e-3, batch_size=4, seqlen=24, **overrides)
    return make_finetune_config(**values)


def test_full_finetuning_keeps_pruned_weights_at_zero():
    model, masks = pruned()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, summary = finetune(model, None, quick(), masks, windows=train_windows())
    assert masks.violations(model) == {}
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > 10  # the surviving weights did learn
    assert summary["trainable"] == summary["total"]
    assert torch.isfinite(torch.tensor(summary["train_loss"]))


def test_without_masks_the_zeros_fill_in():
    """The control for the test above: training with no keeper does break sparsity."""
    model, masks = pruned()
    model, _ = finetune(model, None, quick(), None, windows=train_windows())
    assert len(masks.violations(model)) > 0


def test_perp_trains_only_the_chosen_parameters():
    model, masks = pruned("opt")
    parts = ["biases", "norms", "head"]
    chosen = trainable_names(model, parts)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, summary = finetune(model, None, quick(trainable=parts), masks, windows=train_windows())
    for name, param in model.named_parameters():
        if name in chosen:
            continue
        assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in chosen)
    assert any(n.endswith("bias") for n in chosen)
    assert any("layer_norm" in n for n in chosen)
    assert summary["trainable"] < summary["total"]
    assert masks.violations(model) == {}


def test_perp_subset_is_a_small_fraction():
    model = build_tiny("llama")
    chosen = trainable_names(model, ["norms"])
    norms = {n for n, _ in model.named_parameters() if "norm" in n}
    assert chosen == norms


def test_lora_merge_keeps_sparsity_and_changes_the_model():
    model, masks = pruned("llama", 0.6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    merged, summary = finetune(
        model, None, quick(trainable=["lora"], lora_rank=4), masks, windows=train_windows()
    )
    assert masks.violations(merged) == {}
    assert set(dict(merged.named_parameters())) == set(before)  # adapters merged away
    assert any(not torch.equal(p, before[n]) for n, p in merged.named_parameters())
    assert summary["trainable"] < 0.2 * summary["total"]


def test_lora_unmerged_form_and_gpt2_conv1d():
    model, masks = pruned("gpt2")
    peft_model, _ = finetune(
        model,
        None,
        quick(trainable=["lora", "norms"], lora_rank=2, merge_lora=False),
        masks,
        windows=train_windows(),
    )
    assert any("lora_A" in n for n, _ in peft_model.named_parameters())
    merged = peft_model.merge_and_unload()
    masks.apply(merged)
    assert masks.violations(merged) == {}


def test_lora_on_a_missing_layer_is_refused():
    with pytest.raises(LLMPruneError, match="does not exist"):
        add_lora(build_tiny("llama"), ["model.layers.9.mlp.up_proj"])


def test_bad_finetune_options():
    with pytest.raises(LLMPruneError, match="unknown trainable part 'everything'"):
        make_finetune_config(trainable=["everything"])
    with pytest.raises(LLMPruneError, match="steps"):
        make_finetune_config(steps=0)
    with pytest.raises(LLMPruneError, match="Extra inputs"):
        make_finetune_config(stepz=3)


def test_two_process_ddp_keeps_masks_and_agrees(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    process = torchrun(str(worker), str(tmp_path))
    assert process.returncode == 0, process.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in reports)
    assert reports[0]["sha"] == reports[1]["sha"]
    assert all(r["violations"] == 0 for r in reports)


def test_fsdp_with_two_processes_keeps_masks_and_matches_one_process(tmp_path):
    """FSDP2 over 2 CPU processes: weights are really sharded, pruned weights and their
    AdamW moments stay zero on every shard, every rank ends with the same full model,
    and (LLaMA has no dropout) it equals one process training on the same 4 windows per
    step. GPT-2 covers Conv1D (transposed) weights and a tied head."""
    worker = Path(__file__).with_name("fsdp_worker.py")
    process = torchrun(str(worker), str(tmp_path), "fsdp", "llama,gpt2")
    assert process.returncode == 0, process.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, str(worker), str(tmp_path), "single", "llama"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for family in ("llama", "gpt2"):
        reports = [json.loads((tmp_path / f"{family}-fsdp{r}.json").read_text()) for r in (0, 1)]
        for report in reports:
            assert report["world_size"] == 2 and report["sharded"]
            assert report["class"] in ("LlamaForCausalLM", "GPT2LMHeadModel")
            assert report["violations"] == 0 and report["moments_at_pruned"] == 0
            assert report["zeros_in_masked_layers"] == report["masked_weights"] // 2
        ranks = [load_file(tmp_path / f"{family}-fsdp{r}.safetensors") for r in (0, 1)]
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    sharded = load_file(tmp_path / "llama-fsdp0.safetensors")
    alone = load_file(tmp_path / "llama-single0.safetensors")
    start = build_tiny("llama").state_dict()
    moved = max(float((alone[k] - start[k]).abs().max()) for k in alone)
    assert moved > 1e-3  # training really changed the weights
    assert max(float((sharded[k] - alone[k]).abs().max()) for k in alone) < 1e-4


def test_fsdp_refuses_lora_and_uneven_splits(monkeypatch):
    model = build_tiny("llama")
    masks = prune(model, method="magnitude", sparsity=0.5, progress=False).masks
    windows = torch.randint(0, 500, (6, 16), generator=torch.Generator().manual_seed(0))
    config = make_finetune_config(steps=1, trainable=["lora"], sharding="fsdp", seqlen=16)
    with pytest.raises(LLMPruneError, match="sharding: fsdp trains full weights"):
        finetune(model, None, config, masks, windows=windows)
    monkeypatch.setenv("WORLD_SIZE", "4")
    config = make_finetune_config(steps=1, batch_size=1, seqlen=16)
    with pytest.raises(LLMPruneError, match="6 training windows do not split evenly over 4"):
        finetune(model, None, config, masks, windows=windows)
