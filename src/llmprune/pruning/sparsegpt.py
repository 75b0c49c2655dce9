"""SparseGPT (Frantar & Alistarh 2023): mask selection and weight update from the Hessian.

Algorithm 1 of the paper, over blocks of `blocksize` input columns:
  H⁻¹ = Cholesky(( H + λI )⁻¹)ᵀ            dampened inverse Hessian, upper Cholesky factor
  for each block: choose the mask by w² / [H⁻¹]²_jj (adaptive mask selection),
      for each column j: err = (w_j − mask·w_j) / [H⁻¹]_jj
                         W[:, j:] −= err · H⁻¹[j, j:]       (OBS update of later columns)
      then propagate the block's errors to all later columns at once (lazy batch update).
N:M patterns choose the mask inside each group of M columns as the sweep reaches it.
"""

from __future__ import annotations

import torch

from llmprune.pruning.amounts import NM, Amount
from llmprune.pruning.selection import forced_scores, lowest_mask, prune_count
from llmprune.pruning.statistics import inverse_hessian_factor, with_dead_inputs_fixed


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    amount: Amount,
    existing: torch.Tensor | None = None,
    blocksize: int = 128,
    damping: float = 0.01,
    layer: str = "?",
    hinv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, updated weight) minimising ‖WX − ŴX‖² for the given layer Hessian.

    `hinv` is `inverse_hessian_factor(with_dead_inputs_fixed(hessian), damping)` when the
    caller already has it (layers fed the same input share one Hessian and one factor).
    """
    if isinstance(amount, NM) and blocksize % amount.m:
        blocksize = max(amount.m, blocksize // amount.m * amount.m)  # groups never straddle
    W = weight.detach().clone().float()
    rows, cols = W.shape
    dead = torch.diag(hessian) == 0  # inputs that are always zero: free to prune
    W[:, dead.to(W.device)] = 0.0
    if hinv is None:
        hinv = inverse_hessian_factor(with_dead_inputs_fixed(hessian), damping, layer)
    Hinv = hinv.to(W.device)

    keep = torch.ones(rows, cols, dtype=torch.bool, device=W.device)
    pruned_so_far = 0
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        W1 = W[:, start:end].clone()
        Hinv1 = Hinv[start:end, start:end]
        diag = torch.diag(Hinv1)
        old = None if existing is None else existing[:, start:end]
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        if isinstance(amount, NM):
            pruned1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            # adaptive mask selection: the block's share of the layer total, by w²/[H⁻¹]²_jj
            want = prune_count(rows * end, amount.fraction) - pruned_so_far
            pruned1 = block_unstructured(W1, diag, want, old)
            pruned_so_far += int(pruned1.sum())
        for j in range(end - start):
            if isinstance(amount, NM) and j % amount.m == 0:
                group = slice(j, j + amount.m)
                pruned1[:, group] = block_nm(
                    W1[:, group], diag[group], amount, group_mask(old, group)
                )
            w = W1[:, j]
            q = w.masked_fill(pruned1[:, j], 0.0)
            Q1[:, j] = q
            err = (w - q) / diag[j]
            W1[:, j:] -= err.unsqueeze(1) @ Hinv1[j, j:].unsqueeze(0)
            Err1[:, j] = err
        W[:, start:end] = Q1
        keep[:, start:end] = ~pruned1
        W[:, end:] -= Err1 @ Hinv[start:end, end:]
    W *= keep
    return keep, W.to(weight.dtype)


def group_mask(old: torch.Tensor | None, group: slice) -> torch.Tensor | None:
    return None if old is None else old[:, group]


def block_unstructured(
    W1: torch.Tensor, diag: torch.Tensor, want: int, old: torch.Tensor | None
) -> torch.Tensor:
    """The `want` weights of a block with the lowest OBS error w² / [H⁻¹]²_jj."""
    scores = forced_scores(W1.pow(2) / diag.pow(2).unsqueeze(0), old)
    forced = 0 if old is None else int((~old).sum())
    return ~lowest_mask(scores, min(max(want, forced), W1.numel()))


def block_nm(
    W1: torch.Tensor, diag: torch.Tensor, pattern: NM, old: torch.Tensor | None
) -> torch.Tensor:
    """In each row, the m − n weights of one group with the lowest OBS error."""
    scores = forced_scores(W1.pow(2) / diag.pow(2).unsqueeze(0), old)
    pruned = torch.zeros_like(W1, dtype=torch.bool)
    drop = pattern.m - pattern.n
    if drop:
        pruned.scatter_(1, torch.topk(scores, drop, dim=1, largest=False).indices, True)
    if old is not None:
        pruned |= ~old
    return pruned
