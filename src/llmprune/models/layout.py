"""Where the decoder blocks and their prunable linear layers are, for any HF decoder.

Found generically, not per family: the decoder blocks are the `nn.ModuleList` whose
length is the config's layer count (`model.layers` for LLaMA/Mistral/Qwen2/Gemma/Phi,
`model.decoder.layers` for OPT, `transformer.h` for GPT-2, `gpt_neox.layers` for
GPT-NeoX/Pythia), and the prunable layers are the `nn.Linear`s and GPT-2 `Conv1D`s
inside them. Embeddings and LM head sit outside the blocks and so are never targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmprune.errors import LLMPruneError

PRUNABLE_TYPES = (nn.Linear, Conv1D)


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), a view that shares storage.

    GPT-2's Conv1D stores (in, out); every rule works on (out, in) so that "a row" is
    always one output neuron and "a column" one input channel.
    """
    weight = module.weight.data
    return weight.t() if isinstance(module, Conv1D) else weight


def trained_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in) with its autograd history: what a loss term differentiates."""
    weight = module.weight
    return weight.t() if isinstance(module, Conv1D) else weight


def storage_mask(module: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """An (out, in) mask in the order the module stores its weight (Conv1D: transposed)."""
    return mask.t() if isinstance(module, Conv1D) else mask


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write an (out, in) matrix back into the module in its own storage order."""
    weight_matrix(module).copy_(matrix.to(module.weight.dtype))


@dataclass
class ModelLayout:
    """The decoder blocks of a model and the prunable linears in each."""

    blocks_path: str
    blocks: nn.ModuleList

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_index(self, name: str) -> int:
        """The block a full module name lies in ("model.layers.3.mlp.up_proj" -> 3)."""
        return int(name[len(self.blocks_path) + 1 :].split(".")[0])

    def block_linears(self, index: int) -> dict[str, nn.Module]:
        """Prunable linears of one block, keyed by their name inside the block.

        Seen through peft: a LoRA-wrapped layer is its `base_layer` under the layer's own
        name, and the adapters themselves are not layers of the model.
        """
        linears = {}
        for name, module in self.blocks[index].named_modules():
            parts = name.split(".")
            if not name or not is_prunable(module) or any(p.startswith("lora_") for p in parts):
                continue
            linears[name.removesuffix(".base_layer")] = module
        return linears

    def linears(self) -> dict[str, nn.Module]:
        """Every prunable linear of the model, keyed by its full module name."""
        return {
            f"{self.blocks_path}.{index}.{name}": module
            for index in range(self.num_blocks)
            for name, module in self.block_linears(index).items()
        }


def num_layers(config) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def find_layout(model: nn.Module) -> ModelLayout:
    """Find the decoder blocks: the largest ModuleList with one entry per layer.

    A peft model is seen as the model it wraps, so names stay those of the checkpoint.
    """
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()
    expected = num_layers(getattr(model, "config", None))
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if expected is not None and len(module) != expected:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        has_linears = any(is_prunable(m) for m in module[0].modules())
        if has_linears:
            candidates.append((size, name, module))
    if not candidates:
        kind = type(model).__name__
        raise LLMPruneError(
            f"unsupported architecture {kind}: no decoder blocks with linear layers"
        )
    _, name, blocks = max(candidates, key=lambda item: item[0])
    return ModelLayout(blocks_path=name, blocks=blocks)
