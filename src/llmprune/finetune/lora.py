"""LoRA adapters (via peft) on the pruned linears, trained and merged so zeros stay zero.

A LoRA update B·A is dense; added to a pruned W it would fill the pruned positions.
PERP (Zimmer et al.) therefore trains the masked adapter, W + (B·A) ⊙ M, in the forward
pass ("masked" mode, the default whenever the adapter is merged): the model trained is
exactly the model shipped, and merging (W + B·A, then the masks again) gives the same
weights because W ⊙ M = W. "plain" mode trains the usual dense adapter; kept unmerged,
it ships as peft adapter files in `adapter/` beside the sparse base checkpoint.
"""

from __future__ import annotations

import json
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.io import write_json
from llmprune.models.layout import storage_mask
from llmprune.pruning.masks import MASKS_FILE, ModelMasks

ADAPTER_DIR = "adapter"
MODE_FILE = "llmprune_lora.json"


def add_lora(
    model: nn.Module,
    layer_names: list[str],
    rank: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Wrap `model` with LoRA adapters on the named linear layers (full module names)."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise LLMPruneError(f"LoRA rank must be at least 1, got {rank}")
    modules = dict(model.named_modules())
    missing = [name for name in layer_names if name not in modules]
    if missing:
        raise LLMPruneError(f"LoRA target layer {missing[0]} does not exist in the model")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=layer_names,
        bias="none",
        fan_in_fan_out=is_conv1d_model(model, layer_names),
    )
    with warnings.catch_warnings():
        # a tied head is untied before any merge (merge_lora), and peft resets
        # fan_in_fan_out itself for a Linear head beside GPT-2's Conv1D layers
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to True.*")
        return get_peft_model(model, config)


def is_conv1d_model(model: nn.Module, layer_names: list[str]) -> bool:
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    return any(isinstance(modules[name], Conv1D) for name in layer_names)


def lora_modules(peft_model: nn.Module) -> dict[str, nn.Module]:
    """The LoRA-wrapped layers by their name in the original model."""
    base = peft_model.get_base_model()
    return {name: m for name, m in base.named_modules() if hasattr(m, "lora_A")}


def mask_adapters(peft_model: nn.Module, masks: ModelMasks) -> int:
    """Make every adapter on a masked layer compute W + (B·A) ⊙ M; return how many."""
    count = 0
    for name, module in lora_modules(peft_model).items():
        if name not in masks:
            continue
        pruned = ~storage_mask(module.base_layer, masks[name])
        module.register_buffer("llmprune_pruned", pruned.to(module.base_layer.weight.device), False)
        module.forward = types.MethodType(masked_forward, module)
        count += 1
    return count


def masked_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """The base layer with weight W + (B·A) ⊙ M: one matmul, pruned positions stay 0.

    (peft keeps adapters in float32; the delta takes the base weight's dtype. LoRA
    dropout is not applied here: llmprune trains adapters without it.)"""
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if self.disable_adapters or self.merged or not adapters:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.base_layer.weight
    delta = sum(self.get_delta_weight(adapter) for adapter in adapters).to(base.dtype)
    weight = base + delta.masked_fill(self.llmprune_pruned, 0.0)
    return torch.func.functional_call(self.base_layer, {"weight": weight}, (x, *args), kwargs)


def merge_lora(peft_model: nn.Module, masks: ModelMasks | None) -> nn.Module:
    """Merge adapters into the base weights, then zero the pruned positions again."""
    base = peft_model.get_base_model()
    head = base.get_output_embeddings()
    if head is not None and hasattr(head, "lora_A"):
        untie_head(base, head)
    model = peft_model.merge_and_unload()
    if masks is not None:
        masks.apply(model)
        masks.check(model)
    return model


def untie_head(model: nn.Module, head: nn.Module) -> None:
    """Give a LoRA-wrapped LM head its own weight, so merging the adapter into it leaves
    the input embeddings as they are (tied models share one tensor)."""
    embeddings = model.get_input_embeddings()
    if embeddings is not None and head.base_layer.weight is embeddings.weight:
        weight = head.base_layer.weight.detach().clone()
        head.base_layer.weight = nn.Parameter(weight, requires_grad=False)
        model.config.tie_word_embeddings = False


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def refresh_adapter_masks(model: nn.Module, masks: ModelMasks) -> None:
    """After a prune of a model with masked adapters, the adapters follow the new masks."""
    if not is_peft(model):
        return
    for name, module in lora_modules(model).items():
        if hasattr(module, "llmprune_pruned") and name in masks:
            pruned = ~storage_mask(module.base_layer, masks[name])
            module.llmprune_pruned = pruned.to(module.llmprune_pruned.device)


def save_with_adapter(model: nn.Module, directory: Path) -> None:
    """A plain checkpoint of the base weights, plus `adapter/` when adapters are unmerged
    (with a note of whether they are masked, so that loading restores the same forward)."""
    if not is_peft(model):
        model.save_pretrained(directory, safe_serialization=True)
        return
    base = model.get_base_model()
    state = {}
    for key, value in base.state_dict().items():
        parts = key.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue
        state[".".join(p for p in parts if p != "base_layer")] = value
    base.save_pretrained(directory, state_dict=state, safe_serialization=True)
    model.save_pretrained(str(Path(directory) / ADAPTER_DIR))
    masked = any(hasattr(m, "llmprune_pruned") for m in lora_modules(model).values())
    write_json(Path(directory) / ADAPTER_DIR / MODE_FILE, {"masked": masked})


def load_with_adapter(source, dtype: str = "float32"):
    """`load_model`, with the adapter in `adapter/` attached again (unmerged) if present."""
    from llmprune.models import load_model

    loaded = load_model(source, dtype=dtype, device="cpu")
    adapter = Path(str(source)) / ADAPTER_DIR
    if adapter.is_dir():
        from peft import PeftModel

        loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter))
        loaded.model.eval()
        mode = adapter / MODE_FILE
        if mode.is_file() and json.loads(mode.read_text()).get("masked"):
            mask_adapters(loaded.model, ModelMasks.load(Path(str(source)) / MASKS_FILE))
    return loaded
