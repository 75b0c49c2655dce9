"""The flows the CLI and recipes run: load → (evaluate) → prune → (evaluate) → save."""

from __future__ import annotations

import time
from pathlib import Path

from llmprune.evaluate.perplexity import evaluate_text
from llmprune.evaluate.resources import peak_device_mb, peak_rss_mb
from llmprune.export.checkpoint import check_output_path, save_pruned
from llmprune.models import load_model
from llmprune.pruning import make_config, prune


def prune_and_save(
    model_source: str,
    out: str | Path,
    config_values: dict,
    dtype: str = "float32",
    evaluate: bool = True,
    data: str = "pydoc",
    eval_windows: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prune a model one-shot, measure dense and pruned perplexity, and save it.

    Everything that can be checked cheaply (config, output path) is checked before the
    model is loaded, so bad input fails fast and nothing is written.
    """
    config = make_config(**config_values)
    check_output_path(out, model_source, overwrite)
    loaded = load_model(model_source, dtype=dtype, device="cpu")
    seqlen = config.seqlen
    record: dict = {"model": loaded.source, "label": config.label}
    if evaluate:
        loaded.model.to(config.device)
        dense = evaluate_text(loaded, data, "eval", seqlen, eval_windows, progress=progress)
        record["dense_perplexity"] = dense.perplexity
        loaded.model.to("cpu")  # pruning brings one block at a time to the device
    start = time.perf_counter()
    result = prune(loaded.model, loaded.tokenizer, config, progress=progress)
    record["prune_seconds"] = time.perf_counter() - start
    record["peak_rss_mb"] = peak_rss_mb()
    record["peak_device_mb"] = peak_device_mb(config.device)
    if evaluate:
        loaded.model.to(config.device)
        pruned = evaluate_text(loaded, data, "eval", seqlen, eval_windows, progress=progress)
        record.update(perplexity=pruned.perplexity, eval=pruned.to_dict(), eval_data=data)
    loaded.model.to("cpu")
    record.update(result.to_dict())
    record["out"] = str(
        save_pruned(
            loaded.model, loaded.tokenizer, out, result.masks, record, model_source, overwrite
        )
    )
    return record
