"""The block driver: each block sees the inputs the (pruned) model gives it."""

import types

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.errors import LLMPruneError
from llmprune.models import find_layout, weight_matrix
from llmprune.models.layout import ModelLayout
from llmprune.pruning import make_config, prune
from llmprune.pruning.amounts import Sparsity
from llmprune.pruning.methods import METHODS
from llmprune.pruning.sequential import (
    calibration_compute_dtype,
    capture_block_inputs,
    has_fast_bf16,
    walk_blocks,
)
from llmprune.pruning.statistics import InputNorms
from tests.conftest import FAMILIES, VOCAB, build_tiny
from tests.pruning.cases import windows


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


def test_nan_calibration_activations_name_the_layer():
    model = build_tiny("gpt2")
    with torch.no_grad():
        model.transformer.wte.weight[:] = float("nan")
    with pytest.raises(LLMPruneError, match="NaN/Inf.*transformer.h.0.attn.c_attn"):
        prune(model, calibration=windows(), method="sparsegpt", sparsity=0.5, progress=False)


def test_bf16_calibration_runs_blocks_under_autocast_and_keeps_statistics_fp32():
    windows = torch.randint(0, 500, (8, 32), generator=torch.Generator().manual_seed(0))
    masks = {}
    for dtype in ("float32", "bfloat16"):
        model = build_tiny("llama")
        result = prune(
            model,
            method="sparsegpt",
            sparsity=0.5,
            calibration=windows,
            calibration_dtype=dtype,
            progress=False,
        )
        assert result.compute_dtype == dtype
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert result.masks.sparsity() == 0.5
        masks[dtype] = result.masks
    agreement = [
        float((masks["float32"][n] == masks["bfloat16"][n]).float().mean())
        for n in masks["float32"]
    ]
    assert min(agreement) > 0.99 and min(agreement) < 1.0  # bf16 really ran, and barely moved
    assert calibration_compute_dtype("float32", "cpu", torch.float32) is None
    assert calibration_compute_dtype("bfloat16", "cpu", torch.float32) == torch.bfloat16
    assert calibration_compute_dtype("bfloat16", "cpu", torch.bfloat16) is None  # already bf16
    auto = calibration_compute_dtype("auto", "cpu", torch.float32)
    assert auto == (torch.bfloat16 if has_fast_bf16(torch.device("cpu")) else None)
