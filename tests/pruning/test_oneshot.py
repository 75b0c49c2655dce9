"""The block-by-block driver on tiny models of every family."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.data import calibration_windows
from llmprune.errors import LLMPruneError
from llmprune.evaluate import sparsity_summary
from llmprune.export import load_masks, save_pruned
from llmprune.models import find_layout, weight_matrix
from llmprune.pruning import ModelMasks, make_config, prune
from llmprune.pruning.methods import METHODS
from llmprune.pruning.statistics import InputNorms
from llmprune.pruning.targets import Sparsity
from tests.conftest import FAMILIES, build_tiny


def windows(count=8, seqlen=32, seed=0):
    return calibration_windows(
        torch.randint(0, 500, (4000,), generator=torch.Generator().manual_seed(seed)),
        count,
        seqlen,
        seed,
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "options",
    [
        dict(method="magnitude", sparsity=0.5),
        dict(method="wanda", pattern="2:4"),
        dict(method="sparsegpt", sparsity=0.7),
    ],
)
def test_every_family_prunes_to_the_exact_sparsity(family, options):
    model = build_tiny(family)
    result = prune(model, calibration=windows(), progress=False, batch_size=3, **options)
    result.masks.check(model)
    fraction = 0.5 if "pattern" in options else options["sparsity"]
    layout = find_layout(model)
    assert set(result.masks.masks) == set(layout.linears())
    for name, module in layout.linears().items():
        zeros = int((weight_matrix(module) == 0).sum())
        assert abs(zeros - round(weight_matrix(module).numel() * fraction)) <= 1, name
    logits = model(input_ids=windows(1)).logits
    assert torch.isfinite(logits).all()


def test_sequential_calibration_equals_inputs_recomputed_from_the_pruned_model():
    calib = windows(6, 24)
    driven = build_tiny("llama")
    result = prune(
        driven, calibration=calib, method="wanda", sparsity=0.5, batch_size=4, progress=False
    )

    naive = build_tiny("llama")
    layout = find_layout(naive)
    config = make_config(method="wanda", sparsity=0.5)
    for index in range(layout.num_blocks):
        prefix = f"{layout.blocks_path}.{index}."
        layers = {prefix + n: m for n, m in layout.block_linears(index).items()}
        stats = {n: InputNorms(weight_matrix(m).shape[1], n) for n, m in layers.items()}
        hooks = [
            m.register_forward_hook(lambda mod, a, o, s=stats[n]: s.add_batch(a[0]))
            for n, m in layers.items()
        ]
        with torch.no_grad():
            naive(input_ids=calib)  # the whole model, earlier blocks already pruned
        for hook in hooks:
            hook.remove()
        for name, module in layers.items():
            mask, weight = METHODS["wanda"].rule(
                weight_matrix(module), stats[name], Sparsity(0.5), None, config, name
            )
            weight_matrix(module).copy_(weight)
            agreement = (mask == result.masks[name]).float().mean()
            assert agreement > 0.999, (name, float(agreement))


def test_existing_masks_nest_across_steps():
    model = build_tiny("opt")
    calib = windows()
    first = prune(model, calibration=calib, method="sparsegpt", sparsity=0.3, progress=False)
    second = prune(
        model,
        calibration=calib,
        method="sparsegpt",
        sparsity=0.6,
        existing=first.masks,
        progress=False,
    )
    for name, mask in second.masks.masks.items():
        assert torch.all(mask <= first.masks[name]), name
    assert abs(second.masks.sparsity() - 0.6) < 1e-3
    second.masks.check(model)


def test_targets_ignore_and_overrides():
    model = build_tiny("llama")
    dense = {n: weight_matrix(m).clone() for n, m in find_layout(model).linears().items()}
    result = prune(
        model,
        method="magnitude",
        sparsity=0.5,
        ignore=["*.self_attn.*"],
        overrides={"*.mlp.down_proj": 0.8, "*.mlp.up_proj": "2:4"},
        progress=False,
    )
    for name, module in find_layout(model).linears().items():
        if "self_attn" in name:
            assert torch.equal(weight_matrix(module), dense[name])
            assert name not in result.masks
        elif name.endswith("down_proj"):
            assert result.masks.layer_sparsity()[name] == pytest.approx(0.8, abs=1e-3)
        elif name.endswith("up_proj"):
            assert result.targets[name] == "2:4"
        else:
            assert result.masks.layer_sparsity()[name] == pytest.approx(0.5, abs=1e-3)


def test_owl_moves_sparsity_between_blocks_and_keeps_the_total():
    model = build_tiny("llama")
    result = prune(
        model,
        calibration=windows(),
        method="wanda",
        sparsity=0.6,
        allocation="owl",
        owl_lambda=0.1,
        progress=False,
    )
    assert len(result.block_sparsity) == 2
    assert sum(result.block_sparsity) / 2 == pytest.approx(0.6, abs=1e-9)
    assert result.block_sparsity[0] != pytest.approx(result.block_sparsity[1])
    assert result.masks.sparsity() == pytest.approx(0.6, abs=1e-3)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(method="prunezilla", sparsity=0.5), "unknown method 'prunezilla'"),
        (dict(method="wanda", sparsity=1.0), r"sparsity must be in \[0, 1\)"),
        (dict(method="wanda", pattern="4:2"), "N < M"),
        (dict(method="wanda", pattern="3:7"), "M=7 does not divide"),
        (dict(method="wanda"), "give a sparsity"),
        (dict(method="wanda", sparsity=0.5, ignore=["*"]), "no linear layer matches"),
    ],
)
def test_bad_options_are_refused_before_any_change(options, message):
    model = build_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LLMPruneError, match=message):
        prune(model, calibration=windows(), progress=False, **options)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nan_calibration_activations_name_the_layer():
    model = build_tiny("gpt2")
    with torch.no_grad():
        model.transformer.wte.weight[:] = float("nan")
    with pytest.raises(LLMPruneError, match="NaN/Inf.*transformer.h.0.attn.c_attn"):
        prune(model, calibration=windows(), method="sparsegpt", sparsity=0.5, progress=False)


def test_saved_model_reloads_to_the_same_logits_and_masks(tmp_path, tiny_tokenizer):
    model = build_tiny("gpt_neox")
    result = prune(model, calibration=windows(), method="sparsegpt", sparsity=0.5, progress=False)
    out = save_pruned(model, tiny_tokenizer, tmp_path / "pruned", result.masks, result.to_dict())
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = windows(2)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, reloaded(input_ids=ids).logits)
    masks = load_masks(out)
    assert set(masks.masks) == set(result.masks.masks)
    assert all(torch.equal(masks[n], result.masks[n]) for n in masks.masks)
    masks.check(reloaded)
    assert sparsity_summary(reloaded)["prunable_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_mask_file_round_trip_and_corruption(tmp_path):
    masks = ModelMasks({"a": torch.rand(5, 7) > 0.5, "b": torch.rand(3, 16) > 0.3})
    masks.save(tmp_path / "m.safetensors")
    loaded = ModelMasks.load(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[n], masks[n]) for n in ("a", "b"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LLMPruneError, match="corrupt mask file"):
        ModelMasks.load(tmp_path / "bad.safetensors")
