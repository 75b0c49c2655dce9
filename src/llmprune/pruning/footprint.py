"""What one block of a sequential pass needs in memory, known before any work starts.

A streamed prune holds one block's weights, its layers' calibration statistics (for
SparseGPT an in×in Hessian per layer, plus the temporaries of one inversion) and the
hidden states of every calibration window. `check_block_fits` compares that with the
free memory so that a model whose block cannot fit is refused with the numbers, instead
of being killed half-way through.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import torch

from llmprune.errors import LLMPruneError
from llmprune.models.layout import ModelLayout, weight_matrix
from llmprune.pruning.config import PruneConfig
from llmprune.pruning.methods import METHODS
from llmprune.pruning.statistics import InputNorms

GIB = 2**30


def readable(count: int) -> str:
    """Bytes as GiB, or MiB below a tenth of one."""
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / 2**20:.1f} MiB"


@dataclass
class Footprint:
    """Bytes one block's visit needs, on top of the runtime and the embeddings: an
    estimate (layers that share an input, like q/k/v, share one statistic in practice;
    allocator slack is not counted). `statistics` includes the pruning maths' working
    memory."""

    weights: int
    statistics: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.statistics + self.activations

    def describe(self) -> str:
        return (
            f"{readable(self.total)} (block weights {readable(self.weights)}, statistics "
            f"{readable(self.statistics)}, calibration activations {readable(self.activations)})"
        )


def block_footprint(layout: ModelLayout, config: PruneConfig, dtype: torch.dtype) -> Footprint:
    """The footprint of the largest block (shapes only: works on the meta device)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = [sum(p.numel() for p in block.parameters()) for block in layout.blocks]
    index = max(range(len(sizes)), key=sizes.__getitem__)
    # the block, and its copy on the way to disk (a streamed prune writes it out)
    weights = 2 * sizes[index] * itemsize
    shapes = [weight_matrix(m).shape for m in layout.block_linears(index).values()]
    # one layer's rule at a time: a float32 copy, its scores, and a sort's values and
    # int64 indices: about 20 bytes a weight of the largest layer
    rule = 20 * max(rows * cols for rows, cols in shapes)
    if not METHODS[config.method].needs_calibration and config.allocation != "owl":
        return Footprint(weights, rule, 0)
    statistic = METHODS[config.method].statistic or InputNorms  # OWL's pre-pass: norms
    statistics = sum(statistic.bytes_for(cols) for _, cols in shapes)
    statistics += max(statistic.working_bytes(cols) for _, cols in shapes) + rule
    # the block's input width: the one most of its linears read (q/k/v/o, gate/up, fc1)
    hidden = Counter(cols for _, cols in shapes).most_common(1)[0][0]
    widest = max(max(rows, cols) for rows, cols in shapes)
    kept = config.nsamples * config.seqlen * hidden * itemsize  # every window's hidden states
    passing = 4 * config.batch_size * config.seqlen * widest * 4  # one batch through the block
    return Footprint(weights, statistics, kept + passing)


def free_bytes(device: torch.device) -> int | None:
    """Free memory where the block will be computed (host memory for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    from llmprune.models.loading import available_memory_bytes

    return available_memory_bytes()


def check_block_fits(footprint: Footprint, device: torch.device | str, label: str) -> None:
    """Refuse a pass whose one block would not fit, before any work.

    On a GPU the calibration activations stay in host memory, so only the block and its
    statistics are compared with the device's free memory.
    LLMPRUNE_SKIP_MEMORY_CHECK=1 skips the check.
    """
    if os.environ.get("LLMPRUNE_SKIP_MEMORY_CHECK") == "1":
        return
    from llmprune.models.loading import parse_device

    device = parse_device(device)  # a bad device is a one-line error here, not a traceback
    free = free_bytes(device)
    if free is None:
        return
    needed = footprint.total
    if device.type != "cpu":
        needed = footprint.weights + footprint.statistics
    if needed > free:
        raise LLMPruneError(
            f"one block of {label} needs about {footprint.describe()} on {device} and "
            f"{readable(free)} is free; use fewer or shorter calibration windows "
            "(--nsamples, --seqlen), --dtype bfloat16, or a device with more memory"
        )
