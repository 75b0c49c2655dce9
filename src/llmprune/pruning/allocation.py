"""How much each layer is pruned: uniform, per-layer overrides, or OWL.

OWL (outlier-weighted layerwise sparsity, Yin et al. 2023): blocks whose Wanda scores
hold more outliers (scores above `threshold` × the layer mean) keep more weights. The
block densities are 1 − s + 2λ·(D − min D)/(max D − min D), re-centred so their mean is
exactly 1 − s: the same total sparsity, moved to where it hurts least.
"""

from __future__ import annotations

import fnmatch

import torch

from llmprune.pruning.amounts import Amount, parse_amount


def matches(name: str, patterns: list[str]) -> bool:
    """Glob patterns on the full module name; a bare name like "q_proj" matches its tail."""
    return any(
        fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")
        for pattern in patterns
    )


def select_layers(names: list[str], targets: list[str], ignore: list[str]) -> list[str]:
    return [n for n in names if (not targets or matches(n, targets)) and not matches(n, ignore)]


def override_amount(name: str, overrides: dict[str, float | str]) -> Amount | None:
    """The amount of the first override whose glob matches `name`, if any."""
    for pattern, value in overrides.items():
        if matches(name, [pattern]):
            return parse_amount(value)
    return None


def outlier_ratio(scores: torch.Tensor, threshold: float) -> float:
    """Fraction of scores above `threshold` × their mean (OWL's layerwise outlier distribution)."""
    scores = scores.float()
    return float((scores > threshold * scores.mean()).float().mean())


def owl_block_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """Per-block sparsity from per-block outlier ratios; mean equals `sparsity`."""
    values = torch.tensor(ratios, dtype=torch.float64)
    spread = float(values.max() - values.min())
    if spread == 0.0:
        return [sparsity] * len(ratios)
    scaled = (values - values.min()) * (2.0 * lam / spread)
    density = scaled - scaled.mean() + (1.0 - sparsity)
    result = (1.0 - density).clamp(0.0, 0.99)
    return [float(v) for v in result]
