"""What a structured prune removes ("ffn=0.3,heads=0.25,blocks=2") and how it scores units."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.errors import LLMPruneError, validated

SCORES = ("wanda-sp", "flap", "taylor")
BLOCK_SCORES = ("influence", "angular")


@dataclass(frozen=True)
class Removal:
    """Fractions of FFN channels and attention heads to remove, and whole blocks to drop."""

    ffn: float = 0.0
    heads: float = 0.0
    blocks: int = 0

    def __str__(self) -> str:
        parts = [
            f"ffn={self.ffn:g}" if self.ffn else "",
            f"heads={self.heads:g}" if self.heads else "",
            f"blocks={self.blocks}" if self.blocks else "",
        ]
        return ",".join(part for part in parts if part)


def parse_removal(spec: str | dict | Removal) -> Removal:
    """Read "ffn=0.3,heads=0.25,blocks=2" (or the same as a mapping) into a Removal."""
    if isinstance(spec, Removal):
        return spec
    items = (
        spec.items()
        if isinstance(spec, dict)
        else [part.partition("=")[::2] for part in str(spec).split(",") if part.strip()]
    )
    values: dict[str, float | int] = {}
    for key, raw in items:
        key = str(key).strip()
        if key not in ("ffn", "heads", "blocks"):
            raise LLMPruneError(
                f"structured: unknown unit {key!r} in {spec!r}; use ffn=F, heads=F, blocks=N"
            )
        if key in values:
            raise LLMPruneError(f"structured: {key} given twice in {spec!r}")
        values[key] = number(key, raw)
    removal = Removal(**values)
    if not str(removal):
        raise LLMPruneError("structured: say what to remove, e.g. ffn=0.3,heads=0.25,blocks=2")
    return removal


def number(key: str, raw) -> float | int:
    text = str(raw).strip()
    try:
        value = int(text) if key == "blocks" else float(text)
    except ValueError:
        kind = "a whole number of blocks" if key == "blocks" else "a fraction in (0, 1)"
        raise LLMPruneError(f"structured: {key} must be {kind}, got {text!r}") from None
    if key == "blocks" and value < 0:
        raise LLMPruneError(f"structured: blocks must be >= 0, got {value}")
    if key != "blocks" and value >= 1.0:
        unit = "head" if key == "heads" else "FFN channel"
        raise LLMPruneError(
            f"structured: {key}={value:g} would remove every {unit}; give a fraction in [0, 1)"
        )
    if key != "blocks" and value < 0.0:
        raise LLMPruneError(f"structured: {key} must be a fraction in [0, 1), got {value:g}")
    return value


class StructuredConfig(BaseModel):
    """A structured prune: which units go, how they are scored, and the calibration."""

    model_config = ConfigDict(extra="forbid")

    remove: str = Field(description="What to remove: ffn=0.3,heads=0.25,blocks=2.")
    score: Literal["wanda-sp", "flap", "taylor"] = Field(
        default="wanda-sp", description="Unit importance: wanda-sp | flap | taylor."
    )
    block_score: Literal["influence", "angular"] = Field(
        default="influence",
        description="Blocks: influence (1 - cos, each block) | angular (n consecutive).",
    )
    head_unit: Literal["kv-group", "query"] = Field(
        default="kv-group",
        description="GQA: remove whole key-value groups, or query heads from every group.",
    )
    multiple: int = Field(default=32, ge=1, description="Round kept FFN widths to this multiple.")
    widths: Literal["uniform", "global"] = Field(
        default="uniform",
        description="uniform: every block keeps as many units | global: ranked model-wide "
        "(FLAP's adaptive structure; saved with per-layer shapes).",
    )
    calib: str = Field(default="pydoc", description="Calibration text source.")
    nsamples: int = Field(default=128, ge=1, description="Calibration windows.")
    seqlen: int = Field(default=512, ge=2, description="Tokens per window.")
    seed: int = Field(default=0, description="Seed for calibration sampling.")
    batch_size: int = Field(default=2, ge=1, description="Calibration windows per pass.")
    device: str = Field(default="cpu", description="cpu | cuda | cuda:N")

    @field_validator("remove", mode="before")
    @classmethod
    def removal_spec(cls, value) -> str:
        try:
            return str(parse_removal(value))
        except LLMPruneError as exc:
            raise ValueError(str(exc)) from None

    @property
    def removal(self) -> Removal:
        return parse_removal(self.remove)

    @property
    def label(self) -> str:
        return f"{self.score} {self.removal}"


def make_structured_config(**values) -> StructuredConfig:
    return validated(StructuredConfig, values)
