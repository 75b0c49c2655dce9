"""The block-by-block driver on tiny models of every family."""

import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.data import calibration_windows
from llmprune.errors import LLMPruneError
from llmprune.evaluate import sparsity_summary
from llmprune.export import load_masks, save_pruned
from llmprune.models import LoadedModel, find_layout, weight_matrix
from llmprune.models.layout import ModelLayout
from llmprune.pruning import ModelMasks, make_config, prune
from llmprune.pruning.amounts import Sparsity
from llmprune.pruning.methods import METHODS
from llmprune.pruning.sequential import capture_block_inputs, walk_blocks
from llmprune.pruning.statistics import InputNorms
from tests.conftest import FAMILIES, VOCAB, build_tiny


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
    assert set(result.masks) == set(layout.linears())
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


def sliding_window_model(name: str) -> torch.nn.Module:
    """A model whose layers get different attention masks (full vs sliding window)."""
    from transformers import Gemma2Config, Qwen2Config

    small = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        sliding_window=6,
    )
    configs = {
        "qwen2-sliding": Qwen2Config(use_sliding_window=True, max_window_layers=2, **small),
        "gemma2": Gemma2Config(head_dim=8, **small),
    }
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(configs[name]).eval()


@pytest.mark.parametrize("family", FAMILIES + ["qwen2-sliding", "gemma2"])
def test_every_block_sees_the_inputs_the_model_gives_it(family):
    """The driver calls each block as the model's own forward does (sliding-window masks
    included): unpruned, its inputs equal the model's hidden states block by block."""
    model = build_tiny(family) if family in FAMILIES else sliding_window_model(family)
    calib = windows(4, 20)
    layout = find_layout(model)
    with torch.no_grad():
        expected = model(input_ids=calib, output_hidden_states=True).hidden_states
    seen = []
    walk_blocks(
        model,
        layout,
        calib,
        lambda index, block, inputs: seen.append(torch.cat([i.hidden for i in inputs])),
        batch_size=2,
        progress=False,
    )
    assert len(seen) == layout.num_blocks
    for index, hidden in enumerate(seen):
        torch.testing.assert_close(hidden, expected[index], rtol=1e-4, atol=1e-4)


class OutputObjectModel(torch.nn.Module):
    """A model whose loop reads an attribute of each block's output: a pass-through
    recorder cannot stand in for its blocks."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, hidden, scale=1.0):
            return types.SimpleNamespace(hidden=self.proj(hidden) * scale)

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.layers = torch.nn.ModuleList([self.Block() for _ in range(3)])

    def forward(self, input_ids, use_cache=False):
        hidden = self.embed(input_ids)
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden, scale=float(index + 1)).hidden
        return hidden


def test_block_arguments_fall_back_to_the_first_blocks_with_a_warning(caplog):
    model = OutputObjectModel()
    layout = ModelLayout(blocks_path="layers", blocks=model.layers)
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING"):
        inputs = capture_block_inputs(model, layout, windows(4, 6), 2, cpu, cpu)
    assert [len(item.calls) for item in inputs] == [1, 1]
    assert inputs[0].calls[0][1] == {"scale": 1.0}
    assert "first block's arguments" in caplog.text
    assert list(model.layers) == list(layout.blocks)  # the real blocks are back
    assert all(isinstance(block, OutputObjectModel.Block) for block in model.layers)


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
    for name, mask in second.masks.items():
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
            assert result.amounts[name] == "2:4"
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
    # the dense pre-pass gives the same ratios to any method and sparsity: reusing them
    # (as a sweep does) gives the same masks as computing them again
    options = dict(method="sparsegpt", sparsity=0.5, allocation="owl", progress=False)
    fresh = prune(build_tiny("llama"), calibration=windows(), **options)
    assert fresh.owl_ratios == result.owl_ratios
    reused = prune(
        build_tiny("llama"), calibration=windows(), owl_ratios=result.owl_ratios, **options
    )
    assert all(torch.equal(reused.masks[n], fresh.masks[n]) for n in fresh.masks)
    with pytest.raises(LLMPruneError, match="3 OWL ratios for 2 blocks"):
        prune(build_tiny("llama"), calibration=windows(), owl_ratios=[0.1] * 3, **options)


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


def test_mask_file_round_trip_and_corruption(tmp_path):
    a, b = torch.rand(5, 7) > 0.5, torch.rand(3, 16) > 0.3
    masks = ModelMasks({"a": a, "b": b})
    assert torch.equal(masks["a"], a) and torch.equal(masks["b"], b)
    assert masks.packed["a"].numel() == 5  # held as bits: ceil(35 / 8) bytes
    assert masks.layer_sparsity()["a"] == pytest.approx(float((~a).float().mean()))
    assert masks.sparsity() == pytest.approx(int((~a).sum() + (~b).sum()) / (35 + 48))
    masks.save(tmp_path / "m.safetensors")
    loaded = ModelMasks.load(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[n], masks[n]) for n in ("a", "b"))
    masks.shapes["a"] = (9, 9)  # 81 bits do not fit in 5 bytes
    masks.save(tmp_path / "short.safetensors")
    with pytest.raises(LLMPruneError, match="does not match its shape"):
        ModelMasks.load(tmp_path / "short.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LLMPruneError, match="corrupt mask file"):
        ModelMasks.load(tmp_path / "bad.safetensors")
