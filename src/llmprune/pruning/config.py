"""One validated description of a pruning pass; CLI flags and YAML recipes map onto it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmprune.errors import LLMPruneError, validated
from llmprune.pruning.amounts import NM, Amount, parse_amount, parse_pattern
from llmprune.pruning.methods import METHODS


def checked(parse, value):
    """Run an llmprune parser inside a pydantic validator (its error becomes pydantic's)."""
    try:
        return parse(value)
    except LLMPruneError as exc:
        raise ValueError(str(exc)) from None


class PruneConfig(BaseModel):
    """How to prune: method, how much, which layers, and the calibration it needs."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(default="sparsegpt", description=" | ".join(METHODS))
    sparsity: float | None = Field(default=None, description="Unstructured fraction in [0, 1).")
    pattern: str | None = Field(default=None, description="Semi-structured N:M, e.g. 2:4.")
    targets: list[str] = Field(
        default_factory=list, description="Globs of the layers to prune; none = all."
    )
    ignore: list[str] = Field(default_factory=list, description="Globs of layers to leave.")
    overrides: dict[str, float | str] = Field(
        default_factory=dict, description="GLOB=SPARSITY or GLOB=N:M for matching layers."
    )
    allocation: Literal["uniform", "owl"] = Field(default="uniform", description="uniform | owl")
    owl_threshold: float = Field(default=5.0, gt=0, description="OWL: outlier if > M x mean.")
    owl_lambda: float = Field(default=0.08, ge=0, lt=0.5, description="OWL: density spread.")
    per_row: bool = Field(default=False, description="Magnitude: compare within output rows.")
    calib: str = Field(default="pydoc", description="Calibration text source.")
    nsamples: int = Field(default=128, ge=1, description="Calibration windows.")
    seqlen: int = Field(default=512, ge=2, description="Tokens per window.")
    seed: int = Field(default=0, description="Seed for calibration sampling.")
    # 2 windows per pass: peak RSS ~1/3 lower than 8, as fast
    batch_size: int = Field(default=2, ge=1, description="Calibration windows per pass.")
    blocksize: int = Field(default=128, ge=1, description="SparseGPT column block.")
    dampening: float = Field(default=0.01, gt=0, description="SparseGPT: x mean diag(H).")
    device: str = Field(default="cpu", description="cpu | cuda | cuda:N")
    calibration_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Calibration forward passes: auto = bfloat16 where the hardware has it.",
    )

    @field_validator("method")
    @classmethod
    def known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; choose one of {', '.join(METHODS)}")
        return value

    @field_validator("sparsity")
    @classmethod
    def sparsity_in_range(cls, value: float | None) -> float | None:
        if value is not None:
            checked(parse_amount, value)
        return value

    @field_validator("pattern")
    @classmethod
    def pattern_is_nm(cls, value: str | None) -> str | None:
        if value is not None:
            checked(parse_pattern, value)
        return value

    @field_validator("overrides")
    @classmethod
    def overrides_are_amounts(cls, value: dict) -> dict:
        for amount in value.values():
            checked(parse_amount, amount)
        return value

    @model_validator(mode="after")
    def one_amount(self) -> PruneConfig:
        if self.sparsity is None and self.pattern is None:
            raise ValueError("give a sparsity (e.g. 0.5) or an N:M pattern (e.g. 2:4)")
        if self.sparsity is not None and self.pattern is not None:
            raise ValueError("give a sparsity or an N:M pattern, not both")
        if self.allocation == "owl" and self.pattern is not None:
            raise ValueError("OWL allocation applies to unstructured sparsity, not N:M")
        return self

    @property
    def amount(self) -> Amount:
        """The uniform amount every layer gets unless an override or OWL says otherwise."""
        return parse_amount(self.pattern if self.pattern is not None else self.sparsity)

    @property
    def needs_calibration(self) -> bool:
        return METHODS[self.method].needs_calibration or self.allocation == "owl"

    @property
    def label(self) -> str:
        owl = "+owl" if self.allocation == "owl" else ""
        return f"{self.method}{owl}@{self.amount}"


def amount_options(amount: float | str | Amount) -> dict:
    """The PruneConfig fields that set an amount: {"sparsity": 0.5} or {"pattern": "2:4"}."""
    amount = parse_amount(amount)
    return {"pattern": str(amount)} if isinstance(amount, NM) else {"sparsity": amount.fraction}


def make_config(**values) -> PruneConfig:
    """Build a PruneConfig, turning pydantic's report into one line."""
    return validated(PruneConfig, values)
