"""Magnitude pruning: drop the smallest |W| (Gholami & Omar; the baseline of every paper)."""

from __future__ import annotations

import torch

from llmprune.pruning.amounts import NM, Amount
from llmprune.pruning.selection import nm_mask, unstructured_mask


def magnitude_prune(
    weight: torch.Tensor,
    amount: Amount,
    existing: torch.Tensor | None = None,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, pruned weight) keeping the largest |W|, over the layer or per output row."""
    scores = weight.abs()
    if isinstance(amount, NM):
        mask = nm_mask(scores, amount, existing)
    else:
        mask = unstructured_mask(scores, amount.fraction, existing, per_row=per_row)
    return mask, weight * mask
