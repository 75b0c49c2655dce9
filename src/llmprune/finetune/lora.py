"""LoRA adapters (via peft) on the pruned linears, merged so that zeros stay zero.

A merged LoRA update B·A is dense; added to a pruned W it would fill the pruned
positions. The masked merge keeps W + (B·A) ⊙ M: merge with peft, then re-apply the
masks, which is the same thing because W ⊙ M = W. The unmerged adapter can be saved
instead with `save_adapter`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.pruning.masks import ModelMasks


def leaf_names(names: list[str]) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in names})


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
    return get_peft_model(model, config)


def is_conv1d_model(model: nn.Module, layer_names: list[str]) -> bool:
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    return any(isinstance(modules[name], Conv1D) for name in layer_names)


def merge_lora(peft_model: nn.Module, masks: ModelMasks | None) -> nn.Module:
    """Merge adapters into the base weights, then zero the pruned positions again."""
    model = peft_model.merge_and_unload()
    if masks is not None:
        masks.apply(model)
        masks.check(model)
    return model


def save_adapter(peft_model: nn.Module, directory: str | Path) -> None:
    """The unmerged form: peft's adapter files, loadable with PeftModel.from_pretrained."""
    peft_model.save_pretrained(str(directory))
