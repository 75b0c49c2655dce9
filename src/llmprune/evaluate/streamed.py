"""Perplexity of a checkpoint on disk with one decoder block in memory at a time.

The evaluation windows run through the blocks as calibration does (each block read from
disk, applied to every batch, dropped); the model's own forward then turns the last
block's outputs into logits (`sequential.replay`). Same numbers as the in-memory path,
for any model size: what a streamed prune saves in memory, its evaluation keeps.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from llmprune.evaluate.perplexity import PerplexityResult, logits_nll, perplexity_result
from llmprune.models.loading import parse_dtype
from llmprune.models.streaming import NotStreamable, StreamedModel, StreamResidency
from llmprune.pruning.sequential import replay, walk_blocks


@torch.no_grad()
def streamed_perplexity(
    directory: str | Path,
    windows: torch.Tensor,
    dtype: str = "float32",
    batch_size: int = 4,
    device: str = "cpu",
    progress: bool = False,
) -> PerplexityResult:
    """exp(mean next-token NLL) over `windows`, reading the blocks of `directory` in turn."""
    start = time.perf_counter()
    streamed = StreamedModel(directory, parse_dtype(dtype))
    residency = StreamResidency(streamed, None, torch.device(device))
    layout = streamed.layout
    outputs = walk_blocks(
        streamed.model,
        layout,
        windows,
        lambda *_: None,
        batch_size,
        device,
        "perplexity (streamed)",
        progress,
        residency,
    )
    total_nll, total_tokens = 0.0, 0
    for item, batch in zip(outputs, torch.split(windows, batch_size), strict=True):
        batch = batch.to(device)
        try:
            logits = replay(streamed.model, layout, batch, item.hidden.to(device)).logits
        except Exception as exc:  # a model loop that needs real block outputs
            raise NotStreamable(f"cannot replay {directory} block by block: {exc}") from None
        total_nll += float(logits_nll(logits, batch).sum())
        total_tokens += batch.size(0) * (batch.size(1) - 1)
    return perplexity_result(total_nll, total_tokens, windows, start)
