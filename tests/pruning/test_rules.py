"""The pure pruning math: exact sparsity, N:M groups, nesting, and reconstruction error."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.pruning.amounts import NM, Sparsity, parse_pattern
from llmprune.pruning.magnitude import magnitude_prune
from llmprune.pruning.selection import nm_mask, unstructured_mask
from llmprune.pruning.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from llmprune.pruning.statistics import Hessian, InputNorms
from llmprune.pruning.wanda import wanda_prune


def correlated_inputs(tokens=2048, features=96, seed=0):
    """Activations with outlier channels and correlations, like a transformer's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, features // 4, generator=g)
    mix = torch.randn(features // 4, features, generator=g)
    x = base @ mix + 0.3 * torch.randn(tokens, features, generator=g)
    x[:, :3] *= 20.0  # outlier features
    return x


def layer_case(seed=0, rows=64, features=96):
    g = torch.Generator().manual_seed(seed + 100)
    weight = torch.randn(rows, features, generator=g)
    x = correlated_inputs(features=features, seed=seed)
    norms, hessian = InputNorms(features, "L"), Hessian(features, "L")
    for chunk in x.split(500):
        norms.add_batch(chunk)
        hessian.add_batch(chunk)
    return weight, x, norms, hessian


def all_methods(weight, norms, hessian, target, existing=None):
    return {
        "magnitude": magnitude_prune(weight, target, existing),
        "wanda": wanda_prune(weight, norms.norms, target, existing),
        "sparsegpt": sparsegpt_prune(weight, hessian.matrix, target, existing, blocksize=32),
    }


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.7, 0.9])
def test_every_method_hits_the_exact_sparsity(fraction):
    weight, _, norms, hessian = layer_case()
    expected = round(weight.numel() * fraction)
    for name, (mask, pruned) in all_methods(weight, norms, hessian, Sparsity(fraction)).items():
        assert int((~mask).sum()) == expected, name
        assert torch.all(pruned[~mask] == 0), name
        assert abs(int((pruned == 0).sum()) - expected) <= 1, name


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_groups_hold_at_most_n_nonzeros(pattern):
    nm = parse_pattern(pattern)
    weight, _, norms, hessian = layer_case()
    for name, (mask, pruned) in all_methods(weight, norms, hessian, nm).items():
        groups = (pruned != 0).view(weight.shape[0], -1, nm.m).sum(-1)
        assert int(groups.max()) <= nm.n, name
        assert int(mask.view(weight.shape[0], -1, nm.m).sum(-1).max()) == nm.n, name


def test_reconstruction_error_orders_sparsegpt_wanda_magnitude():
    weight, x, norms, hessian = layer_case(seed=1)
    for target in (Sparsity(0.5), NM(2, 4)):
        results = all_methods(weight, norms, hessian, target)
        errors = {k: float((x @ weight.t() - x @ w.t()).norm()) for k, (_, w) in results.items()}
        assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], (target, errors)


def test_existing_masks_stay_pruned_and_nest():
    weight, _, norms, hessian = layer_case(seed=2)
    for name in ("magnitude", "wanda", "sparsegpt"):
        first = all_methods(weight, norms, hessian, Sparsity(0.3))[name][0]
        weight_after = weight * first
        second = all_methods(weight_after, norms, hessian, Sparsity(0.6), first)[name][0]
        assert torch.all(second <= first), name  # pruned before => pruned now
        assert int((~second).sum()) == round(weight.numel() * 0.6), name


def test_per_row_selection_is_exact_with_a_remainder():
    scores = torch.rand(7, 10)
    mask = unstructured_mask(scores, 0.33, per_row=True)
    assert int((~mask).sum()) == round(70 * 0.33)
    assert set((~mask).sum(1).tolist()) <= {3, 4}


def test_nm_mask_keeps_existing_zeros():
    scores = torch.rand(4, 8)
    existing = torch.ones(4, 8, dtype=torch.bool)
    existing[:, :3] = False  # three zeros already in the first group of 4
    mask = nm_mask(scores, NM(2, 4), existing)
    assert not mask[:, :3].any()
    assert int(mask[:, 4:].sum(1).max()) == 2


def test_targets_reject_bad_values():
    with pytest.raises(LLMPruneError, match=r"\[0, 1\)"):
        Sparsity(1.0)
    with pytest.raises(LLMPruneError, match=r"\[0, 1\)"):
        Sparsity(-0.1)
    with pytest.raises(LLMPruneError, match="N < M"):
        parse_pattern("4:4")
    with pytest.raises(LLMPruneError, match="like 2:4"):
        parse_pattern("half")
    with pytest.raises(LLMPruneError, match="does not divide"):
        NM(2, 4).check_divides(10, "model.layers.0.mlp.up_proj")


def test_statistics_refuse_nan_activations():
    norms = InputNorms(4, "model.layers.3.mlp.down_proj")
    with pytest.raises(LLMPruneError, match="NaN/Inf.*model.layers.3.mlp.down_proj"):
        norms.add_batch(torch.tensor([[1.0, float("nan"), 0.0, 1.0]]))


def test_hessian_is_two_x_xt_over_tokens():
    x = torch.randn(100, 5)
    hessian = Hessian(5, "L")
    hessian.add_batch(x[:30])
    hessian.add_batch(x[30:])
    assert torch.allclose(hessian.matrix, 2 * x.t() @ x / 100, atol=1e-5)


def test_dampening_rescues_a_singular_hessian_and_fails_loudly_on_nan():
    singular = torch.zeros(6, 6)
    singular[0, 0] = 1.0
    factor = inverse_hessian_factor(singular, 0.01, "L")
    assert torch.isfinite(factor).all()
    bad = torch.full((6, 6), float("nan"))
    with pytest.raises(LLMPruneError, match="layer blocks.0.q"):
        inverse_hessian_factor(bad, 0.01, "blocks.0.q")
    negative = -torch.eye(6) * 1e6
    with pytest.raises(LLMPruneError, match="layer blocks.0.k is singular"):
        inverse_hessian_factor(negative, 0.01, "blocks.0.k")
