"""How much a layer is pruned — its *amount*: a fraction of its weights, or an N:M pattern.

"Targets" elsewhere means *which* layers (globs); an amount says *how much*. Every
"0.5" or "2:4" a user types is read by `parse_amount`, and the [0, 1) rule lives in
`Sparsity` alone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from llmprune.errors import LLMPruneError


@dataclass(frozen=True)
class Sparsity:
    """Unstructured: this fraction of the layer's weights becomes zero."""

    fraction: float

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0.0 <= self.fraction < 1.0):
            raise LLMPruneError(f"sparsity must be in [0, 1), got {self.fraction}")

    def __str__(self) -> str:
        return f"{self.fraction:g}"


@dataclass(frozen=True)
class NM:
    """Semi-structured: at most `n` non-zeros in every `m` consecutive input channels."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (0 <= self.n < self.m):
            raise LLMPruneError(f"N:M pattern needs 0 <= N < M, got {self.n}:{self.m}")

    @property
    def fraction(self) -> float:
        return 1.0 - self.n / self.m

    def check_divides(self, in_features: int, layer: str) -> None:
        if in_features % self.m:
            raise LLMPruneError(
                f"{self} does not fit layer {layer}: M={self.m} does not divide its "
                f"{in_features} input channels"
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


Amount = Sparsity | NM


def parse_amount(value: float | str | Amount) -> Amount:
    """ "0.5" / 0.5 → Sparsity(0.5); "2:4" → NM(2, 4); anything else is a one-line error."""
    if isinstance(value, Sparsity | NM):
        return value
    if isinstance(value, str) and ":" in value:
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", value)
        if not match:
            raise LLMPruneError(f"N:M pattern must look like 2:4, got {value!r}")
        return NM(int(match.group(1)), int(match.group(2)))
    if isinstance(value, bool):
        raise LLMPruneError(f"an amount must be a sparsity in [0, 1) or N:M, got {value!r}")
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise LLMPruneError(
            f"an amount must be a sparsity in [0, 1) or N:M, got {value!r}"
        ) from None
    if math.isnan(fraction):
        raise LLMPruneError("sparsity must be in [0, 1), got nan")
    return Sparsity(fraction)


def parse_pattern(text: str) -> NM:
    """An amount that must be N:M ("2:4")."""
    if not isinstance(text, str) or ":" not in text:
        raise LLMPruneError(f"N:M pattern must look like 2:4, got {text!r}")
    return parse_amount(text)
