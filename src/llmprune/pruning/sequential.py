"""The sequential calibration driver: one decoder block on the compute device at a time.

1. Run the calibration windows through the model with every block replaced by a recorder,
   and keep what the first block receives (hidden states on the offload device) and the
   other arguments of every block: models with sliding-window layers (Qwen2, Gemma2/3)
   give those layers their own attention mask.
2. For each block: move it to the device, hook its target linears, forward the batch to
   accumulate each layer's statistic, let the caller prune, forward again so the next
   block sees the outputs of the *pruned* block, and move the block back.
Peak device memory is one block plus one batch of activations; buffers are sized by the
calibration length, never by the model's maximum context.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from llmprune.models.layout import ModelLayout
from llmprune.pruning.statistics import Statistic

logger = logging.getLogger(__name__)


@dataclass
class BlockInput:
    """One calibration batch: the hidden states entering the current block, and the other
    arguments each block is called with (index i = block i)."""

    hidden: torch.Tensor
    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    compute_dtype: torch.dtype | None = None  # matmuls under autocast (bf16 calibration)

    def run(self, block: nn.Module, index: int, device: torch.device):
        args, kwargs = self.calls[index] if index < len(self.calls) else self.calls[0]
        dtype = self.compute_dtype
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return block(self.hidden.to(device), *args, **kwargs)


def has_fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here: a GPU that supports them, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated and several times slower than fp32."""
    if device.type == "cuda":  # native from compute capability 8 (Ampere); older emulate it
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).major >= 8
    if device.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def calibration_compute_dtype(
    choice: str, device: torch.device | str, weights: torch.dtype
) -> torch.dtype | None:
    """The autocast dtype of calibration forward passes, or None to run them as stored.

    `auto` is bf16 where the hardware has it and the weights are float32; statistics
    (Hessians, norms) and the pruning maths stay in float32 either way.
    """
    if weights != torch.float32 or choice == "float32":
        return None
    if choice == "bfloat16" or has_fast_bf16(torch.device(device)):
        return torch.bfloat16
    return None


class _Captured(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a block during capture: records its call, passes the input on.

    Attribute lookups fall through to the real block, since some model loops read
    per-layer facts (attention type) from the block itself.
    """

    def __init__(self, block: nn.Module, record: Callable):
        super().__init__()
        object.__setattr__(self, "wrapped", block)  # not registered: no parameters here
        object.__setattr__(self, "record", record)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "wrapped"), name)

    def forward(self, *args, **kwargs):
        return self.record(args, kwargs)


def move_outside_blocks(model: nn.Module, layout: ModelLayout, device: torch.device) -> None:
    """Put embeddings, final norm, rotary tables etc. on `device`; leave blocks where they are."""
    inside = {id(m) for block in layout.blocks for m in block.modules()}
    for module in model.modules():
        if id(module) in inside:
            continue
        for param in module.parameters(recurse=False):
            if param.device != device:
                param.data = param.data.to(device)
        for key, buffer in module.named_buffers(recurse=False):
            if buffer.device != device:
                module._buffers[key] = buffer.to(device)


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module,
    layout: ModelLayout,
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    offload: torch.device,
) -> list[BlockInput]:
    """Run each batch through the model with recorders for blocks; no block computes.

    If the model's own loop cannot run past a recorder (it unpacks a block's output in
    a way a pass-through breaks), every block gets the first block's arguments instead.
    """
    captured: list[BlockInput] = []
    last = layout.num_blocks - 1

    def recorder(index: int) -> Callable:
        def record(args: tuple, kwargs: dict):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if index == 0:
                captured.append(BlockInput(hidden.to(offload)))
            captured[-1].calls.append((tuple(args[1:]), kwargs))
            if index == last:
                raise _Captured
            return hidden

        return record

    blocks = list(layout.blocks)
    for index, block in enumerate(blocks):
        layout.blocks[index] = _Recorder(block, recorder(index))
    try:
        for batch in torch.split(windows, batch_size):
            before = len(captured)
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Captured:
                pass
            except Exception:  # the loop needs real block outputs: fall back to block 0's
                if len(captured) == before:
                    raise  # failed before the first block: a real error
                if before == 0:
                    logger.warning("every block is calibrated with the first block's arguments")
                del captured[-1].calls[1:]
    finally:
        for index, block in enumerate(blocks):
            layout.blocks[index] = block
    return captured


@torch.no_grad()
def advance(block: nn.Module, index: int, inputs: list[BlockInput], device: torch.device) -> None:
    """Replace each batch's hidden states by the block's output, one batch at a time
    (never two copies of the whole calibration set)."""
    for item in inputs:
        out = item.run(block, index, device)
        hidden = out[0] if isinstance(out, tuple) else out
        item.hidden = hidden.to(item.hidden.device)


@torch.no_grad()
def collect_statistics(
    block: nn.Module,
    index: int,
    linears: dict[str, nn.Module],
    make_statistic: Callable[[str, nn.Module], Statistic],
    inputs: list[BlockInput],
    device: torch.device,
) -> dict[str, Statistic]:
    """Forward the batch through a block with its target linears hooked.

    Layers fed the very same tensor (q/k/v, gate/up) share one statistic, so a Hessian
    is accumulated once per distinct input rather than once per layer.
    """
    owners: dict[str, str] = {}
    stats: dict[str, Statistic] = {}
    seen: dict[int, tuple[torch.Tensor, str]] = {}

    def hook_for(name: str):
        def hook(_module, args, _output):
            x = args[0]
            if name not in owners:  # first batch: find layers that share an input tensor
                owner = seen.get(id(x), (x, name))[1]
                seen[id(x)] = (x, owner)
                owners[name] = owner
                if owner == name:
                    stats[name] = make_statistic(name, linears[name])
            if owners[name] == name:
                stats[name].add_batch(x)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in linears.items()]
    try:
        for position, item in enumerate(inputs):
            item.run(block, index, device)
            if position == 0:
                seen.clear()
    finally:
        for handle in handles:
            handle.remove()
    return {name: stats[owners[name]] for name in linears if name in owners}


class Residency:
    """Where blocks live between visits: here, all in host memory, one at a time on device.

    The streaming variant (models/streaming.py) reads each block from disk on `enter`
    and writes it out on `leave`, so only one block is ever in memory.
    """

    def __init__(self, layout: ModelLayout, device: torch.device):
        self.layout = layout
        self.device = device

    def enter(self, index: int) -> nn.Module:
        return self.layout.blocks[index].to(self.device)

    def leave(self, index: int) -> None:
        if self.device.type != "cpu":
            self.layout.blocks[index].to("cpu")

    def read_only(self) -> Residency:
        """The same residency for a pass that must not change or write anything (OWL)."""
        return self


def walk_blocks(
    model: nn.Module,
    layout: ModelLayout,
    windows: torch.Tensor | None,
    visit: Callable[[int, nn.Module, list[BlockInput]], None],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    desc: str = "blocks",
    progress: bool = True,
    residency: Residency | None = None,
    compute_dtype: torch.dtype | None = None,
) -> list[BlockInput]:
    """Call `visit(index, block, inputs)` for each block, then advance the inputs through it.

    Without `windows` (magnitude pruning) blocks are visited with no calibration at all.
    With `compute_dtype`, the blocks' forward passes run under autocast to it.
    Returns the batches holding the last block's outputs.
    """
    device = torch.device(device)
    offload = torch.device("cpu")
    residency = residency or Residency(layout, device)
    inputs: list[BlockInput] = []
    if windows is not None:
        if device != offload:
            for block in layout.blocks:
                if not any(p.is_meta for p in block.parameters()):
                    block.to(offload)
            move_outside_blocks(model, layout, device)
        inputs = capture_block_inputs(model, layout, windows, batch_size, device, offload)
        for item in inputs:
            item.compute_dtype = compute_dtype
    for index in tqdm(range(layout.num_blocks), desc=desc, disable=not progress):
        block = residency.enter(index)
        visit(index, block, inputs)
        if inputs:
            advance(block, index, inputs, device)
        residency.leave(index)
    return inputs


@torch.no_grad()
def replay(model: nn.Module, layout: ModelLayout, batch: torch.Tensor, final: torch.Tensor):
    """The model's output for `batch` when its blocks have already been run: every block
    passes its input on and the last returns `final`, so the model's own code applies
    the final norm and head (whatever the family calls them)."""
    last = layout.num_blocks - 1

    def passing(index: int) -> Callable:
        def record(args: tuple, kwargs: dict):
            return final if index == last else (args[0] if args else kwargs["hidden_states"])

        return record

    blocks = list(layout.blocks)
    for index, block in enumerate(blocks):
        layout.blocks[index] = _Recorder(block, passing(index))
    try:
        return model(input_ids=batch, use_cache=False)
    finally:
        for index, block in enumerate(blocks):
            layout.blocks[index] = block
