"""A whole run in one YAML file: model, data, and an ordered list of stages.

    model: smollm2
    data: pydoc
    eval: {seqlen: 512, max_windows: 20}
    stages:
      - evaluate: {}
      - prune: {method: sparsegpt, sparsity: 0.5}
      - finetune: {trainable: [biases, norms], steps: 50}
      - iterative:
          prune: {method: magnitude}
          schedule: [0.6, 0.7, 0.8]
          finetune: {steps: 20}

`plan()` flattens it into single steps (an iterative stage becomes prune, finetune,
prune, ... ), which is the unit that `run.py` executes, saves and resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmprune.errors import LLMPruneError
from llmprune.finetune.config import FinetuneConfig
from llmprune.pruning.config import PruneConfig, one_line

STAGE_KINDS = ("evaluate", "prune", "finetune", "iterative")


class EvalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seqlen: int = Field(default=512, ge=2)
    max_windows: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=4, ge=1)


class IterativeStage(BaseModel):
    """Prune → fine-tune → prune along an increasing schedule; earlier zeros stay zero."""

    model_config = ConfigDict(extra="forbid")
    prune: dict[str, Any] = Field(default_factory=dict)
    schedule: list[float | str]
    finetune: dict[str, Any] | None = None

    @field_validator("schedule")
    @classmethod
    def increasing(cls, value: list[float | str]) -> list[float | str]:
        if not value:
            raise ValueError("the schedule is empty")
        numbers = [v for v in value if not isinstance(v, str)]
        for amount in numbers:
            if not 0.0 <= amount < 1.0:
                raise ValueError(f"schedule sparsity must be in [0, 1), got {amount}")
        if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise ValueError(f"the schedule must increase, got {numbers}")
        return value


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2"
    dtype: str = "float32"
    device: str = "cpu"
    data: str = "pydoc"
    seed: int = 0
    eval: EvalSettings = Field(default_factory=EvalSettings)
    keep_models: str = Field(default="all", pattern="^(all|last)$")
    stages: list[dict[str, Any]]

    @field_validator("stages")
    @classmethod
    def known_stages(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not stages:
            raise ValueError("a recipe needs at least one stage")
        for index, stage in enumerate(stages):
            if not isinstance(stage, dict) or len(stage) != 1:
                raise ValueError(f"stage {index + 1} must be one of {', '.join(STAGE_KINDS)}")
            kind = next(iter(stage))
            if kind not in STAGE_KINDS:
                raise ValueError(
                    f"stage {index + 1}: unknown stage {kind!r}; use {', '.join(STAGE_KINDS)}"
                )
        return stages

    def fingerprint(self) -> str:
        text = json.dumps(self.model_dump(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Step(BaseModel):
    """One executable unit of a plan."""

    kind: str
    prune: PruneConfig | None = None
    finetune: FinetuneConfig | None = None
    label: str


def stage_config(cls, recipe: Recipe, values: dict[str, Any], where: str, kind: str):
    """A stage's config with the recipe-wide data, seed and device as defaults."""
    defaults = {"seed": recipe.seed, "device": recipe.device}
    defaults["calib" if cls is PruneConfig else "data"] = recipe.data
    try:
        return cls(**{**defaults, **values})
    except ValidationError as exc:
        raise LLMPruneError(f"{where}: {kind}: {one_line(exc)}") from None


def prune_step(recipe: Recipe, values: dict[str, Any], where: str) -> PruneConfig:
    return stage_config(PruneConfig, recipe, values, where, "prune")


def finetune_step(recipe: Recipe, values: dict[str, Any], where: str) -> FinetuneConfig:
    return stage_config(FinetuneConfig, recipe, values, where, "finetune")


def iterative_steps(recipe: Recipe, values: dict[str, Any], where: str) -> list[Step]:
    try:
        stage = IterativeStage(**(values or {}))
    except ValidationError as exc:
        raise LLMPruneError(f"{where}: iterative: {one_line(exc)}") from None
    steps = []
    for amount in stage.schedule:
        target = {"pattern": amount} if isinstance(amount, str) else {"sparsity": amount}
        prune_values = {k: v for k, v in stage.prune.items() if k not in ("sparsity", "pattern")}
        config = prune_step(recipe, {**prune_values, **target}, where)
        steps.append(Step(kind="prune", prune=config, label=config.label))
        if stage.finetune is not None:
            tune = finetune_step(recipe, stage.finetune, where)
            steps.append(Step(kind="finetune", finetune=tune, label=f"finetune@{config.label}"))
    return steps


def plan(recipe: Recipe) -> list[Step]:
    """Validate every stage and flatten the recipe into executable steps."""
    steps: list[Step] = []
    for index, stage in enumerate(recipe.stages):
        kind, values = next(iter(stage.items()))
        values = values or {}
        where = f"stage {index + 1}"
        if kind == "evaluate":
            steps.append(Step(kind="evaluate", label="evaluate"))
        elif kind == "prune":
            config = prune_step(recipe, values, where)
            steps.append(Step(kind="prune", prune=config, label=config.label))
        elif kind == "finetune":
            tune = finetune_step(recipe, values, where)
            steps.append(Step(kind="finetune", finetune=tune, label="finetune"))
        else:
            steps.extend(iterative_steps(recipe, values, where))
    return steps


def load_recipe(path: str | Path | None) -> Recipe:
    """Read and validate a YAML recipe (None: the packaged demo recipe)."""
    if path is None:
        from importlib.resources import files

        text = (files("llmprune") / "recipes" / "demo.yaml").read_text()
        label = "the demo recipe"
    else:
        path = Path(path)
        if not path.is_file():
            raise LLMPruneError(f"no such recipe: {path}")
        text, label = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LLMPruneError(f"{label} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LLMPruneError(f"{label} must be a mapping with a 'stages' list")
    try:
        recipe = Recipe(**data)
    except ValidationError as exc:
        raise LLMPruneError(f"{label}: {one_line(exc)}") from None
    plan(recipe)  # every stage is checked before anything runs
    return recipe
