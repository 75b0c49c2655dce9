"""Learned structured masks: hard-concrete gates on FFN channels, attention heads and
blocks, trained with the model under a Lagrangian size constraint, then turned into a
structured prune (CoFi, Xia et al. 2022; Sheared-LLaMA, Xia et al. 2024).

A gate z ∈ [0, 1] per unit is a hard-concrete variable (Louizos et al. 2018, β = 2/3,
γ = −0.1, ζ = 1.1): sampled while training, deterministic at the end. It scales the
unit's output (an FFN channel's input to down_proj, a head's input to o_proj, a block's
residual update). The expected share of block parameters removed, ŝ, is pushed toward a
target t that warms up from 0 by λ1(ŝ − t) + λ2(ŝ − t)², whose λs rise by gradient
ascent. At the end every block keeps the same number of units — the expected number the
gates keep, Σ P(z > 0), averaged over blocks (CoFi's rule, so the cut matches ŝ), FFN
widths rounded to a multiple — the strongest by their gate logits; kept
units' gate values are folded into the output projections, and the model is cut with
the same surgery as the one-shot structured prune.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from llmprune.errors import LLMPruneError, validated
from llmprune.finetune.config import FinetuneConfig
from llmprune.finetune.teacher import TeacherSource
from llmprune.finetune.trainer import ADDED_PREFIX, MaskKeeper, finetune
from llmprune.models.layer_shapes import has_layer_shapes
from llmprune.models.layout import ModelLayout, find_layout, weight_matrix
from llmprune.models.units import find_attention, find_ffn
from llmprune.pruning.masks import ModelMasks
from llmprune.structured.prune import head_counts_refused
from llmprune.structured.scores import kept_width, top_units
from llmprune.structured.surgery import drop_blocks, keep_ffn, keep_heads, set_config_widths

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
GATES = ADDED_PREFIX + "gates"  # the submodule the gates live in while training


def sample_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """z = clamp(sigmoid((log u − log(1 − u) + log α)/β)·(ζ − γ) + γ, 0, 1)."""
    u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def keep_probability(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) = sigmoid(log α − β·log(−γ/ζ)): the expected L0 norm per gate."""
    return torch.sigmoid(log_alpha - BETA * math.log(-GAMMA / ZETA))


def lagrangian(expected: torch.Tensor, target: float, l1: float, l2: float) -> torch.Tensor:
    gap = expected - target
    return l1 * gap + l2 * gap * gap


class LearnedConfig(FinetuneConfig):
    """Training with gates on structured units toward a target share of block parameters."""

    shardable = False

    sparsity: float = Field(gt=0, lt=1, description="Target share of block parameters removed.")
    units: list[str] = Field(
        default_factory=lambda: ["ffn", "heads"], description="ffn | heads | blocks"
    )
    target_warmup: int | None = Field(
        default=None, ge=0, description="Steps over which the target rises (default: half)."
    )
    gate_lr: float = Field(default=0.1, gt=0, description="Learning rate of the gate logits.")
    lagrangian_lr: float = Field(default=1.0, gt=0, description="Ascent step of the λs.")
    init_keep: float = Field(default=0.9, gt=0, lt=1, description="Initial P(keep) of gates.")
    multiple: int = Field(default=32, ge=1, description="Round kept FFN widths to this.")

    @field_validator("units")
    @classmethod
    def known_units(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - {"ffn", "heads", "blocks"})
        if unknown or not value:
            raise ValueError(f"units: use ffn, heads, blocks (got {value})")
        return value

    @model_validator(mode="after")
    def no_lora(self) -> LearnedConfig:
        if self.uses_lora:
            raise ValueError("learned masks train the model itself: no LoRA parts")
        return self

    @property
    def warmup_target(self) -> int:
        return self.target_warmup if self.target_warmup is not None else self.steps // 2

    @property
    def label(self) -> str:
        return f"learned {'+'.join(self.units)} → {self.sparsity:g} of block parameters"


def make_learned_config(**values) -> LearnedConfig:
    return validated(LearnedConfig, values)


class Gates(nn.Module):
    """The gate logits of every unit, with what each unit's parameters cost."""

    def __init__(self, model: nn.Module, units: list[str], init_keep: float):
        super().__init__()
        self.layout = find_layout(model)
        config = model.config
        model_type = config.model_type
        blocks = self.layout.blocks
        # log α such that P(z > 0) = init_keep
        start = math.log(init_keep / (1 - init_keep)) + BETA * math.log(-GAMMA / ZETA)
        self.units = units
        self.ffn = nn.ParameterList()
        self.heads = nn.ParameterList()
        self.block = nn.Parameter(torch.full((len(blocks),), start)) if "blocks" in units else None
        self.ffn_cost = self.head_cost = 0
        self.block_cost = [sum(p.numel() for p in b.parameters()) for b in blocks]
        self.total = sum(self.block_cost)
        for block in blocks:
            if "ffn" in units:
                ffn = find_ffn(block, model_type)
                self.ffn.append(nn.Parameter(torch.full((ffn.width,), start)))
                per_channel = sum(weight_matrix(m).shape[1] for m in ffn.inputs)
                self.ffn_cost = per_channel + weight_matrix(ffn.output).shape[0]
            if "heads" in units:
                attention = find_attention(block, config)
                self.heads.append(nn.Parameter(torch.full((attention.num_heads,), start)))
                dim, hidden = attention.head_dim, weight_matrix(attention.q).shape[1]
                # q rows and o columns; with one query head per key-value head (no
                # grouping) a removed head takes its k and v rows too
                per_head = hidden + weight_matrix(attention.o).shape[0]
                if attention.group_size == 1:
                    per_head += 2 * hidden
                self.head_cost = dim * per_head
        self.handles: list = []

    def gate(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return sample_gates(log_alpha) if self.training else deterministic_gates(log_alpha)

    def attach(self, model: nn.Module) -> None:
        """Hooks that scale each unit's output by its gate."""
        config, model_type = model.config, model.config.model_type
        for index, block in enumerate(self.layout.blocks):
            if "ffn" in self.units:
                output = find_ffn(block, model_type).output
                self.handles.append(
                    output.register_forward_pre_hook(self.channel_hook(self.ffn, index, 1))
                )
            if "heads" in self.units:
                attention = find_attention(block, config)
                hook = self.channel_hook(self.heads, index, attention.head_dim)
                self.handles.append(attention.o.register_forward_pre_hook(hook))
            if self.block is not None:
                self.handles.append(
                    block.register_forward_hook(self.block_hook(index), with_kwargs=True)
                )

    def channel_hook(self, logits: nn.ParameterList, index: int, size: int):
        def hook(_module, args):
            x = args[0]
            z = self.gate(logits[index]).to(x.dtype).repeat_interleave(size)
            return (x * z,) + tuple(args[1:])

        return hook

    def block_hook(self, index: int):
        def hook(_module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            z = self.gate(self.block[index : index + 1]).to(x.dtype)
            hidden = output[0] if isinstance(output, tuple) else output
            gated = x + z * (hidden - x)
            return (gated,) + tuple(output[1:]) if isinstance(output, tuple) else gated

        return hook

    def detach_hooks(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def expected_sparsity(self) -> torch.Tensor:
        """ŝ: the expected share of block parameters the gates remove."""
        remaining = []
        for index, cost in enumerate(self.block_cost):
            kept = torch.tensor(float(cost))
            if "ffn" in self.units:
                width = self.ffn[index].numel()
                kept = kept - self.ffn_cost * (width - keep_probability(self.ffn[index]).sum())
            if "heads" in self.units:
                heads = self.heads[index].numel()
                kept = kept - self.head_cost * (heads - keep_probability(self.heads[index]).sum())
            if self.block is not None:
                kept = kept * keep_probability(self.block[index])
            remaining.append(kept)
        return 1.0 - torch.stack(remaining).sum() / self.total


class GateTrainer(MaskKeeper):
    """The fine-tune's callback: keeps any earlier masks, adds the Lagrangian to the loss,
    raises the λs by gradient ascent and warms the target up."""

    def __init__(self, config: LearnedConfig, gates: Gates, masks: ModelMasks, model):
        super().__init__(masks, model)
        self.config, self.gates = config, gates
        self.lambdas = [0.0, 0.0]
        self.target = 0.0
        self.trace: list[dict] = []

    def on_step_begin(self, args, state, control, **kwargs):
        warmup = self.config.warmup_target
        ramp = 1.0 if warmup == 0 else min(1.0, state.global_step / warmup)
        self.target = self.config.sparsity * ramp

    def penalty(self) -> torch.Tensor:
        return lagrangian(self.gates.expected_sparsity(), self.target, *self.lambdas)

    def on_step_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            gap = float(self.gates.expected_sparsity()) - self.target
        step = self.config.lagrangian_lr
        self.lambdas = [self.lambdas[0] + step * gap, self.lambdas[1] + step * gap * gap]
        self.trace.append(
            {"step": state.global_step, "target": self.target, "expected": gap + self.target}
        )


def learn_structure(
    model: nn.Module,
    tokenizer,
    config: LearnedConfig,
    masks: ModelMasks | None = None,
    windows: torch.Tensor | None = None,
    teacher: TeacherSource = None,
) -> tuple[nn.Module, ModelMasks, dict]:
    """Train gates with the model, then cut it to the structure they learned; returns the
    smaller model, its masks (earlier masks sliced along) and the training summary."""
    if has_layer_shapes(model.config):
        raise LLMPruneError(
            "learned: the model's blocks differ in width (a --widths global prune); "
            "learned gates need blocks of one shape"
        )
    masks = masks.copy() if masks is not None else ModelMasks()
    gates = Gates(model, config.units, config.init_keep)
    model.add_module(GATES, gates)
    gates.attach(model)
    made: list[GateTrainer] = []

    def keeper(keep_masks: ModelMasks, train_model: nn.Module) -> GateTrainer:
        made.append(GateTrainer(config, gates, keep_masks, train_model))
        return made[0]

    try:
        model, summary = finetune(
            model, tokenizer, config, masks, windows, keeper=keeper, teacher=teacher
        )
    finally:
        gates.detach_hooks()
        if hasattr(model, GATES):
            delattr(model, GATES)
    gates.eval()
    summary["gates"] = made[0].trace if made else []
    summary["structure"] = cut_to_gates(model, gates, config, masks)
    return model, masks, summary


@torch.no_grad()
def cut_to_gates(model, gates: Gates, config: LearnedConfig, masks) -> dict:
    """Fold the deterministic gates into the output projections and cut every block to
    the same widths (the mean of what the gates keep)."""
    layout: ModelLayout = gates.layout
    model_config = model.config
    result: dict = {"blocks": layout.num_blocks}
    layers = []
    ffn_keep = heads_keep = kept_heads = head_dim = None
    if "ffn" in config.units:
        kept = [float(keep_probability(g).sum()) for g in gates.ffn]
        width = gates.ffn[0].numel()
        ffn_keep = kept_width(width, 1 - sum(kept) / (len(kept) * width), config.multiple)
    if "heads" in config.units:
        attention = find_attention(layout.blocks[0], model_config)
        group, kv = attention.group_size, attention.num_kv_heads
        kept = [float(keep_probability(g).sum()) for g in gates.heads]
        # grouped: the same number of query heads in every group; ungrouped: whole heads
        units, groups = (kv, 1) if group == 1 else (group, kv)
        wanted = sum(kept) / (len(kept) * groups)
        head_dim = attention.head_dim

        def counts(keep: int) -> tuple[int, int]:
            return (keep, keep) if group == 1 else (keep * kv, kv)

        # the nearest count the saved config accepts (LLaMA: hidden_size % heads == 0)
        allowed = [
            k
            for k in range(1, units + 1)
            if head_counts_refused(model_config, *counts(k), head_dim) is None
        ]
        heads_keep = min(allowed, key=lambda k: (abs(k - wanted), -k))
        kept_heads = counts(heads_keep)
    for index, block in enumerate(layout.blocks):
        prefix = f"{layout.blocks_path}.{index}."
        entry: dict = {"block": index}
        if ffn_keep is not None:
            ffn = find_ffn(block, model_config.model_type)
            z = deterministic_gates(gates.ffn[index])
            chosen = top_units(gates.ffn[index].detach(), ffn_keep)
            weight_matrix(ffn.output).mul_(z.to(weight_matrix(ffn.output).dtype)[None, :])
            keep_ffn(ffn, chosen, prefix, masks)
            entry["ffn"] = chosen
        if heads_keep is not None:
            attention = find_attention(block, model_config)
            group, dim = attention.group_size, attention.head_dim
            logits = gates.heads[index].detach()
            z = deterministic_gates(logits).repeat_interleave(dim)
            weight_matrix(attention.o).mul_(z.to(weight_matrix(attention.o).dtype)[None, :])
            if group == 1:
                query = kv_kept = top_units(logits, heads_keep)
            else:
                kv_kept = list(range(attention.num_kv_heads))
                query = [
                    g * group + j
                    for g in kv_kept
                    for j in top_units(logits[g * group : (g + 1) * group], heads_keep)
                ]
            keep_heads(attention, query, kv_kept, prefix, masks)
            entry["heads"] = query
        layers.append(entry)
    if ffn_keep is not None or heads_keep is not None:
        heads = None
        if heads_keep is not None:
            heads = (*kept_heads, head_dim)
        key = (
            find_ffn(layout.blocks[0], model_config.model_type).names.config_key
            if ffn_keep
            else None
        )
        set_config_widths(model_config, key, ffn_keep, heads)
    if gates.block is not None:
        drop = [i for i, p in enumerate(keep_probability(gates.block)) if float(p) < 0.5]
        if len(drop) < layout.num_blocks:
            drop_blocks(model, layout, drop, masks)
        result["dropped_blocks"] = drop
    result.update(ffn_width=ffn_keep, query_heads_per_group=heads_keep, layers=layers)
    return result
