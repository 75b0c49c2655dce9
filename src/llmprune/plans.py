"""The plans behind single commands, built from the stage registry.

`llmprune prune MODEL --out DIR` is the plan [prune, save, evaluate (dense), evaluate]:
the checkpoint is written as soon as the prune is done (an evaluation failing later
loses nothing), and its `llmprune.json` is rewritten with the evaluations' numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmprune.pruning import PruneConfig
from llmprune.run import execute_plan
from llmprune.stages import EvalSettings, ModelState, StageContext, Step, make_steps
from llmprune.stages.state import SharedInputs
from llmprune.structured import StructuredConfig


def prune_plan(
    config: PruneConfig | StructuredConfig, out: str | Path, evaluate: bool, overwrite: bool
) -> list[Step]:
    steps = [Step("structured" if isinstance(config, StructuredConfig) else "prune", config)]
    steps += make_steps("save", {"out": str(out), "overwrite": overwrite}, None)
    if evaluate:
        steps += make_steps("evaluate", {"reference": True}, None)
        steps += make_steps("evaluate", {}, None)
    return steps


def prune_and_save(
    model_source: str,
    out: str | Path,
    config: PruneConfig | StructuredConfig,
    dtype: str = "float32",
    evaluate: bool = True,
    data: str = "pydoc",
    eval_windows: int | None = None,
    overwrite: bool = False,
    stream: bool = True,
    progress: bool = True,
    echo=print,
    calibration: torch.Tensor | None = None,
) -> list[dict]:
    """Prune `model_source` one-shot (unstructured, N:M, or structured) into `out`, then
    measure dense and pruned perplexity (on windows as long as the calibration's).
    Returns the step records.

    `calibration` ([n, seqlen] token ids) replaces sampling from `config.calib`."""
    ctx = StageContext(
        data=data,
        device=config.device,
        eval=EvalSettings(seqlen=config.seqlen, max_windows=eval_windows, after_each=False),
        stream=stream,
        progress=progress,
        echo=echo,
        inputs=SharedInputs(calibration),
    )
    state = ModelState(source=str(model_source), dtype=dtype)
    return execute_plan(prune_plan(config, out, evaluate, overwrite), state, ctx, Path(out))


def summary(records: list[dict]) -> dict:
    """The numbers a one-shot prune reports, from its step records."""
    by_label = {r["label"]: r for r in records}
    pruned = next(r for r in records if r["kind"] in ("prune", "structured"))
    dense = by_label.get("evaluate (dense)", {})
    after = by_label.get("evaluate", {})
    return {
        "label": pruned["label"],
        "sparsity": pruned["sparsity"],
        "prune_seconds": pruned["prune_seconds"],
        "peak_rss_mb": pruned["peak_rss_mb"],
        "streamed": pruned["streamed"],
        "structured": pruned.get("structured"),
        "dense_perplexity": dense.get("perplexity"),
        "perplexity": after.get("perplexity"),
        "out": next((r["out"] for r in records if r["kind"] == "save"), None),
    }
