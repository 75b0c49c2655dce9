"""What a layer is pruned to: a fraction of its weights, or an N:M pattern."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmprune.errors import LLMPruneError


@dataclass(frozen=True)
class Sparsity:
    """Unstructured: this fraction of the layer's weights becomes zero."""

    fraction: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 1.0:
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


Target = Sparsity | NM


def parse_pattern(text: str) -> NM:
    """Parse "2:4" into NM(2, 4)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise LLMPruneError(f"N:M pattern must look like 2:4, got {text!r}")
    return NM(int(match.group(1)), int(match.group(2)))
