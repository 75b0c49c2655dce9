"""The flows the CLI and recipes run: load → prune → save, then measure.

Pruning streams the checkpoint block by block when the model is a local (or cached
hub) safetensors directory, so peak memory is about one block; GGUF sources, which
must be de-quantized whole, are pruned in memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmprune.evaluate.perplexity import evaluate_text
from llmprune.evaluate.resources import peak_device_mb, peak_rss_mb
from llmprune.export.checkpoint import RECORD_FILE, check_output_path, save_pruned
from llmprune.io import write_directory, write_json
from llmprune.models import load_model
from llmprune.models.loading import parse_dtype, resolve_source
from llmprune.models.streaming import NotStreamable, StreamedModel
from llmprune.pruning import PruneConfig, make_config, prune
from llmprune.pruning.masks import MASKS_FILE


def streamable_dir(model_source: str | None) -> Path | None:
    """The local safetensors directory behind a source, or None (GGUF, hub unreachable)."""
    location, gguf_file = resolve_source(model_source)
    if gguf_file:
        return None
    path = Path(location)
    if path.is_dir():
        return path if any(path.glob("*.safetensors")) else None
    try:
        from huggingface_hub import snapshot_download

        local = Path(
            snapshot_download(
                location, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]
            )
        )
    except Exception:  # unreachable hub, unknown id: the in-memory loader will explain
        return None
    return local if any(local.glob("*.safetensors")) else None


@dataclass
class PruneJob:
    """What both pruning paths need besides the model source and output."""

    config: PruneConfig
    dtype: str = "float32"
    overwrite: bool = False
    progress: bool = True
    calibration: torch.Tensor | None = None


def note_pruning(record: dict, result, started: float, device: str) -> None:
    """Time and memory right after pruning, before any evaluation loads whole models."""
    record["prune_seconds"] = time.perf_counter() - started
    record["peak_rss_mb"] = peak_rss_mb()
    record["peak_device_mb"] = peak_device_mb(device)
    record.update(result.to_dict())


def prune_streamed(source_dir: Path, out: Path, job: PruneJob, record: dict) -> None:
    """Prune block by block from `source_dir` straight into `out`."""
    from transformers import AutoTokenizer

    from llmprune.models.streaming import ShardWriter, StreamResidency

    streamed = StreamedModel(source_dir, parse_dtype(job.dtype))
    tokenizer = AutoTokenizer.from_pretrained(source_dir)

    def fill(tmp: Path) -> None:
        writer = ShardWriter(tmp, shards=streamed.layout.num_blocks + 1)
        residency = StreamResidency(streamed, writer, torch.device(job.config.device))
        started = time.perf_counter()
        result = prune(
            streamed.model,
            tokenizer,
            job.config,
            job.calibration,
            progress=job.progress,
            residency=residency,
        )
        writer.add(streamed.outside_tensors())
        writer.finish()
        note_pruning(record, result, started, job.config.device)
        streamed.model.config.save_pretrained(tmp)
        if streamed.model.generation_config is not None:
            streamed.model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        result.masks.save(tmp / MASKS_FILE)
        write_json(tmp / RECORD_FILE, record)

    write_directory(out, fill, overwrite=job.overwrite)


def prune_in_memory(model_source: str, out: Path, job: PruneJob, record: dict) -> None:
    loaded = load_model(model_source, dtype=job.dtype, device="cpu")
    started = time.perf_counter()
    result = prune(
        loaded.model, loaded.tokenizer, job.config, job.calibration, progress=job.progress
    )
    note_pruning(record, result, started, job.config.device)
    loaded.model.to("cpu")
    save_pruned(
        loaded.model, loaded.tokenizer, out, result.masks, record, model_source, job.overwrite
    )


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
    stream: bool = True,
    calibration: torch.Tensor | None = None,
) -> dict:
    """Prune a model one-shot, save it, then measure dense and pruned perplexity.

    `calibration` ([n, seqlen] token ids) replaces sampling from `config.calib`.
    Cheap checks (config, output path) come before any loading, so bad input fails fast
    and nothing is written. Memory figures are taken right after pruning, before the
    evaluations load whole models.
    """
    config = make_config(**config_values)
    location, gguf_file = resolve_source(model_source)  # the real files, e.g. the cache copy
    out = check_output_path(out, Path(location) / gguf_file if gguf_file else location, overwrite)
    record: dict = {"model": str(model_source), "label": config.label}
    source_dir = streamable_dir(model_source) if stream else None
    job = PruneJob(config, dtype, overwrite, progress, calibration)
    if source_dir is not None:
        try:
            prune_streamed(source_dir, out, job, record)
        except NotStreamable:
            source_dir = None
    record["streamed"] = source_dir is not None
    if source_dir is None:
        prune_in_memory(model_source, out, job, record)
    record["out"] = str(out)
    if evaluate:
        for key, source in (("dense_perplexity", model_source), ("perplexity", str(out))):
            loaded = load_model(source, dtype=dtype, device=config.device)
            result = evaluate_text(
                loaded, data, "eval", config.seqlen, eval_windows, progress=progress
            )
            record[key] = result.perplexity
            del loaded
        record["eval"] = {
            "data": data,
            "seqlen": config.seqlen,
            "windows": result.windows,
            "tokens": result.tokens,
        }
        write_json(out / RECORD_FILE, record)
    return record
