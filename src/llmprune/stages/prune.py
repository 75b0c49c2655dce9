"""The prune stage: one pass of a method over the model, in memory or streamed from disk.

When the current weights are only on disk as safetensors (the run's input directory or
an earlier stage's output) and the run allows streaming, the model is built on the meta
device and each block is read, pruned and written out in turn: peak memory is about one
block. Otherwise the model is pruned in memory. Both give the same weights and masks.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from llmprune.evaluate.resources import peak_device_mb, peak_rss_mb
from llmprune.export.checkpoint import MANIFEST_FILE
from llmprune.finetune.lora import refresh_adapter_masks
from llmprune.io import write_json
from llmprune.models.streaming import NotStreamable
from llmprune.pruning import PruneConfig, PruneResult, prune
from llmprune.pruning.footprint import block_footprint, check_block_fits
from llmprune.pruning.masks import MASKS_FILE
from llmprune.stages.context import StageContext
from llmprune.stages.state import ModelState


def execute(config: PruneConfig, state: ModelState, ctx: StageContext) -> dict:
    source_dir = state.on_disk() if ctx.stream else None
    if source_dir is not None:
        try:
            return prune_streamed(config, source_dir, state, ctx)
        except NotStreamable as exc:
            ctx.echo(f"    not streamed ({exc}); pruning in memory")
    loaded = state.load()
    windows = None
    if config.needs_calibration:
        windows = ctx.inputs.calibration(loaded.tokenizer, config, loaded.context_length)
    owl_key = ("owl", config.calib, config.nsamples, config.seqlen, config.seed)
    owl_key += (config.owl_threshold, config.calibration_dtype, config.device)
    shared_owl = ctx.inputs.memo.get(owl_key) if state.pristine else None
    started = time.perf_counter()
    result = prune(
        loaded.model,
        loaded.tokenizer,
        config,
        windows,
        existing=state.masks,
        progress=ctx.progress,
        owl_ratios=shared_owl,
    )
    if state.pristine and result.owl_ratios:
        ctx.inputs.memo[owl_key] = result.owl_ratios
    refresh_adapter_masks(loaded.model, result.masks)
    state.changed(result.masks)
    return prune_record(result, started, config.device, streamed=False)


def prune_record(result: PruneResult, started: float, device: str, streamed: bool) -> dict:
    """Time and memory right after pruning, before any evaluation loads whole models."""
    return {
        "prune": result.to_dict(),
        "prune_seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "peak_device_mb": peak_device_mb(device),
        "streamed": streamed,
    }


def prune_streamed(
    config: PruneConfig, source_dir: Path, state: ModelState, ctx: StageContext
) -> dict:
    """Prune block by block from `source_dir` into a new checkpoint directory."""
    from transformers import AutoTokenizer

    from llmprune.models.layer_shapes import write_modeling_file
    from llmprune.models.loading import max_context, parse_dtype
    from llmprune.models.streaming import ShardWriter, StreamedModel, StreamResidency

    streamed = StreamedModel(source_dir, parse_dtype(state.dtype))
    footprint = block_footprint(streamed.layout, config, streamed.dtype)
    check_block_fits(footprint, config.device, str(source_dir))
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    windows = None
    if config.needs_calibration:
        windows = ctx.inputs.calibration(tokenizer, config, max_context(streamed.model.config))
    out = ctx.output_dir("pruned")
    writer = ShardWriter(out)
    residency = StreamResidency(streamed, writer, torch.device(config.device))
    started = time.perf_counter()
    result = prune(
        streamed.model,
        tokenizer,
        config,
        windows,
        existing=state.masks,
        progress=ctx.progress,
        residency=residency,
    )
    writer.add(streamed.outside_tensors())
    writer.finish()
    record = prune_record(result, started, config.device, streamed=True)
    record["block_footprint_mb"] = footprint.total / 2**20
    streamed.model.config.save_pretrained(out)
    write_modeling_file(out, streamed.model.config)
    if streamed.model.generation_config is not None:
        streamed.model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result.masks.save(out / MASKS_FILE)
    if state.manifest:
        write_json(out / MANIFEST_FILE, state.manifest)
    state.masks = result.masks
    state.written_to(out)
    return record
