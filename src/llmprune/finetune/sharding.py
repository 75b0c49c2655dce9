"""Fully sharded training (FSDP2 through accelerate) for models beyond one device.

The Trainer and accelerate do the sharding; llmprune only has to (1) ask for it, with
the decoder block as the unit that is gathered at a time, (2) keep masks on sharded
weights: each rank multiplies its own shard by its own slice of the mask, and (3) hand
later stages an ordinary model, gathered on every rank, whose names are the original
parameter names the masks are keyed by.

accelerate turns FSDP on only for GPU-like devices; on CPU processes (gloo) FSDP2 works
as well, so `enable_on_cpu` switches it on there too: the same code path can be tested
in CI with two CPU processes.
"""

from __future__ import annotations

import inspect
import logging
import os

import torch
from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.models.layout import find_layout

logger = logging.getLogger(__name__)


def processes() -> int:
    """How many processes this run was launched with (torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_split(windows: int, batch_size: int) -> None:
    """Refuse training windows that do not split evenly over the processes: the data
    sampler would otherwise repeat or drop some of them without a word."""
    world = processes()
    if world > 1 and windows % (world * batch_size):
        raise LLMPruneError(
            f"{windows} training windows do not split evenly over {world} processes "
            f"× batch {batch_size}"
        )


def fsdp_arguments(model: nn.Module) -> dict:
    """TrainingArguments options that shard every decoder block (FSDP2, full shard)."""
    block = type(find_layout(model).blocks[0]).__name__
    return {
        "fsdp": True,
        "fsdp_config": {
            "fsdp_version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": [block],
            "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT",
        },
    }


def enable_on_cpu(trainer) -> bool:
    """Let FSDP run on CPU processes when it was asked for (accelerate only enables it on
    GPU-like devices and would otherwise fall back to DDP without a word)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    plugin_args = getattr(trainer.args, "fsdp_plugin_args", None)
    if not plugin_args or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**plugin_args)
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    logger.info("FSDP on CPU processes (gloo)")
    return True


def process_device(device: str | torch.device) -> torch.device:
    """This process's device: under torchrun / accelerate, plain "cuda" is the local
    rank's GPU, not GPU 0 for every rank."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def is_sharded(tensor: torch.Tensor | None) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support shards nothing
        return False
    return isinstance(tensor, DTensor)


def shard_like(tensor: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`tensor` laid out like `param`: when `param` is sharded, this rank's slice of it,
    cut from its own full copy (no communication where torch allows) and copied, so the
    full tensor is not kept alive behind the shard."""
    if not is_sharded(param):
        return tensor.to(param.device)
    from torch.distributed.tensor import DTensor, distribute_tensor

    local = tensor.to(param.to_local().device)
    options = {}
    if "src_data_rank" in inspect.signature(distribute_tensor).parameters:
        options["src_data_rank"] = None  # every rank holds the same full mask
    spread = distribute_tensor(local, param.device_mesh, param.placements, **options)
    return DTensor.from_local(
        spread.to_local().clone(),
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def gathered(model: nn.Module) -> nn.Module:
    """An ordinary (unsharded) copy of a model FSDP has sharded, on every rank; the
    model itself when nothing is sharded. Call it once the trainer (and its optimizer
    state) is gone: each full tensor passes through the device one at a time.

    The sharded modules' classes and hooks belong to FSDP, so the model is rebuilt from
    its config on the meta device and given the full tensors; buffers that are not in
    the state dict (rotary tables) are carried over.
    """
    sharded = [p for p in model.parameters() if is_sharded(p)]
    if not sharded:
        return model
    from torch.distributed.fsdp import FSDPModule

    device = sharded[0].to_local().device
    state = {
        name: (value.full_tensor() if is_sharded(value) else value).detach().cpu()
        for name, value in model.state_dict().items()
    }
    original = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = original(model.config)
    plain.load_state_dict(state, assign=True, strict=True)
    for name, buffer in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner)
        if module._buffers.get(leaf) is not None and module._buffers[leaf].is_meta:
            module._buffers[leaf] = buffer.detach().clone().cpu()
    if getattr(model.config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.to(device).eval()
