"""Turn importance scores into masks: the selection step every rule shares.

Masks are boolean, True = keep. `existing` is a mask from an earlier pruning step:
weights it pruned stay pruned (their score is treated as -inf), which is how iterative
schedules keep earlier zeros and only prune among survivors.
"""

from __future__ import annotations

import torch

from llmprune.pruning.amounts import NM


def forced_scores(scores: torch.Tensor, existing: torch.Tensor | None) -> torch.Tensor:
    """Scores with already-pruned weights pushed below every live weight."""
    scores = scores.float()
    if existing is None:
        return scores
    return scores.masked_fill(~existing, float("-inf"))


def prune_count(numel: int, fraction: float) -> int:
    return int(round(numel * fraction))


def unstructured_mask(
    scores: torch.Tensor,
    fraction: float,
    existing: torch.Tensor | None = None,
    per_row: bool = False,
) -> torch.Tensor:
    """Prune the lowest-scoring `fraction` of weights, over the layer or within each row.

    Exactly round(numel * fraction) weights are pruned (never fewer than `existing`
    already pruned). Per-row selection (Wanda's comparison group) spreads the remainder
    over the rows whose next-lowest score is smallest, so the layer total is still exact.
    """
    scores = forced_scores(scores, existing)
    total = max(prune_count(scores.numel(), fraction), pruned_total(existing))
    if total == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if not per_row:
        return lowest_mask(scores, total)
    return per_row_mask(scores, total, existing)


def lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask pruning exactly the `count` lowest scores (topk: ~10x faster than a sort)."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        lowest = torch.topk(scores.flatten(), count, largest=False, sorted=False).indices
        mask[lowest] = False
    return mask.view_as(scores)


def pruned_total(existing: torch.Tensor | None) -> int:
    return 0 if existing is None else int((~existing).sum())


def per_row_mask(scores: torch.Tensor, total: int, existing: torch.Tensor | None) -> torch.Tensor:
    rows, cols = scores.shape
    counts = torch.full((rows,), total // rows, dtype=torch.long, device=scores.device)
    if existing is not None:  # a row never prunes fewer than it already has
        counts = torch.maximum(counts, (~existing).sum(dim=1))
    remainder = total - int(counts.sum())
    depth = min(cols, int(counts.max()) + 1)  # only the lowest few per row are ever needed
    sorted_scores, order = torch.topk(scores, depth, dim=1, largest=False, sorted=True)
    if remainder > 0:
        # the next weight each row would prune, cheapest first
        nxt = sorted_scores.gather(1, counts.clamp(max=depth - 1).unsqueeze(1)).squeeze(1)
        nxt = nxt.masked_fill(counts >= cols, float("inf"))
        counts[torch.argsort(nxt, stable=True)[:remainder]] += 1
    positions = torch.arange(depth, device=scores.device).expand(rows, depth)
    pruned_sorted = positions < counts.unsqueeze(1)
    mask = torch.ones_like(scores, dtype=torch.bool)
    mask.scatter_(1, order, ~pruned_sorted)
    return mask


def nm_mask(
    scores: torch.Tensor, pattern: NM, existing: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the `n` highest scores in each group of `m` consecutive input channels.

    Groups where `existing` already pruned more than m - n keep those zeros.
    """
    rows, cols = scores.shape
    scores = forced_scores(scores, existing)
    groups = scores.view(rows, cols // pattern.m, pattern.m)
    drop = pattern.m - pattern.n
    lowest = torch.topk(groups, drop, dim=-1, largest=False).indices if drop else None
    mask = torch.ones_like(groups, dtype=torch.bool)
    if lowest is not None:
        mask.scatter_(-1, lowest, False)
    mask = mask.view(rows, cols)
    if existing is not None:
        mask &= existing
    return mask
