"""Stream a checkpoint block by block: only one decoder block's weights in memory at once.

The model is built on the meta device; embeddings, final norm and head are read from
the safetensors files, and each decoder block is read when the driver reaches it and
written to the output (then dropped) when the driver leaves it. Peak memory is the
non-block weights plus one block plus the calibration activations, whatever the model's
size. The output is an ordinary `save_pretrained` checkpoint, sharded like transformers
shards it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from llmprune.errors import LLMPruneError
from llmprune.io import write_text
from llmprune.models.layer_shapes import resize_checked
from llmprune.models.layout import ModelLayout, find_layout
from llmprune.models.loading import check_causal, first_line

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# transformers 5's `save_pretrained(max_shard_size="50GB")` default, in bytes
DEFAULT_MAX_SHARD_BYTES = 50 * 10**9
COPY_CHUNK_BYTES = 8 << 20


class NotStreamable(LLMPruneError):
    """The checkpoint's tensors do not map one-to-one onto the model's (fused experts...)."""


def checkpoint_renamings(model: nn.Module) -> list[tuple[str, str]]:
    """transformers' own regex renamings from checkpoint keys to model names, if any.

    (transformers 5 renames e.g. GPT-NeoX's `embed_out` to `lm_head` on load.) Only plain
    renamings are used; a model whose load needs tensor surgery is not streamed.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers 4.x: checkpoint keys are model names
        return []
    pairs = []
    for transform in get_model_conversion_mapping(model):
        if isinstance(transform, WeightRenaming) and not getattr(transform, "scope_prefix", None):
            for source in transform.source_patterns:
                pairs.append((source, transform.target_patterns[0]))
    return pairs


def renamed(key: str, renamings: list[tuple[str, str]]) -> str:
    for source, target in renamings:
        key = re.sub(source, target, key)
    return key


SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


class CheckpointReader:
    """Tensors of a safetensors checkpoint directory, read one at a time, never all.

    Reads with plain positioned reads rather than safetensors' memory map: a mapped
    file's pages join this process's resident set as they are touched, so streaming a
    model through a map would end up holding all of it.
    """

    def __init__(self, directory: Path):
        files = sorted(Path(directory).glob("*.safetensors"))
        if not files:
            raise LLMPruneError(f"{directory} has no .safetensors files to stream from")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for file in files:
            try:
                with open(file, "rb") as handle:
                    size = int.from_bytes(handle.read(8), "little")
                    header = json.loads(handle.read(size))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise LLMPruneError(f"corrupt checkpoint file {file}: {first_line(exc)}") from None
            header.pop("__metadata__", None)
            for key, entry in header.items():
                self.entries[key] = (file, 8 + size, entry)

    @property
    def location(self) -> dict[str, Path]:
        return {key: file for key, (file, _, _) in self.entries.items()}

    def read(self, key: str) -> torch.Tensor:
        file, data_start, entry = self.entries[key]
        begin, end = entry["data_offsets"]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise LLMPruneError(f"{file}: tensor {key} has unsupported dtype {entry['dtype']}")
        buffer = bytearray(end - begin)
        with open(file, "rb") as handle:
            handle.seek(data_start + begin)
            if handle.readinto(buffer) != len(buffer):
                raise LLMPruneError(f"corrupt checkpoint file {file}: {key} is truncated")
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])


def return_freed_memory() -> None:
    """glibc keeps freed large blocks for reuse; malloc_trim gives them back to the OS,
    so the resident set reflects one block, not every block seen so far."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class StreamedModel:
    """A causal LM on the meta device whose blocks are read and written one at a time."""

    def __init__(self, directory: str | Path, dtype: torch.dtype = torch.float32):
        self.directory = Path(directory)
        self.dtype = dtype
        try:
            config = AutoConfig.from_pretrained(self.directory)
        except Exception as exc:  # config errors have many types
            raise LLMPruneError(
                f"cannot load a model config from {directory}: {first_line(exc)}"
            ) from None
        check_causal(config, str(directory))
        self.reader = CheckpointReader(self.directory)
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            resize_checked(self.model, config, str(directory))
        self.model.eval()
        self.layout: ModelLayout = find_layout(self.model)
        prefix = getattr(self.model, "base_model_prefix", "")
        renamings = checkpoint_renamings(self.model)
        self.by_model_name = {renamed(key, renamings): key for key in self.reader.location}
        self.keys = {name: self.checkpoint_key(name, prefix) for name, _ in self.named_tensors()}
        self.materialize(self.model, "", skip_blocks=True)
        self.model.tie_weights()
        missing = [
            n for n, p in self.model.named_parameters() if p.is_meta and not self.in_block(n)
        ]
        missing += [n for n, key in self.keys.items() if key is None and self.in_block(n)]
        if missing:
            raise NotStreamable(f"checkpoint {directory} has no tensor named like {missing[0]}")

    def named_tensors(self):
        yield from self.model.named_parameters(remove_duplicate=False)
        yield from ((n, b) for n, b in self.model.named_buffers() if b.is_meta)

    def checkpoint_key(self, name: str, prefix: str) -> str | None:
        """The checkpoint's name for a tensor (some checkpoints omit the base-model prefix)."""
        if name in self.by_model_name:
            return self.by_model_name[name]
        short = name[len(prefix) + 1 :] if prefix and name.startswith(prefix + ".") else None
        return self.by_model_name.get(short) if short else None

    def in_block(self, name: str) -> bool:
        return name.startswith(self.layout.blocks_path + ".")

    def block_prefix(self, index: int) -> str:
        return f"{self.layout.blocks_path}.{index}."

    def materialize(
        self,
        root: nn.Module,
        prefix: str,
        skip_blocks: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        """Read the weights of `root` (whose names start with `prefix`) from disk."""
        for name, module in root.named_modules():
            full = f"{prefix}{name}." if name else prefix
            if skip_blocks and self.in_block(full):
                continue
            for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
                if tensor is None or not tensor.is_meta:
                    continue
                key = self.keys.get(full + attr)
                if key is None:
                    continue  # tied or non-persistent: filled in by tie_weights / init
                value = self.reader.read(key).to(device=device, dtype=self.dtype)
                if attr in module._parameters:
                    module._parameters[attr] = nn.Parameter(value, requires_grad=False)
                else:
                    module._buffers[attr] = value

    def load_block(self, index: int, device: torch.device | str) -> nn.Module:
        block = self.layout.blocks[index]
        self.materialize(block, self.block_prefix(index), device=device)
        return block

    def block_tensors(self, index: int) -> dict[str, torch.Tensor]:
        """The block's tensors under their checkpoint names, on the CPU."""
        block = self.layout.blocks[index]
        prefix = self.block_prefix(index)
        tensors = {}
        for name, tensor in list(block.named_parameters()) + list(block.named_buffers()):
            key = self.keys.get(prefix + name)
            if key is not None:
                tensors[key] = tensor.detach().to("cpu").contiguous()
        return tensors

    def release_block(self, index: int) -> None:
        """Drop a block's weights back to the meta device and hand the memory back."""
        self.layout.blocks[index].to("meta")
        return_freed_memory()

    def outside_tensors(self) -> dict[str, torch.Tensor]:
        """Embeddings, final norm and head under their checkpoint names (tied ones once)."""
        tensors, seen = {}, set()
        for name, tensor in self.model.state_dict(keep_vars=True).items():
            key = self.keys.get(name)
            if key is None or self.in_block(name) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            tensors[key] = tensor.detach().to("cpu").contiguous()
        return tensors


class ShardWriter:
    """Writes a safetensors checkpoint in shards of at most `max_shard_bytes`, streaming.

    Each tensor's bytes go to a temporary data file as soon as it is added, so memory
    holds no more than one `add` call's tensors, however large a shard. A shard's header
    is known only when the shard closes: it is written then, followed by the data copied
    in chunks. Final names, like transformers', depend on the shard count, so shards get
    them at `finish`: `model.safetensors` alone, or numbered files plus an index. Shard
    sizes count tensor bytes only, as transformers does; a tensor larger than the limit
    gets a shard of its own. Every key given is written, even if two share storage: pass
    tied weights once.
    """

    def __init__(self, directory: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, not {max_shard_bytes}")
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self.data_file = self.directory / ".shard-data.partial"
        self.header: dict[str, dict] = {}  # the open shard's entries
        self.shard_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []  # closed shards and their keys
        self.keys: set[str] = set()
        self.total_size = 0
        self.total_parameters = 0
        self.finished = False

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        """Append tensors to the checkpoint; their bytes are on disk when this returns."""
        if self.finished:
            raise ValueError("ShardWriter.add after finish")
        for key, tensor in tensors.items():
            self.add_tensor(key, tensor)

    def add_tensor(self, key: str, tensor: torch.Tensor) -> None:
        if key in self.keys:
            raise ValueError(f"tensor {key} was already written")
        dtype = DTYPE_NAMES.get(tensor.dtype)
        if dtype is None:
            raise LLMPruneError(f"cannot write tensor {key}: safetensors has no {tensor.dtype}")
        # reshape first: a 0-dim tensor cannot be viewed as bytes of another element size
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        size = data.numel()
        if self.header and self.shard_bytes + size > self.max_shard_bytes:
            self.close_shard()
        with open(self.data_file, "ab") as handle:
            handle.write(data.numpy().data)
        end = self.shard_bytes + size
        self.header[key] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [self.shard_bytes, end],
        }
        self.shard_bytes = end
        self.keys.add(key)
        self.total_size += size
        self.total_parameters += tensor.numel()

    def close_shard(self) -> None:
        """Write the open shard (header, then the data file's bytes) under a temporary name."""
        path = self.directory / f".shard-{len(self.shards) + 1:05d}.partial"
        header = json.dumps(
            {"__metadata__": {"format": "pt"}, **self.header}, separators=(",", ":")
        ).encode()
        header += b" " * (-len(header) % 8)  # safetensors aligns the data to 8 bytes
        with open(path, "wb") as out:
            out.write(len(header).to_bytes(8, "little"))
            out.write(header)
            if self.data_file.exists():
                with open(self.data_file, "rb") as data:
                    shutil.copyfileobj(data, out, COPY_CHUNK_BYTES)
        self.data_file.unlink(missing_ok=True)
        self.shards.append((path, list(self.header)))
        self.header, self.shard_bytes = {}, 0

    def finish(self) -> None:
        """Close the last shard, give every shard its final name, and write the index."""
        if self.finished:
            raise ValueError("ShardWriter.finish called twice")
        if self.header or not self.shards:
            self.close_shard()
        count = len(self.shards)
        weight_map: dict[str, str] = {}
        for number, (path, keys) in enumerate(self.shards, start=1):
            name = SINGLE_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(path, self.directory / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            self.write_index(weight_map)
        self.finished = True

    def write_index(self, weight_map: dict[str, str]) -> None:
        metadata = {"total_parameters": self.total_parameters, "total_size": self.total_size}
        index = {"metadata": metadata, "weight_map": weight_map}
        write_text(self.directory / INDEX_FILE, json.dumps(index, indent=2, sort_keys=True) + "\n")


class StreamResidency:
    """Blocks come from disk on `enter` and go to the output shards on `leave`."""

    def __init__(self, streamed: StreamedModel, writer: ShardWriter | None, device: torch.device):
        self.streamed = streamed
        self.writer = writer
        self.device = torch.device(device)

    def enter(self, index: int) -> nn.Module:
        return self.streamed.load_block(index, self.device)

    def leave(self, index: int) -> None:
        if self.writer is not None:
            self.writer.add(self.streamed.block_tensors(index))
        self.streamed.release_block(index)

    def read_only(self) -> StreamResidency:
        """Blocks read and dropped, nothing written: for OWL's pass over the dense model."""
        return StreamResidency(self.streamed, None, self.device)
