"""Wanda (Sun et al. 2023): prune by |W_ij| · ‖X_j‖₂, compared within each output row.

No weight update: the mask alone, from one statistic (per-input-channel input norms).
"""

from __future__ import annotations

import torch

from llmprune.pruning.amounts import NM, Amount
from llmprune.pruning.selection import nm_mask, unstructured_mask


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """S_ij = |W_ij| · ‖X_j‖₂ (Wanda, Eq. 1)."""
    return weight.abs().float() * input_norms.float().unsqueeze(0)


def wanda_prune(
    weight: torch.Tensor,
    input_norms: torch.Tensor,
    amount: Amount,
    existing: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, pruned weight): per-row comparison for unstructured, per group for N:M."""
    scores = wanda_scores(weight, input_norms)
    if isinstance(amount, NM):
        mask = nm_mask(scores, amount, existing)
    else:
        mask = unstructured_mask(scores, amount.fraction, existing, per_row=True)
    return mask, weight * mask
