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


def l1_penalty(weights: list[torch.Tensor]) -> torch.Tensor:
    """Mean |w| over all the given weights (so λ does not scale with model size)."""
    total = sum(w.abs().sum() for w in weights)
    return total / sum(w.numel() for w in weights)


def unit_norms(rows: list[torch.Tensor], cols: list[torch.Tensor], size: int) -> torch.Tensor:
    """L2 norm of each structured unit: `size` consecutive rows of every (out, in) matrix in
    `rows` together with the same `size` columns of every matrix in `cols` (an FFN channel:
    size 1, gate and up rows, down column; a head: head_dim rows of q, columns of o)."""
    squared = sum(r.reshape(-1, size, r.shape[1]).pow(2).sum(dim=(1, 2)) for r in rows)
    squared = squared + sum(c.reshape(c.shape[0], -1, size).pow(2).sum(dim=(0, 2)) for c in cols)
    return squared.clamp_min(1e-12).sqrt()


def group_lasso_penalty(units: list[torch.Tensor]) -> torch.Tensor:
    """Mean L2 norm over all units (group lasso, Yuan & Lin 2006), size-free like l1."""
    norms = torch.cat([u.reshape(-1) for u in units])
    return norms.mean()
