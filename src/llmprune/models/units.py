"""Where the removable units of a decoder block are, per architecture.

An FFN channel is one row of each input projection (gate and up, or fc1) and the matching
column of the output projection. An attention head is `head_dim` rows of q (and, for a
whole key-value group, of k and v) and the matching columns of o. Heads can only be
removed from families whose modeling code reads `head_dim` from the config: OPT, GPT-2
and GPT-NeoX derive it from `hidden_size / num_heads`, so a checkpoint with fewer heads
would not load back in transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.models.layout import weight_matrix


@dataclass(frozen=True)
class FFNNames:
    """The projections of one FFN, by name inside a block, and its width's config key."""

    inputs: tuple[str, ...]
    output: str
    config_key: str


FFN_NAMES = (
    FFNNames(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size"),
    FFNNames(("mlp.c_fc",), "mlp.c_proj", "n_inner"),
    FFNNames(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "intermediate_size"),
    FFNNames(("mlp.fc1",), "mlp.fc2", "intermediate_size"),
    FFNNames(("fc1",), "fc2", "ffn_dim"),
)


@dataclass(frozen=True)
class AttentionNames:
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"

    @property
    def module(self) -> str:
        return self.q.rsplit(".", 1)[0]


# families whose attention reads head_dim and num_key_value_heads from the config
HEAD_FAMILIES = {
    "llama": AttentionNames(),
    "mistral": AttentionNames(),
    "qwen2": AttentionNames(),
    "qwen3": AttentionNames(),
    "gemma": AttentionNames(),
    "gemma2": AttentionNames(),
    "phi": AttentionNames(o="self_attn.dense"),
}


@dataclass
class FFN:
    """One block's FFN: the modules, and how wide it is."""

    names: FFNNames
    inputs: list[nn.Module]
    output: nn.Module

    @property
    def width(self) -> int:
        return weight_matrix(self.output).shape[1]


@dataclass
class Attention:
    """One block's attention: the projections and its head counts."""

    names: AttentionNames
    module: nn.Module
    q: nn.Module
    k: nn.Module
    v: nn.Module
    o: nn.Module
    head_dim: int

    @property
    def num_heads(self) -> int:
        return weight_matrix(self.q).shape[0] // self.head_dim

    @property
    def num_kv_heads(self) -> int:
        return weight_matrix(self.k).shape[0] // self.head_dim

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads


def submodule(block: nn.Module, name: str) -> nn.Module | None:
    try:
        return block.get_submodule(name)
    except AttributeError:
        return None


def find_ffn(block: nn.Module, model_type: str) -> FFN:
    for names in FFN_NAMES:
        modules = [submodule(block, name) for name in (*names.inputs, names.output)]
        if all(module is not None for module in modules):
            return FFN(names, modules[:-1], modules[-1])
    raise LLMPruneError(
        f"structured: no FFN with known projections in {model_type} blocks "
        "(fused or mixture-of-experts FFNs are not supported); prune heads or blocks"
    )


def find_attention(block: nn.Module, config) -> Attention:
    model_type = getattr(config, "model_type", "?")
    names = HEAD_FAMILIES.get(model_type)
    if names is None:
        raise LLMPruneError(
            f"structured: {model_type} computes the head size from hidden_size, so a model "
            "with fewer heads would not load in transformers; remove ffn channels or blocks"
        )
    if getattr(config, "qk_layernorm", False):
        raise LLMPruneError(
            f"structured: this {model_type} model normalises q and k with a size derived "
            "from hidden_size / heads, so a model with fewer heads would not load; "
            "remove ffn channels or blocks"
        )
    parts = [submodule(block, name) for name in (names.q, names.k, names.v, names.o)]
    module = submodule(block, names.module)
    if module is None or any(part is None for part in parts):
        raise LLMPruneError(f"structured: no q/k/v/o projections in this {model_type} block")
    head_dim = getattr(module, "head_dim", None)
    if not isinstance(head_dim, int) or weight_matrix(parts[0]).shape[0] % head_dim:
        raise LLMPruneError(f"structured: cannot tell the head size of this {model_type} model")
    return Attention(names, module, *parts, head_dim=head_dim)


def check_unwrapped(model: nn.Module) -> None:
    """Adapters are trained on the current widths: merge them before cutting units."""
    if any(name.split(".")[-1].startswith("lora_") for name, _ in model.named_modules()):
        raise LLMPruneError(
            "structured: the model has unmerged LoRA adapters; fine-tune with merge: true "
            "(the default) before a structured prune"
        )
