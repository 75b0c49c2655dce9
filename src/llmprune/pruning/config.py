"""One validated description of a pruning run; CLI flags and YAML recipes map onto it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmprune.errors import LLMPruneError
from llmprune.pruning.allocation import parse_target
from llmprune.pruning.targets import parse_pattern

METHODS = ("magnitude", "wanda", "sparsegpt")


class PruneConfig(BaseModel):
    """How to prune: method, how much, which layers, and the calibration it needs."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["magnitude", "wanda", "sparsegpt"] = "sparsegpt"
    sparsity: float | None = Field(default=None, description="unstructured fraction in [0, 1)")
    pattern: str | None = Field(default=None, description='semi-structured "N:M", e.g. "2:4"')
    targets: list[str] = Field(default_factory=list, description="glob patterns; empty = all")
    ignore: list[str] = Field(default_factory=list)
    overrides: dict[str, float | str] = Field(default_factory=dict)
    allocation: Literal["uniform", "owl"] = "uniform"
    owl_threshold: float = Field(default=5.0, gt=0)
    owl_lambda: float = Field(default=0.08, ge=0, lt=0.5)
    per_row: bool = Field(default=False, description="magnitude: compare within output rows")
    calib: str = "pydoc"
    nsamples: int = Field(default=128, ge=1)
    seqlen: int = Field(default=512, ge=2)
    seed: int = 0
    batch_size: int = Field(default=2, ge=1)  # 2 windows: peak RSS ~1/3 lower than 8, as fast
    blocksize: int = Field(default=128, ge=1)
    dampening: float = Field(default=0.01, gt=0)
    device: str = "cpu"

    @field_validator("sparsity")
    @classmethod
    def sparsity_in_range(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {value}")
        return value

    @field_validator("pattern")
    @classmethod
    def pattern_is_nm(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pattern(value)
        return value

    @field_validator("overrides")
    @classmethod
    def overrides_are_targets(cls, value: dict) -> dict:
        for target in value.values():
            parse_target(target)
        return value

    @model_validator(mode="after")
    def one_target(self) -> PruneConfig:
        if self.sparsity is None and self.pattern is None:
            raise ValueError("give a sparsity (e.g. 0.5) or an N:M pattern (e.g. 2:4)")
        if self.sparsity is not None and self.pattern is not None:
            raise ValueError("give a sparsity or an N:M pattern, not both")
        if self.allocation == "owl" and self.pattern is not None:
            raise ValueError("OWL allocation applies to unstructured sparsity, not N:M")
        return self

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude" or self.allocation == "owl"

    @property
    def label(self) -> str:
        amount = self.pattern if self.pattern else f"{self.sparsity:g}"
        owl = "+owl" if self.allocation == "owl" else ""
        return f"{self.method}{owl}@{amount}"


def make_config(**values) -> PruneConfig:
    """Build a PruneConfig, turning pydantic's report into one line."""
    try:
        return PruneConfig(**values)
    except ValidationError as exc:
        raise LLMPruneError(one_line(exc)) from None


def one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    if error.get("type") == "literal_error" and where == "method":
        message = f"unknown method {error.get('input')!r}; choose one of {', '.join(METHODS)}"
        return message
    return f"{where}: {message}" if where else message
