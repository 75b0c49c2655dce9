"""The rules on single layers: exact sparsity, N:M groups, SparseGPT's error below magnitude's."""

import pytest
import torch

from llmprune.pruning.amounts import NM, Sparsity, parse_pattern
from llmprune.pruning.magnitude import magnitude_prune
from llmprune.pruning.sparsegpt import sparsegpt_prune
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
