"""Magnitude pruning: drop the smallest |W| (Gholami & Omar; the baseline of every paper)."""

from __future__ import annotations

import torch

from llmprune.pruning.selection import nm_mask, unstructured_mask
from llmprune.pruning.targets import NM, Target


def magnitude_prune(
    weight: torch.Tensor,
    target: Target,
    existing: torch.Tensor | None = None,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, pruned weight) keeping the largest |W|, over the layer or per output row."""
    scores = weight.abs()
    if isinstance(target, NM):
        mask = nm_mask(scores, target, existing)
    else:
        mask = unstructured_mask(scores, target.fraction, existing, per_row=per_row)
    return mask, weight * mask
