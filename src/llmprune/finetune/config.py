"""A validated description of one recovery (fine-tuning) run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmprune.errors import LLMPruneError
from llmprune.finetune.trainable import check_parts


class FinetuneConfig(BaseModel):
    """Causal-LM training that keeps pruned weights at exactly zero."""

    model_config = ConfigDict(extra="forbid")

    trainable: list[str] = Field(default_factory=lambda: ["all"])
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: float | None = None
    lora_targets: list[str] = Field(default_factory=list, description="globs; default: pruned")
    merge_lora: bool = True
    steps: int = Field(default=100, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accumulation: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    data: str = "pydoc"
    seqlen: int = Field(default=256, ge=2)
    seed: int = 0
    device: str = "cpu"

    @field_validator("trainable")
    @classmethod
    def known_parts(cls, value: list[str]) -> list[str]:
        try:
            return check_parts(value)
        except LLMPruneError as exc:
            raise ValueError(str(exc)) from None

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.trainable


def make_finetune_config(**values) -> FinetuneConfig:
    from llmprune.pruning.config import one_line

    try:
        return FinetuneConfig(**values)
    except ValidationError as exc:
        raise LLMPruneError(one_line(exc)) from None
