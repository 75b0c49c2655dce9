"""The rules on single layers: exact sparsity, N:M groups, SparseGPT's error below magnitude's."""

import pytest
import torch

from llmprune.pruning.amounts import NM, Sparsity, parse_pattern
from tests.pruning.cases import all_methods, layer_case


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
    for amount in (Sparsity(0.5), NM(2, 4)):
        results = all_methods(weight, norms, hessian, amount)
        errors = {k: float((x @ weight.t() - x @ w.t()).norm()) for k, (_, w) in results.items()}
        assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], (amount, errors)
