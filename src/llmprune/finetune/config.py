"""A validated description of one recovery (fine-tuning) run."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmprune.errors import LLMPruneError, validated
from llmprune.finetune.trainable import check_parts


class FinetuneConfig(BaseModel):
    """Causal-LM training that keeps pruned weights at exactly zero."""

    model_config = ConfigDict(extra="forbid")
    # training that reads whole weight matrices on every rank (scores, gates) is not sharded
    shardable: ClassVar[bool] = True

    trainable: list[str] = Field(default_factory=lambda: ["all"])
    lora_rank: int = Field(default=16, ge=1)
    lora_alpha: float | None = None
    lora_targets: list[str] = Field(default_factory=list, description="globs; default: pruned")
    merge_lora: bool = True
    # masked: train W + (B·A) ⊙ M (PERP), so the merged model is the trained one; plain: a
    # dense adapter. Default: masked when merging, plain when the adapter stays separate.
    lora_mode: Literal["masked", "plain"] | None = None
    steps: int = Field(default=100, ge=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    warmup_steps: int | None = Field(default=None, ge=0, description="default: warmup_ratio")
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1, description="PERP: 10 % of steps")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accumulation: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    sharding: Literal["none", "fsdp"] = Field(
        default="none",
        description="none: every process holds the model (DDP) | fsdp: shard it (FSDP2).",
    )
    data: str = "pydoc"
    seqlen: int = Field(default=256, ge=2)
    seed: int = 0
    device: str = "cpu"
    distill: float = Field(
        default=0.0, ge=0, le=1, description="α: weight of the KL to the teacher's logits."
    )
    distill_temperature: float = Field(default=2.0, gt=0, description="T of the distillation.")
    distill_hidden: float = Field(
        default=0.0, ge=0, description="Weight of the MSE to the teacher's last hidden states."
    )
    teacher: str | None = Field(
        default=None, description="Teacher model; default: the run's input (dense) model."
    )
    distill_topk: int = Field(
        default=0,
        ge=0,
        description="Cache the teacher's top-k log-probabilities on disk before training "
        "and free the teacher (0: run the teacher beside the student).",
    )
    teacher_offload: bool = Field(
        default=False,
        description="Keep the teacher's weights in CPU memory; each layer visits the "
        "training device as it runs.",
    )

    @model_validator(mode="after")
    def distillation_fits(self) -> FinetuneConfig:
        if self.distill_topk and self.distill <= 0:
            raise ValueError("distill_topk caches logits for the KL: give distill > 0 too")
        if self.distill_topk and self.distill_hidden > 0:
            raise ValueError("distill_hidden needs the teacher's hidden states: no distill_topk")
        return self

    @property
    def distills(self) -> bool:
        return self.distill > 0 or self.distill_hidden > 0

    @field_validator("trainable")
    @classmethod
    def known_parts(cls, value: list[str]) -> list[str]:
        try:
            return check_parts(value)
        except LLMPruneError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("sharding")
    @classmethod
    def can_shard(cls, value: str) -> str:
        if value != "none" and not cls.shardable:
            raise ValueError("this stage scores whole weight matrices: it cannot be sharded")
        return value

    @property
    def uses_lora(self) -> bool:
        return "lora" in self.trainable or "lora_head" in self.trainable

    @property
    def masked_lora(self) -> bool:
        return (self.lora_mode or ("masked" if self.merge_lora else "plain")) == "masked"

    @property
    def warmup(self) -> int:
        """Warm-up steps: as given, else `warmup_ratio` of the run."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_ratio * self.steps))

    @property
    def label(self) -> str:
        return f"finetune {'+'.join(self.trainable)} x{self.steps}"


def make_finetune_config(**values) -> FinetuneConfig:
    return validated(FinetuneConfig, values)
