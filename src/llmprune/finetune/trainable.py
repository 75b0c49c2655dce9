"""Which parameters learn during recovery: all of them, or a PERP subset.

PERP (Zimmer et al.): after pruning, retraining only a tiny, well-chosen subset —
biases, normalization parameters, the LM head — recovers most of the loss at a fraction
of the memory; LoRA adapters on the pruned linears add capacity (see `lora.py`).
"""

from __future__ import annotations

from torch import nn

from llmprune.errors import LLMPruneError

# "lora": adapters on the pruned linears; "lora_head": an adapter on the LM head, which
# PERP found more stable than training the whole head (and tied embeddings stay as they are)
PARTS = ("all", "biases", "norms", "head", "embeddings", "lora", "lora_head")


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and every family's own norm class (LlamaRMSNorm, ...)."""
    return (
        isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()
    )


def check_parts(parts: list[str]) -> list[str]:
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise LLMPruneError(
            f"unknown trainable part {unknown[0]!r}; choose from {', '.join(PARTS)}"
        )
    if not parts:
        raise LLMPruneError("choose at least one trainable part")
    return parts


def trainable_names(model: nn.Module, parts: list[str]) -> set[str]:
    """Names of the parameters that `parts` makes trainable (LoRA adds its own later)."""
    check_parts(parts)
    if "all" in parts:
        return {name for name, _ in model.named_parameters()}
    chosen: set[str] = set()
    ids = {id(p): n for n, p in model.named_parameters()}
    if "biases" in parts:
        chosen |= {name for name, _ in model.named_parameters() if name.endswith("bias")}
    if "norms" in parts:
        for module in model.modules():
            if is_norm(module):
                chosen |= {ids[id(p)] for p in module.parameters(recurse=False) if id(p) in ids}
    head = model.get_output_embeddings()
    if "head" in parts and head is not None:
        chosen |= {ids[id(p)] for p in head.parameters() if id(p) in ids}
    embeddings = model.get_input_embeddings()
    if "embeddings" in parts and embeddings is not None:
        chosen |= {ids[id(p)] for p in embeddings.parameters() if id(p) in ids}
    return chosen


def count_trainable(model: nn.Module) -> dict[str, int]:
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    return {"trainable": trainable, "total": total}
