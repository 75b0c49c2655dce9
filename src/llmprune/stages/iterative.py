"""The iterative stage: prune → fine-tune → prune along an increasing schedule (Syed et
al.; Gholami & Omar). It expands into plain prune and finetune steps before the run, so
each step is saved and resumed on its own; earlier zeros stay zero because masks
accumulate from step to step."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.pruning.amounts import NM, parse_amount
from llmprune.pruning.config import amount_options
from llmprune.pruning.config import checked as checked_amount


class IterativeStage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prune: dict[str, Any] = Field(default_factory=dict)
    schedule: list[float | str]
    finetune: dict[str, Any] | None = None

    @field_validator("schedule")
    @classmethod
    def increasing(cls, value: list[float | str]) -> list[float | str]:
        if not value:
            raise ValueError("the schedule is empty")
        amounts = [checked_amount(parse_amount, v) for v in value]
        fractions = [a.fraction for a in amounts if not isinstance(a, NM)]
        if any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)):
            raise ValueError(f"the schedule must increase, got {fractions}")
        return value


def expand(config: IterativeStage) -> list[tuple[str, dict[str, Any]]]:
    """(kind, values) of the steps: a prune per amount, each followed by the fine-tune."""
    base = {k: v for k, v in config.prune.items() if k not in ("sparsity", "pattern")}
    steps: list[tuple[str, dict[str, Any]]] = []
    for amount in config.schedule:
        steps.append(("prune", {**base, **amount_options(amount)}))
        if config.finetune is not None:
            steps.append(("finetune", dict(config.finetune)))
    return steps
