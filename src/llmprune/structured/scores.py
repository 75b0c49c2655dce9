"""Importance of structured units: pure tensor functions, no model plumbing.

Channel scores are computed on the input channels of a unit's output projection (o_proj
for heads, down_proj for FFN channels), the place where removing a unit removes exactly
one column block:
- Wanda-sp (An et al. 2024, after Sun et al. 2023): Σ_rows |W_ij|·‖X_j‖.
- FLAP fluctuation (An et al. 2024): Var(X_j)·‖W_:,j‖², and its bias compensation
  b += W_:,removed · E[X_removed].
- First-order Taylor (LLM-Pruner, Ma et al. 2023): Σ |W ⊙ ∂L/∂W| over every weight of a
  unit, in all its projections.
Blocks: influence 1 − cos(x_in, x_out) (ShortGPT, Men et al. 2024) and the angular
distance arccos(cos(x_l, x_l+n))/π of n consecutive blocks (Gromov et al. 2024).
"""

from __future__ import annotations

import math

import torch


def wanda_sp(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """Per input channel of an (out, in) weight: Σ_rows |W|·‖X_j‖."""
    return (weight.abs().float() * norms.float()[None, :]).sum(dim=0)


def fluctuation(weight: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """Per input channel of an (out, in) weight: Var(X_j)·‖W_:,j‖² (FLAP)."""
    return variance.float() * weight.float().pow(2).sum(dim=0)


def taylor(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Element-wise first-order Taylor importance |W ⊙ ∂L/∂W|."""
    return (weight.float() * grad.float()).abs()


def grouped(channel_scores: torch.Tensor, size: int) -> torch.Tensor:
    """Sum consecutive runs of `size` channels: channel scores -> head scores."""
    return channel_scores.reshape(-1, size).sum(dim=1)


def top_units(scores: torch.Tensor, keep: int) -> list[int]:
    """The `keep` highest-scoring units, in their original order (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def kept_width(width: int, fraction: float, multiple: int) -> int:
    """How many of `width` channels stay when `fraction` go, rounded to `multiple`."""
    kept = width * (1.0 - fraction)
    rounded = max(multiple, int(math.floor(kept / multiple + 0.5)) * multiple)
    return min(width, rounded)


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """(s − mean) / std within one layer, so that layers of different scale compare."""
    scores = scores.double()
    spread = scores.std() if scores.numel() > 1 else scores.new_tensor(0.0)
    centred = scores - scores.mean()
    return centred / spread if float(spread) > 0 else torch.zeros_like(centred)


def global_keep_counts(
    layer_scores: list[torch.Tensor], fraction: float, multiple: int = 1, minimum: int = 1
) -> list[int]:
    """How many units each layer keeps when `fraction` of all units go model-wide.

    Scores are standardised within each layer and the lowest across all layers go
    (FLAP's adaptive structure, An et al. 2024); each count is then rounded to
    `multiple` and kept at `minimum` or more, so the total may differ a little."""
    values = torch.cat([standardized(s) for s in layer_scores])
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(layer_scores)])
    place = torch.cat([torch.arange(len(s)) for s in layer_scores])
    remove = int(math.floor(values.numel() * fraction + 0.5))
    # ties (equal standardised scores) are shared out across layers, not taken from one
    order = sorted(
        range(values.numel()), key=lambda i: (float(values[i]), int(place[i]), int(owner[i]))
    )
    removed = torch.bincount(owner[order[:remove]], minlength=len(layer_scores))
    counts = []
    for scores, gone in zip(layer_scores, removed.tolist(), strict=True):
        kept = len(scores) - gone
        rounded = int(math.floor(kept / multiple + 0.5)) * multiple
        counts.append(min(len(scores), max(minimum, rounded)))
    return counts


def bias_compensation(weight: torch.Tensor, mean: torch.Tensor, removed: list[int]) -> torch.Tensor:
    """What removed input channels added on average: W_:,removed · E[X_removed]."""
    if not removed:
        return torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    index = torch.tensor(removed, device=weight.device)
    return weight.float()[:, index] @ mean.float().to(weight.device)[index]


def cosine_per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """cos(a_t, b_t) for every token of two [..., hidden] tensors, flattened."""
    a = a.reshape(-1, a.shape[-1]).float()
    b = b.reshape(-1, b.shape[-1]).to(a.device).float()
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def block_influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """1 − mean cos(x_in, x_out) over all tokens (ShortGPT's block influence)."""
    cos = torch.cat([cosine_per_token(a, b) for a, b in zip(inputs, outputs, strict=True)])
    return float(1.0 - cos.mean())


def angular_distance(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """mean arccos(cos(x_l, x_l+n))/π over all tokens (Gromov et al.)."""
    cos = torch.cat([cosine_per_token(a, b) for a, b in zip(inputs, outputs, strict=True)])
    return float(torch.arccos(cos.clamp(-1.0, 1.0)).mean() / math.pi)


def blocks_to_drop(scores: list[float], count: int, consecutive: bool) -> list[int]:
    """Which blocks go: the `count` least influential, or, for angular distances of runs
    (scores[l] = distance from block l to l + count), the run with the smallest one."""
    if consecutive:
        start = min(range(len(scores)), key=lambda i: (scores[i], i))
        return list(range(start, start + count))
    return sorted(sorted(range(len(scores)), key=lambda i: (scores[i], i))[:count])
