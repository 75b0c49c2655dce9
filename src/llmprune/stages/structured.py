"""The structured stage: remove heads, FFN channels and blocks of the model in memory.

The smaller model is an ordinary transformers model: later stages (fine-tune, evaluate,
save, another prune) treat it like any other. Each pass is added to the model's
manifest (`pruning_manifest.json` beside the saved weights).
"""

from __future__ import annotations

import time

from llmprune.evaluate.resources import peak_device_mb, peak_rss_mb
from llmprune.models.layout import find_layout
from llmprune.models.units import check_unwrapped
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState
from llmprune.structured import StructuredConfig, structured_prune
from llmprune.structured.prune import plan_widths

MANIFEST_FORMAT = "llmprune-structured/1"


def add_pass(state: ModelState, record: dict) -> None:
    """Append one structured pass to the manifest that travels with the model."""
    manifest = state.manifest or {"format": MANIFEST_FORMAT, "base_model": state.source}
    state.manifest = {**manifest, "passes": [*manifest.get("passes", []), record]}


def execute(config: StructuredConfig, state: ModelState, ctx: StageContext) -> dict:
    loaded = state.load()
    check_unwrapped(loaded.model)
    plan_widths(loaded.model, find_layout(loaded.model), config)  # before any calibration
    windows = ctx.inputs.calibration(loaded.tokenizer, config, loaded.context_length)
    started = time.perf_counter()
    result = structured_prune(
        loaded.model,
        loaded.tokenizer,
        config,
        windows,
        masks=state.masks.copy(),
        progress=ctx.progress,
    )
    add_pass(state, result.manifest)
    state.changed(result.masks)
    return {
        "structured": result.to_dict(),
        "parameters": result.manifest["parameters"]["after"]["model"],
        "prune_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_mb": peak_device_mb(config.device),
        "streamed": False,
    }
