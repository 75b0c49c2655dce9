"""The structured prune driver: score blocks, heads and FFN channels on calibration
windows, remove the weakest physically, and describe what was kept in a manifest.

Blocks are scored first, on the dense model, and dropped. Widths are then cut block by
block with the sequential driver (one block on the device at a time; each block is
scored on the outputs of the already-pruned blocks before it), except for Taylor scores,
which need one backward pass through the whole model. Every block keeps the same number
of heads and channels (which ones may differ), so the result is a plain transformers
model of a smaller config.
"""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmprune.data import configured_sample
from llmprune.errors import LLMPruneError
from llmprune.models.layer_shapes import has_layer_shapes, record_layer_shapes
from llmprune.models.layout import ModelLayout, find_layout, weight_matrix
from llmprune.models.loading import max_context
from llmprune.models.units import Attention, check_unwrapped, find_attention, find_ffn
from llmprune.pruning.masks import ModelMasks
from llmprune.pruning.sequential import collect_statistics, walk_blocks
from llmprune.pruning.statistics import ChannelMoments
from llmprune.structured import scores as S
from llmprune.structured.config import StructuredConfig
from llmprune.structured.surgery import (
    add_to_bias,
    drop_blocks,
    keep_ffn,
    keep_heads,
    set_config_widths,
)


@dataclass(frozen=True)
class WidthPlan:
    """How many units every block keeps, decided and checked before any work."""

    ffn_width: int | None = None  # FFN channels before
    ffn_keep: int | None = None
    heads: int | None = None  # query heads before
    kv_heads: int | None = None
    group_size: int | None = None
    head_dim: int | None = None
    keep_groups: int | None = None  # kv-group mode: key-value groups kept
    keep_per_group: int | None = None  # query mode: query heads kept in every group

    @property
    def kept_heads(self) -> tuple[int, int] | None:
        """(query heads, key-value heads) after the prune."""
        if self.heads is None:
            return None
        if self.keep_groups is not None:
            return self.keep_groups * self.group_size, self.keep_groups
        return self.keep_per_group * self.kv_heads, self.kv_heads


@dataclass
class StructuredResult:
    manifest: dict
    masks: ModelMasks = field(default_factory=ModelMasks)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """The manifest without per-unit lists: what a step record and a table need."""
        return {k: v for k, v in self.manifest.items() if k not in ("layers", "block_scores")}


def nearest(value: float) -> int:
    return int(math.floor(value + 0.5))


def plan_widths(model: nn.Module, layout: ModelLayout, config: StructuredConfig) -> WidthPlan:
    """Check the removal fits the model and say what every block keeps."""
    removal, model_config = config.removal, model.config
    if removal.blocks >= layout.num_blocks:
        raise LLMPruneError(
            f"structured: blocks={removal.blocks} would drop every block "
            f"(the model has {layout.num_blocks})"
        )
    plan: dict = {}
    if removal.ffn:
        widths = {find_ffn(block, model_config.model_type).width for block in layout.blocks}
        if len(widths) != 1 and config.widths != "global":
            raise LLMPruneError(
                "structured: blocks differ in FFN width; cut them with --widths global"
            )
        width = min(widths)
        keep = S.kept_width(width, removal.ffn, config.multiple)
        if keep >= width:
            raise LLMPruneError(
                f"structured: ffn={removal.ffn:g} removes no channel of {width} once widths are "
                f"rounded to multiples of {config.multiple}; lower --multiple or raise ffn"
            )
        plan.update(ffn_width=width, ffn_keep=keep)
    if removal.heads:
        attentions = [find_attention(block, model_config) for block in layout.blocks]
        counts = {(a.num_heads, a.num_kv_heads) for a in attentions}
        if len(counts) != 1:
            raise LLMPruneError(
                "structured: blocks differ in head counts (a --widths global prune); "
                "their heads cannot be cut again"
            )
        plan.update(plan_heads(attentions[0], removal.heads, config))
    result = WidthPlan(**plan)
    if result.kept_heads is not None and config.widths == "uniform":  # global: config stays
        check_head_counts(model_config, *result.kept_heads, result.head_dim, removal.heads)
    return result


def head_counts_refused(model_config, query: int, kv: int, head_dim: int) -> str | None:
    """Why the config would refuse these head counts (LLaMA and Gemma2 insist, at save and
    at load, that hidden_size is a multiple of the head count), or None."""
    trial = copy.deepcopy(model_config)
    set_config_widths(trial, None, None, (query, kv, head_dim))
    validate = getattr(trial, "validate", None)
    try:
        if validate is not None:
            validate()
    except Exception as exc:  # each config raises its own kind
        return str(exc).strip() or type(exc).__name__
    return None


def check_head_counts(model_config, query: int, kv: int, head_dim: int, fraction: float) -> None:
    """Refuse, before any work, head counts the saved config could not hold."""
    reason = head_counts_refused(model_config, query, kv, head_dim)
    if reason is not None:
        raise LLMPruneError(
            f"structured: heads={fraction:g} leaves {query} heads, which a "
            f"{model_config.model_type} config refuses ({reason}); choose a fraction whose "
            "head count divides hidden_size"
        )


def plan_heads(attention: Attention, fraction: float, config: StructuredConfig) -> dict:
    heads, kv, group = attention.num_heads, attention.num_kv_heads, attention.group_size
    plan = dict(heads=heads, kv_heads=kv, group_size=group, head_dim=attention.head_dim)
    if config.head_unit == "kv-group" or group == 1:
        keep, units, what = nearest(kv * (1 - fraction)), kv, "key-value groups"
        plan["keep_groups"] = keep
    else:
        keep, units, what = nearest(group * (1 - fraction)), group, "query heads per group"
        plan["keep_per_group"] = keep
    if keep <= 0:
        raise LLMPruneError(
            f"structured: heads={fraction:g} would remove every head ({units} {what})"
        )
    if keep >= units:
        raise LLMPruneError(
            f"structured: heads={fraction:g} removes no head: the model has {units} {what}, "
            f"so heads moves in steps of 1/{units}"
            + ("; try --head-unit query" if what == "key-value groups" and group > 1 else "")
        )
    return plan


def block_parameters(layout: ModelLayout) -> int:
    return sum(p.numel() for p in layout.blocks.parameters())


def model_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def structured_prune(
    model: nn.Module,
    tokenizer=None,
    config: StructuredConfig | None = None,
    calibration: torch.Tensor | None = None,
    masks: ModelMasks | None = None,
    progress: bool = True,
    **options,
) -> StructuredResult:
    """Remove blocks, heads and FFN channels of `model` in place.

    `config` (or keyword options: remove="ffn=0.3,heads=0.25", score="flap", ...) says
    what and how; `calibration` ([n, seqlen] token ids) overrides sampling from
    `config.calib`. `masks` of an earlier unstructured prune are sliced along (in
    place), so the weights that stay pruned stay pruned.
    """
    from llmprune.structured.config import make_structured_config

    config = config or make_structured_config(**options)
    start = time.perf_counter()
    check_unwrapped(model)
    layout = find_layout(model)
    plan = plan_widths(model, layout, config)
    windows = calibration
    if windows is None:
        windows = configured_sample(tokenizer, config, max_context(model.config))
    masks = masks if masks is not None else ModelMasks()
    before = {"model": model_parameters(model), "blocks": block_parameters(layout)}
    manifest: dict = {
        "removal": asdict(config.removal) | {"spec": str(config.removal)},
        "score": config.score,
        "calibration": {
            "data": config.calib,
            "windows": int(windows.shape[0]),
            "seqlen": int(windows.shape[1]),
            "seed": config.seed,
        },
    }
    if config.removal.blocks:
        layout = remove_blocks(model, layout, windows, config, masks, manifest, progress)
    if plan.ffn_keep is not None or plan.heads is not None:
        cut_widths(model, layout, windows, config, plan, masks, manifest, progress)
    after = {"model": model_parameters(model), "blocks": block_parameters(layout)}
    manifest["parameters"] = {"before": before, "after": after}
    manifest["achieved"] = achieved(plan, config)
    if config.widths == "global":
        manifest["achieved"].update(achieved_per_layer(manifest.get("layers", []), plan))
    if config.widths == "global" or has_layer_shapes(model.config):
        record_layer_shapes(model, *per_layer_shapes(model, layout))
    return StructuredResult(manifest=manifest, masks=masks, seconds=time.perf_counter() - start)


def achieved(plan: WidthPlan, config: StructuredConfig) -> dict:
    """The fractions really removed, after rounding to whole units and multiples."""
    result: dict = {"blocks": config.removal.blocks}
    if plan.ffn_keep is not None:
        result["ffn"] = 1 - plan.ffn_keep / plan.ffn_width
        result["intermediate_size"] = [plan.ffn_width, plan.ffn_keep]
    if plan.kept_heads is not None:
        query, kv = plan.kept_heads
        result["heads"] = 1 - query / plan.heads
        result["num_attention_heads"] = [plan.heads, query]
        result["num_key_value_heads"] = [plan.kv_heads, kv]
    return result


def achieved_per_layer(layers: list[dict], plan: WidthPlan) -> dict:
    """What global widths really removed, and every block's widths."""
    result: dict = {}
    ffn = [entry["ffn"] for entry in layers if "ffn" in entry]
    if ffn:
        kept = [len(e["kept"]) for e in ffn]
        result["ffn"] = 1 - sum(kept) / sum(len(e["scores"]) for e in ffn)
        result["intermediate_size"] = kept
    heads = [entry["heads"] for entry in layers if "heads" in entry]
    if heads:
        kept = [len(e["kept"]) for e in heads]
        result["heads"] = 1 - sum(kept) / (plan.heads * len(heads))
        result["num_attention_heads"] = kept
        result["num_key_value_heads"] = [len(e["kv_kept"]) for e in heads]
    return result


def per_layer_shapes(model: nn.Module, layout: ModelLayout) -> tuple[dict, dict]:
    """The block linears (out, in) and attention attributes that differ from what the
    config alone builds: what a checkpoint must record to be rebuilt."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        reference = AutoModelForCausalLM.from_config(model.config)
    built = dict(reference.named_modules())
    shapes, attributes = {}, {}
    for name, module in model.named_modules():
        if not name.startswith(layout.blocks_path + ".") or name not in built:
            continue
        if isinstance(module, (nn.Linear, Conv1D)):
            shape = tuple(weight_matrix(module).shape)
            if shape != tuple(weight_matrix(built[name]).shape):
                shapes[name] = shape
        for attribute in ("num_key_value_groups", "num_heads", "num_key_value_heads"):
            value = getattr(module, attribute, None)
            if isinstance(value, int) and value != getattr(built[name], attribute, None):
                attributes.setdefault(name, {})[attribute] = value
    return shapes, attributes


def remove_blocks(model, layout, windows, config, masks, manifest, progress) -> ModelLayout:
    """Score blocks on the dense model and drop the weakest (or the weakest run)."""
    count = config.removal.blocks
    consecutive = config.block_score == "angular"
    span = count if consecutive else 1
    history: deque[list[torch.Tensor]] = deque(maxlen=span + 1)
    block_scores: dict[int, float] = {}

    def record(position: int) -> None:
        """history[-1] holds the inputs of block `position` (outputs of the one before)."""
        if len(history) == span + 1:
            measure = S.angular_distance if consecutive else S.block_influence
            block_scores[position - span] = measure(history[0], history[-1])

    def visit(index: int, _block: nn.Module, inputs) -> None:
        history.append([item.hidden for item in inputs])
        record(index)

    final = walk_blocks(
        model,
        layout,
        windows,
        visit,
        config.batch_size,
        config.device,
        f"scoring blocks ({config.block_score})",
        progress,
    )
    history.append([item.hidden for item in final])
    record(layout.num_blocks)
    history.clear()
    ordered = [block_scores[i] for i in sorted(block_scores)]
    drop = S.blocks_to_drop(ordered, count, consecutive)
    manifest["block_score"] = config.block_score
    manifest["block_scores"] = ordered
    manifest["dropped_blocks"] = drop
    return drop_blocks(model, layout, drop, masks)


def cut_widths(model, layout, windows, config, plan, masks, manifest, progress) -> None:
    """Remove heads and FFN channels: block by block (uniform), or, for global widths,
    after every block has been scored on the dense model."""
    device = torch.device(config.device)
    importance = None
    if config.score == "taylor":
        importance = taylor_importance(model, layout, windows, config)
    layers: list[dict] = []
    scored: list[dict] = []  # global widths: every block's scores before any cut

    def visit(index: int, block: nn.Module, inputs) -> None:
        prefix = f"{layout.blocks_path}.{index}."
        ffn = find_ffn(block, model.config.model_type) if plan.ffn_keep is not None else None
        attention = find_attention(block, model.config) if plan.heads is not None else None
        stats = {}
        if importance is None:
            outputs = {}
            if ffn is not None:
                outputs["ffn"] = ffn.output
            if attention is not None:
                outputs["heads"] = attention.o
            stats = collect_statistics(
                block,
                index,
                outputs,
                lambda n, m: ChannelMoments(weight_matrix(m).shape[1], prefix + n, device),
                inputs,
                device,
            )
        item: dict = {"stats": stats}
        if ffn is not None:
            item["ffn"] = ffn_scores(ffn, config, stats.get("ffn"), importance, prefix)
        if attention is not None:
            item["heads"] = head_scores(
                attention, plan, config, stats.get("heads"), importance, prefix
            )
        if config.widths == "global":
            scored.append(item)
            return
        heads_keep = None
        if attention is not None:
            heads_keep = plan.keep_groups if item["heads"][1] is not None else plan.keep_per_group
        layers.append(
            cut_block(model, layout, index, plan, config, item, plan.ffn_keep, heads_keep, masks)
        )

    walk_blocks(
        model,
        layout,
        None if importance is not None else windows,
        visit,
        config.batch_size,
        config.device,
        f"{'scoring' if config.widths == 'global' else 'structured'} {config.label}",
        progress,
    )
    if config.widths == "global":
        ffn_keeps, heads_keeps = global_counts(scored, plan, config)
        for index, item in enumerate(scored):
            layers.append(
                cut_block(
                    model,
                    layout,
                    index,
                    plan,
                    config,
                    item,
                    ffn_keeps[index],
                    heads_keeps[index],
                    masks,
                )
            )
        manifest["widths"] = "global"
    else:
        heads = plan.kept_heads
        set_config_widths(
            model.config,
            find_ffn(layout.blocks[0], model.config.model_type).names.config_key
            if plan.ffn_keep is not None
            else None,
            plan.ffn_keep,
            (heads[0], heads[1], plan.head_dim) if heads is not None else None,
        )
    manifest["layers"] = layers
    if config.score == "flap":  # FLAP's compensation needs a bias to fold into
        block = layout.blocks[0]
        outputs = {}
        if plan.ffn_keep is not None:
            outputs["ffn"] = find_ffn(block, model.config.model_type).output
        if plan.heads is not None:
            outputs["heads"] = find_attention(block, model.config).o
        manifest["bias_compensation"] = {
            unit: getattr(module, "bias", None) is not None for unit, module in outputs.items()
        }


def global_counts(scored: list[dict], plan: WidthPlan, config: StructuredConfig):
    """Per block: FFN channels and heads (key-value groups, or query heads per group) kept
    when the removal is ranked model-wide."""
    blocks, removal = len(scored), config.removal
    ffn_keeps: list[int | None] = [None] * blocks
    heads_keeps: list[int | None] = [None] * blocks
    if plan.ffn_keep is not None:
        multiple = config.multiple
        ffn_keeps = S.global_keep_counts(
            [i["ffn"] for i in scored], removal.ffn, multiple, multiple
        )
    if plan.heads is not None:
        if scored[0]["heads"][1] is not None:  # whole key-value groups
            heads_keeps = S.global_keep_counts([i["heads"][1] for i in scored], removal.heads)
        else:  # query heads, as many in every group of a block
            kv = plan.kv_heads
            counts = S.global_keep_counts([i["heads"][0] for i in scored], removal.heads, kv, kv)
            heads_keeps = [count // kv for count in counts]
    return ffn_keeps, heads_keeps


def cut_block(model, layout, index, plan, config, item, ffn_keep, heads_keep, masks) -> dict:
    """Cut one block to `ffn_keep` channels and `heads_keep` head units by its scores."""
    block = layout.blocks[index]
    prefix = f"{layout.blocks_path}.{index}."
    stats = item["stats"]
    entry: dict = {"block": index}
    if ffn_keep is not None:
        ffn = find_ffn(block, model.config.model_type)
        entry["ffn"] = cut_ffn(ffn, ffn_keep, config, stats.get("ffn"), item["ffn"], prefix, masks)
    if heads_keep is not None:
        attention = find_attention(block, model.config)
        entry["heads"] = cut_heads(
            attention, plan, heads_keep, config, stats.get("heads"), item["heads"], prefix, masks
        )
    return entry


def channel_scores(score, weight, stats, importance, name) -> torch.Tensor:
    """Per input channel of an output projection (o_proj, down_proj)."""
    if score == "wanda-sp":
        return S.wanda_sp(weight, stats.norms.to(weight.device))
    if score == "flap":
        return S.fluctuation(weight, stats.variance.to(weight.device))
    return importance[name].cols


def compensate(module: nn.Module, stats, kept: list[int], channels: int) -> None:
    """FLAP: fold the removed channels' mean contribution into the output bias."""
    if stats is None or getattr(module, "bias", None) is None:
        return
    kept_set = set(kept)
    removed = [c for c in range(channels) if c not in kept_set]
    add_to_bias(module, S.bias_compensation(weight_matrix(module), stats.mean, removed))


def ffn_scores(ffn, config, stats, importance, prefix) -> torch.Tensor:
    """One score per FFN channel."""
    names = ffn.names
    scores = channel_scores(
        config.score, weight_matrix(ffn.output), stats, importance, prefix + names.output
    )
    if importance is not None:  # Taylor: the rows of the input projections count too
        for name in names.inputs:
            scores = scores + importance[prefix + name].rows
    return scores


def cut_ffn(ffn, keep: int, config, stats, scores, prefix, masks) -> dict:
    """Keep the `keep` best FFN channels."""
    kept = S.top_units(scores, keep)
    if config.score == "flap":
        compensate(ffn.output, stats, kept, ffn.width)
    keep_ffn(ffn, kept, prefix, masks)
    return {"kept": kept, "scores": [round(float(s), 6) for s in scores]}


def head_scores(attention, plan, config, stats, importance, prefix):
    """Scores of every query head, and of every key-value group (None in query mode)."""
    names, dim = attention.names, attention.head_dim
    channel = channel_scores(
        config.score, weight_matrix(attention.o), stats, importance, prefix + names.o
    )
    if importance is not None:
        channel = channel + importance[prefix + names.q].rows
    heads = S.grouped(channel, dim)
    if config.head_unit != "kv-group" and plan.group_size != 1:
        return heads, None
    groups = S.grouped(heads, plan.group_size)
    if importance is not None:  # a key-value group also takes its k and v rows along
        kv_rows = importance[prefix + names.k].rows + importance[prefix + names.v].rows
        groups = groups + S.grouped(kv_rows, dim)
    return heads, groups


def cut_heads(attention, plan, keep: int, config, stats, scores, prefix, masks) -> dict:
    """Keep `keep` key-value groups (kv-group mode) or `keep` query heads in every group."""
    heads, groups = scores
    dim, group = attention.head_dim, plan.group_size
    if groups is not None:
        kv_heads = S.top_units(groups, keep)
        query_heads = [g * group + j for g in kv_heads for j in range(group)]
    else:
        kv_heads = list(range(plan.kv_heads))
        query_heads = [
            g * group + j
            for g in kv_heads
            for j in S.top_units(heads[g * group : (g + 1) * group], keep)
        ]
    if config.score == "flap":
        kept_channels = [h * dim + c for h in query_heads for c in range(dim)]
        compensate(attention.o, stats, kept_channels, plan.heads * dim)
    keep_heads(attention, query_heads, kv_heads, prefix, masks)
    return {
        "kept": query_heads,
        "kv_kept": kv_heads,
        "scores": [round(float(s), 6) for s in heads],
    }


@dataclass(frozen=True)
class TaylorSums:
    """A layer's |W ⊙ ∂L/∂W| summed over each row and each column: all a unit needs."""

    rows: torch.Tensor
    cols: torch.Tensor


def taylor_importance(
    model: nn.Module, layout: ModelLayout, windows: torch.Tensor, config: StructuredConfig
) -> dict[str, TaylorSums]:
    """|W ⊙ ∂L/∂W| of every block linear, the language-model loss summed over the
    calibration windows (one backward pass per batch, whole model on the device)."""
    if torch.is_inference_mode_enabled():
        raise LLMPruneError("structured: taylor scores need gradients; not in inference mode")
    linears = layout.linears()
    for name, module in linears.items():
        if not module.weight.dtype.is_floating_point:
            raise LLMPruneError(
                f"structured: taylor scores need gradients, and {name} holds "
                f"{module.weight.dtype} weights; use wanda-sp or flap"
            )
    device = torch.device(config.device)
    home = next(model.parameters()).device
    trainable = {p: p.requires_grad for p in model.parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
        param.grad = None
    for module in linears.values():
        module.weight.requires_grad_(True)
    model.to(device)
    try:
        with torch.enable_grad():
            for batch in torch.split(windows, config.batch_size):
                batch = batch.to(device)
                loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (loss * batch.shape[0] / windows.shape[0]).backward()
        importance = {}
        for name, module in linears.items():
            grad = module.weight.grad
            if grad is None:
                raise LLMPruneError(f"structured: no gradient reached {name}")
            grad = grad.t() if isinstance(module, Conv1D) else grad
            element = S.taylor(weight_matrix(module), grad)
            importance[name] = TaylorSums(rows=element.sum(dim=1), cols=element.sum(dim=0))
            module.weight.grad = None  # one layer's gradient at a time, not the model's
    finally:
        for param, flag in trainable.items():
            param.grad = None
            param.requires_grad_(flag)
        model.to(home)
    return importance
