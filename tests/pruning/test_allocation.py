"""How much each layer gets: targets, ignore, overrides and OWL."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.models import find_layout, weight_matrix
from llmprune.pruning import prune
from tests.conftest import build_tiny
from tests.pruning.cases import windows


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
