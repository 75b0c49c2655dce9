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

`plan()` validates every stage against the stage registry and flattens it into steps
(an iterative stage becomes prune, finetune, prune, ...), the unit that `run.py`
executes, saves and resumes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.errors import LLMPruneError, validated
from llmprune.stages import KINDS, EvalSettings, RunSettings, StageContext, Step, make_steps


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "smollm2"
    dtype: str = "float32"
    device: str = "cpu"
    data: str = "pydoc"
    seed: int = 0
    stream: bool = True
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
                raise ValueError(f"stage {index + 1} must be one of {', '.join(KINDS)}")
            kind = next(iter(stage))
            if kind not in KINDS:
                raise ValueError(
                    f"stage {index + 1}: unknown stage {kind!r}; use {', '.join(KINDS)}"
                )
        return stages

    def fingerprint(self) -> str:
        text = json.dumps(self.model_dump(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def settings(self) -> RunSettings:
        return RunSettings(data=self.data, seed=self.seed, device=self.device)

    def context(self, **services) -> StageContext:
        return StageContext(
            data=self.data,
            device=self.device,
            eval=self.eval,
            stream=self.stream,
            **services,
        )


def plan(recipe: Recipe) -> list[Step]:
    """Validate every stage and flatten the recipe into executable steps."""
    steps: list[Step] = []
    for index, stage in enumerate(recipe.stages):
        kind, values = next(iter(stage.items()))
        steps += make_steps(kind, values, recipe.settings, f"stage {index + 1}")
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
    recipe = validated(Recipe, data, label)
    plan(recipe)  # every stage is checked before anything runs
    return recipe
