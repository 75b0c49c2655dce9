"""The masks of a model as one object: apply, check, save, load.

A mask is a bool tensor in the (out, in) orientation of `weight_matrix`, True = keep.
Saved bit-packed in safetensors (one bit per weight), so masks of a 7B model cost
under 1 GB and load without pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmprune.errors import LLMPruneError
from llmprune.models.layout import weight_matrix

MASKS_FILE = "masks.safetensors"


class ModelMasks:
    """Masks keyed by full module name of the linear layer they belong to."""

    def __init__(self, masks: dict[str, torch.Tensor] | None = None):
        self.masks: dict[str, torch.Tensor] = {
            name: mask.detach().to("cpu", torch.bool) for name, mask in (masks or {}).items()
        }

    def __len__(self) -> int:
        return len(self.masks)

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.masks[name]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self.masks[name] = mask.detach().to("cpu", torch.bool)

    def get(self, name: str) -> torch.Tensor | None:
        return self.masks.get(name)

    def sparsity(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        pruned = sum(int((~mask).sum()) for mask in self.masks.values())
        return pruned / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {name: float((~mask).float().mean()) for name, mask in self.masks.items()}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        """Zero every pruned weight in place (after an optimizer step, say)."""
        modules = dict(model.named_modules())
        for name, mask in self.masks.items():
            matrix = weight_matrix(modules[name])
            matrix.mul_(mask.to(matrix.device, matrix.dtype))

    @torch.no_grad()
    def violations(self, model: torch.nn.Module) -> dict[str, int]:
        """Layers with pruned positions that are not exactly zero, and how many."""
        modules = dict(model.named_modules())
        bad = {}
        for name, mask in self.masks.items():
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
        tensors, shapes = {}, {}
        for name, mask in self.masks.items():
            tensors[name] = torch.from_numpy(np.packbits(mask.numpy().ravel()))
            shapes[name] = list(mask.shape)
        save_file(tensors, str(path), metadata={"shapes": json.dumps(shapes), "format": "packbits"})

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
        masks = {}
        for name, shape in shapes.items():
            count = int(np.prod(shape))
            bits = np.unpackbits(packed[name].numpy())[:count]
            masks[name] = torch.from_numpy(bits.astype(bool)).view(*shape)
        return cls(masks)

    @classmethod
    def from_model(cls, model: torch.nn.Module, names: list[str]) -> ModelMasks:
        """Masks that keep exactly the non-zero weights of the named layers."""
        modules = dict(model.named_modules())
        return cls({name: weight_matrix(modules[name]) != 0 for name in names})
