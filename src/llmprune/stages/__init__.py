"""Stages: the units every command is made of, and the registry that names them.

A stage kind is a pydantic config plus one `execute(config, state, ctx) -> dict`
function. `llmprune prune` is the plan [prune, save, evaluate], a recipe lists its own,
a sweep makes one plan per point; `run.execute_plan` runs any of them. Adding a kind
(export, structured prune, gradual prune) is one module plus one line in `KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from llmprune.errors import LLMPruneError, validated
from llmprune.finetune.config import FinetuneConfig
from llmprune.gradual.config import GradualConfig
from llmprune.pruning.config import PruneConfig
from llmprune.stages import (
    evaluate,
    export,
    finetune,
    gradual,
    iterative,
    learned,
    prune,
    save,
    structured,
)
from llmprune.stages.context import EvalSettings, StageContext
from llmprune.stages.state import ModelState
from llmprune.structured.config import StructuredConfig
from llmprune.structured.learned import LearnedConfig


@dataclass(frozen=True)
class StageKind:
    """How to build, check and run one kind of stage."""

    config: type[BaseModel]
    execute: Callable[[Any, ModelState, StageContext], dict] | None
    changes_model: bool = False
    # config fields that default to run-wide settings: field -> setting name
    run_defaults: tuple[tuple[str, str], ...] = ()
    check: Callable[[Any, ModelState], None] | None = None
    main_only: bool = False  # writes outside the run: only the main process runs it
    expand: Callable[[Any], list[tuple[str, dict]]] | None = None  # made of other stages


# what stages take from the run: calibrating stages read the run's text as calibration,
# training stages as training data; both take its seed and device
CALIBRATING = (("calib", "data"), ("seed", "seed"), ("device", "device"))
TRAINING = (("data", "data"), ("seed", "seed"), ("device", "device"))

KINDS: dict[str, StageKind] = {
    "evaluate": StageKind(evaluate.EvaluateStage, evaluate.execute),
    "prune": StageKind(
        PruneConfig,
        prune.execute,
        changes_model=True,
        run_defaults=CALIBRATING,
    ),
    "finetune": StageKind(
        FinetuneConfig,
        finetune.execute,
        changes_model=True,
        run_defaults=TRAINING,
    ),
    "structured": StageKind(
        StructuredConfig,
        structured.execute,
        changes_model=True,
        run_defaults=CALIBRATING,
    ),
    "gradual": StageKind(
        GradualConfig,
        gradual.execute,
        changes_model=True,
        run_defaults=TRAINING,
    ),
    "learned": StageKind(
        LearnedConfig,
        learned.execute,
        changes_model=True,
        run_defaults=TRAINING,
    ),
    "iterative": StageKind(iterative.IterativeStage, None, expand=iterative.expand),
    "save": StageKind(save.SaveStage, save.execute, check=save.check, main_only=True),
    "export": StageKind(export.ExportStage, export.execute, check=save.check, main_only=True),
}


@dataclass
class Step:
    """One executable unit of a plan: a stage kind and its validated config."""

    kind: str
    config: BaseModel

    @property
    def spec(self) -> StageKind:
        return KINDS[self.kind]

    @property
    def label(self) -> str:
        label = getattr(self.config, "label", None)
        return label if isinstance(label, str) else self.kind


@dataclass(frozen=True)
class RunSettings:
    """What stages take from the run when their own config leaves it unset."""

    data: str = "pydoc"
    seed: int = 0
    device: str = "cpu"


def make_steps(
    kind: str, values: dict | None, settings: RunSettings | None = None, where: str = ""
) -> list[Step]:
    """Validate one stage of a plan (an iterative one becomes several steps)."""
    if kind not in KINDS:
        raise LLMPruneError(f"{where}: unknown stage {kind!r}; use {', '.join(KINDS)}")
    spec = KINDS[kind]
    if values is not None and not isinstance(values, dict):
        raise LLMPruneError(f"{where}: {kind} needs a mapping of settings, got {values!r}")
    values = dict(values or {})
    settings = settings or RunSettings()
    for field, setting in spec.run_defaults:
        values.setdefault(field, getattr(settings, setting))
    prefix = f"{where}: {kind}" if where else kind
    config = validated(spec.config, values, prefix)
    if spec.expand is None:
        return [Step(kind, config)]
    return [
        step
        for inner_kind, inner in spec.expand(config)
        for step in make_steps(inner_kind, inner, settings, where)
    ]


__all__ = [
    "KINDS",
    "EvalSettings",
    "ModelState",
    "RunSettings",
    "StageContext",
    "StageKind",
    "Step",
    "make_steps",
]
