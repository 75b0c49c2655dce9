"""The masks of a model as one object: apply, check, save, load.

A mask is a bool tensor in the (out, in) orientation of `weight_matrix`, True = keep.
Masks are held bit-packed (one bit per weight, numpy's packbits order) and unpacked one
layer at a time when used, so pruning a 7B model block by block keeps under 1 GB of
masks rather than 7 GB; they are saved in the same packed form in safetensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmprune.errors import LLMPruneError
from llmprune.models.layout import find_layout, weight_matrix

MASKS_FILE = "masks.safetensors"
ONES_IN_BYTE = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)


def pack(mask: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(mask.detach().to("cpu", torch.bool).numpy().ravel()))


def unpack(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    bits = np.unpackbits(packed.numpy(), count=int(np.prod(shape)))
    return torch.from_numpy(bits).view(torch.bool).view(*shape)


class ModelMasks:
    """Masks keyed by full module name of the linear layer they belong to."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None):
        self.packed: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name, mask in (masks or {}).items():
            self[name] = mask

    def __len__(self) -> int:
        return len(self.packed)

    def __contains__(self, name: str) -> bool:
        return name in self.packed

    def __iter__(self) -> Iterator[str]:
        return iter(self.packed)

    def __getitem__(self, name: str) -> torch.Tensor:
        return unpack(self.packed[name], self.shapes[name])

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self.packed[name] = pack(mask)
        self.shapes[name] = tuple(mask.shape)

    def __delitem__(self, name: str) -> None:
        del self.packed[name], self.shapes[name]

    def copy(self) -> ModelMasks:
        """An independent set of the same masks (packed tensors are never changed in place)."""
        twin = ModelMasks()
        twin.packed, twin.shapes = dict(self.packed), dict(self.shapes)
        return twin

    def get(self, name: str) -> torch.Tensor | None:
        return self[name] if name in self.packed else None

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, bool mask) pairs, each unpacked only when reached."""
        for name in self.packed:
            yield name, self[name]

    def kept(self, name: str) -> int:
        return int(ONES_IN_BYTE[self.packed[name].long()].sum())  # padding bits are 0

    def numel(self, name: str) -> int:
        return int(np.prod(self.shapes[name]))

    def sparsity(self) -> float:
        total = sum(self.numel(name) for name in self)
        pruned = sum(self.numel(name) - self.kept(name) for name in self)
        return pruned / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - self.kept(name) / self.numel(name) for name in self}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module, unpacked: dict | None = None) -> None:
        """Zero every pruned weight in place (after an optimizer step, say)."""
        modules = find_layout(model).linears()
        for name in self:
            matrix = weight_matrix(modules[name])
            mask = unpacked[name] if unpacked is not None else self[name]
            matrix.mul_(mask.to(matrix.device, matrix.dtype))

    @torch.no_grad()
    def violations(self, model: torch.nn.Module) -> dict[str, int]:
        """Layers with pruned positions that are not exactly zero, and how many."""
        modules = find_layout(model).linears()
        bad = {}
        for name, mask in self.items():
            if name not in modules:
                bad[name] = -1
                continue
            matrix = weight_matrix(modules[name])
            count = int((matrix[~mask.to(matrix.device)] != 0).sum())
            if count:
                bad[name] = count
        return bad

    def check(self, model: torch.nn.Module) -> None:
        """Raise if any pruned weight is not exactly zero."""
        bad = self.violations(model)
        if bad:
            name, count = next(iter(bad.items()))
            raise LLMPruneError(f"{len(bad)} layers break their masks, e.g. {name} ({count})")

    def save(self, path: str | Path) -> None:
        shapes = {name: list(shape) for name, shape in self.shapes.items()}
        metadata = {"shapes": json.dumps(shapes), "format": "packbits"}
        save_file(dict(self.packed), str(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> ModelMasks:
        path = Path(path)
        if not path.is_file():
            raise LLMPruneError(f"no mask file at {path}")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                shapes = json.loads(handle.metadata()["shapes"])
            packed = load_file(str(path))
        except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as exc:
            raise LLMPruneError(f"corrupt mask file {path}: {exc}") from None
        masks = cls()
        for name, shape in shapes.items():
            bits = packed.get(name)
            if bits is None or bits.dtype != torch.uint8 or bits.numel() != -(-np.prod(shape) // 8):
                raise LLMPruneError(f"corrupt mask file {path}: {name} does not match its shape")
            masks.packed[name], masks.shapes[name] = bits, tuple(shape)
        return masks
