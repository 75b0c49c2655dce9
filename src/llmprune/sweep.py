"""Quality against sparsity, per method: the papers' figures for the user's own model.

Each point (method, target) is pruned from the same dense weights with the same
calibration windows (tokenized once; magnitude needs none). What depends only on the
dense model is computed once: OWL's outlier ratios. Wanda and SparseGPT statistics are
collected again per point, since sequential calibration feeds each block the outputs of
the blocks pruned before it, which differ per point. Each point is evaluated, optionally
recovered by fine-tuning and evaluated again, and saved as its own JSON file: re-running
skips finished points, and a directory made for another model or settings is refused.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from llmprune.errors import LLMPruneError
from llmprune.evaluate.perplexity import evaluate_text
from llmprune.evaluate.sparsity import sparsity_summary
from llmprune.finetune.config import FinetuneConfig
from llmprune.finetune.trainer import finetune, training_windows
from llmprune.io import write_json
from llmprune.models import LoadedModel, load_model
from llmprune.pruning import make_config, prune
from llmprune.pruning.oneshot import calibration_data

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
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad or not values:
        raise LLMPruneError(f"sweep sparsities must be in [0, 1), got {bad or text!r}")
    return values


def point_name(method: str, target: str, allocation: str = "uniform") -> str:
    owl = "+owl" if allocation == "owl" else ""
    return f"{method}{owl}@{target}".replace(":", "of")


def plan_points(
    methods: list[str], sparsities: list[float], patterns: list[str], owl: bool = False
) -> list[dict]:
    points = []
    for method in methods:
        for sparsity in sparsities:
            points.append({"method": method, "target": f"{sparsity:g}", "sparsity": sparsity})
        for pattern in patterns:
            points.append({"method": method, "target": pattern, "pattern": pattern})
        if owl and method != "magnitude":
            for sparsity in sparsities:
                points.append(
                    {
                        "method": method,
                        "target": f"{sparsity:g}",
                        "sparsity": sparsity,
                        "allocation": "owl",
                    }
                )
    for point in points:
        make_config(method=point["method"], **target_options(point))  # refuse bad points early
    return points


def target_options(point: dict) -> dict:
    """The PruneConfig fields a point sets: its sparsity or pattern, and its allocation."""
    return {k: point[k] for k in ("sparsity", "pattern", "allocation") if k in point}


def check_results_dir(out: Path, settings: dict) -> None:
    """Refuse to mix points measured on another model or with other calibration/evaluation.

    `settings` holds the model and everything that changes a point's numbers besides its
    method and target; a directory keeps them in sweep.json so that points stay comparable.
    """
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
        return
    if out.exists() and any(out.iterdir()):
        raise LLMPruneError(f"{out} is not empty and holds no sweep")
    out.mkdir(parents=True, exist_ok=True)
    write_json(marker, settings)


def shown(setting) -> str:
    """A setting for a one-line message: a recovery config is summarised, not dumped."""
    if isinstance(setting, dict):
        return f"{'+'.join(setting.get('trainable', []))} for {setting.get('steps')} steps"
    return repr(setting)


def run_sweep(
    model_source: str,
    out: str | Path,
    methods: list[str],
    sparsities: list[float],
    patterns: list[str],
    owl: bool = False,
    calib: str = "pydoc",
    nsamples: int = 64,
    seqlen: int = 256,
    eval_windows: int | None = None,
    zero_shot_tasks: list[str] | None = None,
    zero_shot_limit: int | None = None,
    recovery: FinetuneConfig | None = None,
    echo=print,
) -> list[dict]:
    """Prune and evaluate every point not already in `out`; return all points' results.

    With `recovery`, every pruned point is also fine-tuned that way (masks kept) and
    measured again under `recovered`, as in PERP's before/after figures.
    """
    out = Path(out)
    points = plan_points(methods, sparsities, patterns, owl)
    settings = {
        "model": str(model_source),
        "calib": calib,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "eval_windows": eval_windows,
        "zero_shot_tasks": zero_shot_tasks or [],
        "zero_shot_limit": zero_shot_limit,
        "recovery": recovery.model_dump() if recovery else None,
    }
    check_results_dir(out, settings)
    shared = SweepInputs(load_model(model_source), settings, recovery)
    todo = [{"method": "dense", "target": "0", "sparsity": 0.0}] + points
    for point in todo:
        name = point_name(point["method"], point["target"], point.get("allocation", "uniform"))
        path = out / "points" / f"{name}.json"
        if path.is_file():
            continue
        echo(f"{point['method']} {point['target']} {point.get('allocation', '')}".rstrip())
        start = time.perf_counter()
        record = sweep_point(point, shared)
        record["seconds"] = time.perf_counter() - start
        write_json(path, record)
    return load_points(out)


@dataclass
class SweepInputs:
    """What every point starts from: the dense model, and windows made once when needed."""

    dense: LoadedModel
    settings: dict
    recovery: FinetuneConfig | None
    owl_ratios: list[float] | None = None  # OWL's dense pre-pass, shared by all OWL points

    @cached_property
    def calibration(self) -> torch.Tensor:
        s = self.settings
        sampling = make_config(
            sparsity=0.5, calib=s["calib"], nsamples=s["nsamples"], seqlen=s["seqlen"]
        )
        return calibration_data(self.dense.tokenizer, sampling, self.dense.context_length)

    @cached_property
    def training(self) -> torch.Tensor:
        return training_windows(self.dense.tokenizer, self.recovery)


def sweep_point(point: dict, shared: SweepInputs) -> dict:
    """Prune a copy of the dense model as `point` says, measure it, and recover it if asked."""
    settings = shared.settings
    loaded = copy.deepcopy(shared.dense)
    record = {**point, "allocation": point.get("allocation", "uniform")}
    if point["method"] == "dense":
        return {**record, **measure(loaded, settings)}
    config = make_config(
        method=point["method"],
        calib=settings["calib"],
        nsamples=settings["nsamples"],
        seqlen=settings["seqlen"],
        **target_options(point),
    )
    windows = shared.calibration if config.needs_calibration else None
    result = prune(
        loaded.model,
        loaded.tokenizer,
        config,
        windows,
        progress=False,
        owl_ratios=shared.owl_ratios,
    )
    shared.owl_ratios = shared.owl_ratios or result.owl_ratios or None
    record.update(
        sparsity_measured=result.masks.sparsity(),
        layer_sparsity=result.masks.layer_sparsity(),
        block_sparsity=result.block_sparsity,
        **measure(loaded, settings),
    )
    if shared.recovery is not None:
        loaded.model, summary = finetune(
            loaded.model, loaded.tokenizer, shared.recovery, result.masks, shared.training
        )
        record["recovered"] = {
            **measure(loaded, settings),
            "sparsity_measured": sparsity_summary(loaded.model)["prunable_sparsity"],
            "finetune": summary,
        }
    return record


def measure(loaded, settings: dict) -> dict:
    """Perplexity on the eval split, and zero-shot accuracy when tasks were asked for."""
    ppl = evaluate_text(
        loaded,
        settings["calib"],
        "eval",
        settings["seqlen"],
        settings["eval_windows"],
        progress=False,
    )
    numbers = {"perplexity": ppl.perplexity, "eval_tokens": ppl.tokens}
    if settings["zero_shot_tasks"]:
        from llmprune.evaluate.zeroshot import zero_shot

        numbers["zero_shot"] = zero_shot(
            loaded.model,
            loaded.tokenizer,
            settings["zero_shot_tasks"],
            settings["zero_shot_limit"],
            data=settings["calib"],
        )
    return numbers


def load_points(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "points").glob("*.json"))]
