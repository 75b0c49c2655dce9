"""A gradual-pruning run: fine-tuning plus when, how much and by what score to prune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmprune.errors import validated
from llmprune.finetune.config import FinetuneConfig
from llmprune.gradual.schedules import Schedule


class GradualConfig(FinetuneConfig):
    """Fine-tuning that prunes as it trains: masks grow at steps t0, t0 + Δt, … t0 + nΔt."""

    shardable = False

    sparsity: float | None = Field(default=None, ge=0, lt=1, description="Target s_f.")
    initial_sparsity: float | None = Field(
        default=None, ge=0, lt=1, description="s_i at t0 (default 0; constant: s_f)."
    )
    schedule: Schedule = "cubic"
    start_step: int = Field(default=1, ge=0, description="t0: the first re-prune step.")
    every: int = Field(default=10, ge=1, description="Δt: steps between re-prunes.")
    prunes: int | None = Field(
        default=None, ge=0, description="n: re-prunes after t0 (default: as many as fit)."
    )
    score: Literal["magnitude", "wanda", "movement"] = "magnitude"
    threshold: float | None = Field(
        default=None, ge=0, description="Threshold mode: prune every |w| < τ at each re-prune."
    )
    l1: float = Field(default=0.0, ge=0, description="λ of an L1 penalty (mean |w|).")
    group_lasso: float = Field(
        default=0.0, ge=0, description="λ of a group-lasso penalty on FFN channels and heads."
    )
    targets: list[str] = Field(default_factory=list, description="Layer globs; none = all.")
    ignore: list[str] = Field(default_factory=list, description="Layer globs to leave.")

    @model_validator(mode="after")
    def coherent(self) -> GradualConfig:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("give a target sparsity or a threshold (τ), one of them")
        if self.schedule == "constant" and self.initial_sparsity not in (None, self.sparsity):
            raise ValueError("a constant schedule holds one sparsity: give sparsity only")
        if self.sparsity is not None and self.start_sparsity > self.sparsity:
            raise ValueError(
                f"the schedule ends at {self.sparsity:g}, below its start "
                f"{self.start_sparsity:g}: masks only grow"
            )
        if self.last_prune_step > self.steps:
            raise ValueError(
                f"the last re-prune (step {self.last_prune_step}) comes after the last "
                f"training step ({self.steps})"
            )
        if self.score in ("wanda", "movement") and self.start_step < 1:
            raise ValueError(f"{self.score} scores need training steps first: start_step >= 1")
        if self.score == "movement" and "all" not in self.trainable:
            raise ValueError("movement scores need the weights' gradients: trainable [all]")
        if self.uses_lora:
            raise ValueError("gradual pruning trains the weights it prunes: no LoRA parts")
        return self

    @property
    def start_sparsity(self) -> float:
        if self.schedule == "constant" or self.sparsity is None:
            return self.sparsity or 0.0
        return self.initial_sparsity if self.initial_sparsity is not None else 0.0

    @property
    def count(self) -> int:
        """n: re-prunes after t0."""
        if self.prunes is not None:
            return self.prunes
        return max(0, (self.steps - self.start_step) // self.every)

    @property
    def last_prune_step(self) -> int:
        return self.start_step + self.every * self.count

    @property
    def label(self) -> str:
        if self.threshold is not None:
            return f"gradual |w|<{self.threshold:g} ({self.score})"
        return f"gradual {self.schedule} {self.start_sparsity:g}→{self.sparsity:g} ({self.score})"


def make_gradual_config(**values) -> GradualConfig:
    return validated(GradualConfig, values)
