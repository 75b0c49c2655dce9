"""Physical removal: slice projections, drop blocks, and keep config, masks and layer
indices consistent so that `save_pretrained` writes a model transformers loads as is."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmprune.errors import LLMPruneError
from llmprune.models.layout import ModelLayout, weight_matrix
from llmprune.models.units import FFN, Attention
from llmprune.pruning.masks import ModelMasks


def index_tensor(index: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(index, dtype=torch.long, device=device)


def slice_linear(
    module: nn.Module,
    rows: list[int] | None = None,
    cols: list[int] | None = None,
    name: str | None = None,
    masks: ModelMasks | None = None,
) -> None:
    """Keep only `rows` (outputs) and `cols` (inputs) of a Linear or Conv1D, in place,
    and slice its mask the same way."""
    matrix = weight_matrix(module)
    if rows is not None:
        matrix = matrix.index_select(0, index_tensor(rows, matrix.device))
    if cols is not None:
        matrix = matrix.index_select(1, index_tensor(cols, matrix.device))
    grad = module.weight.requires_grad
    stored = matrix.t() if isinstance(module, Conv1D) else matrix
    module.weight = nn.Parameter(stored.contiguous(), requires_grad=grad)
    if rows is not None and getattr(module, "bias", None) is not None:
        bias = module.bias.data.index_select(0, index_tensor(rows, module.bias.device))
        module.bias = nn.Parameter(bias, requires_grad=module.bias.requires_grad)
    out_features, in_features = matrix.shape
    if isinstance(module, Conv1D):
        module.nf = out_features
    else:
        module.out_features, module.in_features = out_features, in_features
    if masks is not None and name is not None and name in masks:
        mask = masks[name]
        if rows is not None:
            mask = mask[rows]
        if cols is not None:
            mask = mask[:, cols]
        masks[name] = mask.contiguous()


def head_channels(heads: list[int], head_dim: int) -> list[int]:
    return [head * head_dim + offset for head in heads for offset in range(head_dim)]


def keep_ffn(ffn: FFN, kept: list[int], prefix: str, masks: ModelMasks | None) -> None:
    """Keep FFN channels `kept`: rows of the input projections, columns of the output."""
    for name, module in zip(ffn.names.inputs, ffn.inputs, strict=True):
        slice_linear(module, rows=kept, name=prefix + name, masks=masks)
    slice_linear(ffn.output, cols=kept, name=prefix + ffn.names.output, masks=masks)


def keep_heads(
    attention: Attention,
    query_heads: list[int],
    kv_heads: list[int],
    prefix: str,
    masks: ModelMasks | None,
) -> None:
    """Keep the given query heads and key-value heads; every kept key-value head keeps
    the same number of query heads, listed group by group, as repeat_kv expects."""
    group = attention.group_size
    per_group = {kv: [h for h in query_heads if h // group == kv] for kv in kv_heads}
    counts = {len(heads) for heads in per_group.values()}
    if len(counts) != 1 or 0 in counts or len(query_heads) != sum(map(len, per_group.values())):
        raise LLMPruneError("structured: kept query heads must fill every kept key-value group")
    names, dim = attention.names, attention.head_dim
    q_channels = head_channels(query_heads, dim)
    kv_channels = head_channels(kv_heads, dim)
    slice_linear(attention.q, rows=q_channels, name=prefix + names.q, masks=masks)
    slice_linear(attention.k, rows=kv_channels, name=prefix + names.k, masks=masks)
    slice_linear(attention.v, rows=kv_channels, name=prefix + names.v, masks=masks)
    slice_linear(attention.o, cols=q_channels, name=prefix + names.o, masks=masks)
    module = attention.module
    module.num_key_value_groups = len(query_heads) // len(kv_heads)
    counts = {"num_heads": len(query_heads), "num_key_value_heads": len(kv_heads)}
    for attribute, value in counts.items():
        if isinstance(getattr(module, attribute, None), int):
            setattr(module, attribute, value)


def add_to_bias(module: nn.Module, delta: torch.Tensor) -> None:
    module.bias.data += delta.to(module.bias.dtype)


def drop_blocks(
    model: nn.Module, layout: ModelLayout, drop: list[int], masks: ModelMasks | None
) -> ModelLayout:
    """Remove whole blocks; renumber what counts layers (layer_idx for the KV cache,
    layer_types) and re-key the masks of the blocks that move up."""
    config = model.config
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise LLMPruneError(
            "structured: this GPT-2 scales attention by 1/layer index, so dropping blocks "
            "would change the blocks that stay"
        )
    kept = [i for i in range(layout.num_blocks) if i not in set(drop)]
    if not kept:
        raise LLMPruneError("structured: dropping every block leaves no model")
    parent_name, _, attribute = layout.blocks_path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    blocks = nn.ModuleList([layout.blocks[i] for i in kept])
    setattr(parent, attribute, blocks)
    for new, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    if masks is not None:
        rekey_masks(masks, layout.blocks_path, kept)
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in kept]
    if isinstance(getattr(config, "max_window_layers", None), int):
        config.max_window_layers = sum(1 for i in kept if i < config.max_window_layers)
    return ModelLayout(blocks_path=layout.blocks_path, blocks=blocks)


def rekey_masks(masks: ModelMasks, blocks_path: str, kept: list[int]) -> None:
    """Masks of dropped blocks go; those of kept blocks take their block's new index."""
    new_index = {old: new for new, old in enumerate(kept)}
    prefix = blocks_path + "."
    moved = {}
    for name in list(masks):
        if not name.startswith(prefix):
            continue
        index, _, rest = name[len(prefix) :].partition(".")
        mask = masks[name]
        del masks[name]
        if int(index) in new_index:
            moved[f"{prefix}{new_index[int(index)]}.{rest}"] = mask
    for name, mask in moved.items():
        masks[name] = mask


def set_config_widths(config, ffn_key: str | None, ffn_width: int | None, heads=None) -> None:
    """Write the new widths into the config (head_dim explicitly: heads no longer divide
    hidden_size)."""
    if ffn_key is not None and ffn_width is not None:
        setattr(config, ffn_key, ffn_width)
    if heads is not None:
        query, kv, head_dim = heads
        config.num_attention_heads = query
        config.num_key_value_heads = kv
        config.head_dim = head_dim
