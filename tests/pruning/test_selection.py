"""Selection: exact counts per row, N:M groups, existing zeros kept."""

import torch

from llmprune.pruning.amounts import NM, Sparsity
from llmprune.pruning.selection import nm_mask, unstructured_mask
from tests.pruning.cases import all_methods, layer_case


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
