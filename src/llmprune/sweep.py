"""Quality against sparsity, per method: the papers' figures for the user's own model.

A sweep is a plan per point — [prune, evaluate] and, with recovery, [finetune, evaluate]
— run by the same executor as `llmprune prune` and recipes, each point from a copy of
the same dense model. What does not depend on the point is made once and shared: the
calibration, evaluation and training windows, and OWL's dense pre-pass. (Wanda and
SparseGPT statistics are collected per point: sequential calibration feeds each block
the outputs of the blocks pruned before it, which differ per point.) Each point is
saved as its own JSON file: re-running skips finished points, and a directory made for
another model or other settings is refused.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llmprune.errors import LLMPruneError
from llmprune.finetune.config import FinetuneConfig, make_finetune_config
from llmprune.io import write_json
from llmprune.models import LoadedModel, load_model
from llmprune.models.loading import resolve_source
from llmprune.provenance import environment
from llmprune.pruning.amounts import parse_amount, parse_pattern
from llmprune.pruning.config import amount_options, checked, make_config
from llmprune.pruning.methods import METHODS
from llmprune.run import execute_plan
from llmprune.stages import EvalSettings, ModelState, StageContext, Step, make_steps
from llmprune.stages.state import SharedInputs

SWEEP_FILE = "sweep.json"


def parse_range(text: str) -> list[float]:
    """ "0.1:0.9:0.1" (inclusive) or "0.5,0.7" into sparsities, each in [0, 1)."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            values = [round(start + k * step, 6) for k in range(count)]
        else:
            values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise LLMPruneError(
            f"sparsity range must look like 0.1:0.9:0.1 or 0.5,0.7: {text!r}"
        ) from None
    if not values:
        raise LLMPruneError(f"no sparsity in {text!r}")
    return [parse_amount(v).fraction for v in values]


class SweepConfig(BaseModel):
    """Which points to prune and how every point is calibrated, measured and recovered."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(default="smollm2", description="Hub id, directory, .gguf or smollm2.")
    methods: list[str] = Field(
        default_factory=lambda: list(METHODS), description="Methods to sweep."
    )
    sparsity: str = Field(default="0.1:0.8:0.1", description="START:STOP:STEP or a,b,c")
    pattern: list[str] = Field(default=["2:4", "4:8"], description="N:M patterns.")
    owl: bool = Field(default=False, description="Also OWL allocation for Wanda/SparseGPT.")
    calib: str = Field(default="pydoc", description="Text source (calibration + eval).")
    nsamples: int = Field(default=64, ge=1, description="Calibration windows.")
    seqlen: int = Field(default=256, ge=2, description="Tokens per window.")
    eval_windows: int | None = Field(default=None, ge=1, description="Max evaluation windows.")
    zero_shot: list[str] = Field(default_factory=list, description="lm-eval tasks.")
    zero_shot_limit: int | None = Field(default=None, ge=1, description="Examples per task.")
    recover: list[str] = Field(
        default_factory=list, description="Also fine-tune each point: norms,biases,lora or all."
    )
    recover_steps: int = Field(default=30, ge=1, description="Recovery steps per point.")
    recover_lr: float = Field(default=5e-4, gt=0, description="Recovery learning rate.")
    stream: bool = Field(
        default=False,
        description="Prune and evaluate each point block by block from disk (models larger "
        "than memory; each point re-reads the checkpoint).",
    )
    dtype: str = Field(default="float32", description="float32 | bfloat16 | float16")
    device: str = Field(default="cpu", description="cpu | cuda | cuda:N")

    @field_validator("methods")
    @classmethod
    def known_methods(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose one of {', '.join(METHODS)}")
        return value

    @field_validator("sparsity")
    @classmethod
    def valid_range(cls, value: str) -> str:
        checked(parse_range, value)
        return value

    @field_validator("pattern")
    @classmethod
    def valid_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            checked(parse_pattern, pattern)
        return value

    @property
    def recovery(self) -> FinetuneConfig | None:
        if not self.recover:
            return None
        return make_finetune_config(
            trainable=self.recover,
            steps=self.recover_steps,
            learning_rate=self.recover_lr,
            data=self.calib,
            seqlen=self.seqlen,
            device=self.device,
        )

    def settings(self) -> dict:
        """Everything besides a point's method and amount that changes its numbers."""
        recovery = self.recovery
        return {
            "model": self.model,
            "calib": self.calib,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "eval_windows": self.eval_windows,
            "zero_shot_tasks": self.zero_shot,
            "zero_shot_limit": self.zero_shot_limit,
            "recovery": recovery.model_dump() if recovery else None,
        }

    def points(self) -> list[dict]:
        """Every (method, amount, allocation) point, dense first; bad ones refused now."""
        points = [{"method": "dense", "amount": "0", "sparsity": 0.0}]
        sparsities = parse_range(self.sparsity)
        for method in self.methods:
            points += [{"method": method, "amount": f"{s:g}", "sparsity": s} for s in sparsities]
            points += [{"method": method, "amount": p, "pattern": p} for p in self.pattern]
            if self.owl and METHODS[method].needs_calibration:  # OWL beside Wanda/SparseGPT
                points += [
                    {"method": method, "amount": f"{s:g}", "sparsity": s, "allocation": "owl"}
                    for s in sparsities
                ]
        for point in points[1:]:
            self.prune_config(point)
        return points

    def prune_config(self, point: dict):
        return make_config(
            method=point["method"],
            calib=self.calib,
            nsamples=self.nsamples,
            seqlen=self.seqlen,
            device=self.device,
            allocation=point.get("allocation", "uniform"),
            **amount_options(point.get("pattern") or point["sparsity"]),
        )

    def plan(self, point: dict) -> list[Step]:
        steps = [] if point["method"] == "dense" else [Step("prune", self.prune_config(point))]
        steps += make_steps("evaluate", {})
        recovery = self.recovery
        if recovery is not None and steps[0].kind == "prune":
            steps += [Step("finetune", recovery)] + make_steps("evaluate", {})
        return steps

    def context(self, inputs: SharedInputs, echo) -> StageContext:
        settings = EvalSettings(
            seqlen=self.seqlen,
            max_windows=self.eval_windows,
            zero_shot=self.zero_shot,
            zero_shot_limit=self.zero_shot_limit,
            after_each=False,
        )
        return StageContext(
            data=self.calib,
            device=self.device,
            eval=settings,
            stream=self.stream,
            inputs=inputs,
            echo=echo,
        )


def point_name(method: str, amount: str, allocation: str = "uniform") -> str:
    owl = "+owl" if allocation == "owl" else ""
    return f"{method}{owl}@{amount}".replace(":", "of")


def check_results_dir(out: Path, config: SweepConfig) -> None:
    """Refuse to mix points measured on another model or with other calibration/evaluation:
    a directory keeps its settings in sweep.json so that points stay comparable."""
    settings = config.settings()
    marker = out / SWEEP_FILE
    if marker.is_file():
        recorded = json.loads(marker.read_text())
        if recorded.get("model") != settings["model"]:
            raise LLMPruneError(
                f"{out} holds a sweep of {recorded.get('model')}, not of {settings['model']}"
            )
        for key, value in settings.items():
            if recorded.get(key) != value:
                was, now = shown(recorded.get(key)), shown(value)
                raise LLMPruneError(
                    f"{out} was swept with {key}={was}, not {now}; use another --out"
                )
    elif out.exists() and any(out.iterdir()):
        raise LLMPruneError(f"{out} is not empty and holds no sweep")
    latest = {"config": config.model_dump(), "environment": environment()}
    write_json(marker, {**settings, **latest})  # settings, and the latest invocation


def shown(setting) -> str:
    """A setting for a one-line message: a recovery config is summarised, not dumped."""
    if isinstance(setting, dict):
        return f"{'+'.join(setting.get('trainable', []))} for {setting.get('steps')} steps"
    return repr(setting)


def run_sweep(config: SweepConfig, out: str | Path, echo=print) -> list[dict]:
    """Prune and evaluate every point not already in `out`; return all points' results.

    With recovery, every pruned point is also fine-tuned (masks kept) and measured again
    under `recovered`, as in PERP's before/after figures.
    """
    out = Path(out)
    points = config.points()
    resolve_source(config.model)  # a missing model is refused before anything is written
    check_results_dir(out, config)
    dense = None if config.stream else load_model(config.model, config.dtype)
    inputs = SharedInputs()
    for point in points:
        name = point_name(point["method"], point["amount"], point.get("allocation", "uniform"))
        path = out / "points" / f"{name}.json"
        if path.is_file():
            continue
        echo(f"{point['method']} {point['amount']} {point.get('allocation', '')}".rstrip())
        state = ModelState(source=config.model, dtype=config.dtype)
        if dense is not None:  # each point prunes its own copy of the dense model
            state.loaded = LoadedModel(copy.deepcopy(dense.model), dense.tokenizer, dense.source)
        context = config.context(inputs, silent)
        records = execute_plan(config.plan(point), state, context, scratch_near=out)
        write_json(path, point_record(point, records))
    return load_points(out)


def silent(*_args, **_kwargs) -> None:
    """Sweep points print one line each, not one per step."""


def point_record(point: dict, records: list[dict]) -> dict:
    """One point's results in the shape reports read (measured before/after recovery)."""
    measured = [r for r in records if r["kind"] == "evaluate"]
    record = {**point, "allocation": point.get("allocation", "uniform"), **numbers(measured[0])}
    pruned = next((r for r in records if r["kind"] == "prune"), None)
    if pruned is not None:
        record.update(
            sparsity_measured=pruned["sparsity"],
            layer_sparsity=pruned["prune"]["layer_sparsity"],
            block_sparsity=pruned["prune"]["block_sparsity"],
        )
    tuned = next((r for r in records if r["kind"] == "finetune"), None)
    if tuned is not None:
        record["recovered"] = {
            **numbers(measured[1]),
            "sparsity_measured": measured[1]["sparsity"],
            "finetune": tuned["finetune"],
        }
    record["seconds"] = sum(r["seconds"] for r in records)
    return record


def numbers(record: dict) -> dict:
    keys = ("perplexity", "eval_tokens", "zero_shot")
    return {k: record[k] for k in keys if k in record}


def load_points(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "points").glob("*.json"))]
