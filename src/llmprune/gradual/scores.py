"""Scores for pruning during training: pure tensor functions.

- magnitude: |W|;
- Wanda-style: |W|·‖X‖ with input norms accumulated over the training batches since the
  last re-prune (Sun et al. 2023, run online);
- movement (Sanh et al. 2020): S accumulates −(∂L/∂W)·W at every backward pass, so
  weights moving away from zero score high whatever their size;
- threshold: every |w| < τ goes.
"""

from __future__ import annotations

import torch


def movement_update(score: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor) -> None:
    """S ← S − ∂L/∂W ⊙ W, in place."""
    score.sub_(grad.float() * weight.float())


def wanda_online(weight: torch.Tensor, squared_norms: torch.Tensor) -> torch.Tensor:
    return weight.abs().float() * squared_norms.sqrt().float()[None, :]


def threshold_mask(weight: torch.Tensor, tau: float, existing: torch.Tensor | None) -> torch.Tensor:
    """Keep |w| ≥ τ; what was pruned stays pruned."""
    keep = weight.abs() >= tau
    return keep if existing is None else keep & existing
