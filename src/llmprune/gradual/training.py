"""Pruning while training: a mask keeper that also grows the masks on a schedule.

`GradualPruner` is the fine-tuning run's mask keeper (gradients of pruned weights zeroed
as computed, weights re-masked after every optimizer step) that, at the schedule's
re-prune steps, recomputes each target layer's mask from its current scores. Masks only
grow: a weight pruned once stays pruned, so the masks of successive re-prunes are nested.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from llmprune.finetune.teacher import TeacherSource
from llmprune.finetune.trainer import MaskKeeper, finetune
from llmprune.gradual import scores as S
from llmprune.gradual.config import GradualConfig
from llmprune.gradual.schedules import prune_steps, scheduled_sparsity
from llmprune.models.layout import find_layout, storage_mask, trained_matrix, weight_matrix
from llmprune.models.units import HEAD_FAMILIES, find_attention, find_ffn
from llmprune.pruning.allocation import select_layers
from llmprune.pruning.masks import ModelMasks
from llmprune.pruning.selection import unstructured_mask


def summed_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Scores from each process's own batches, added up, so every rank picks the same mask."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


class GradualPruner(MaskKeeper):
    """Keeps the masks through training and grows them at the re-prune steps."""

    def __init__(self, config: GradualConfig, masks: ModelMasks, model: nn.Module, names):
        super().__init__(masks, model)
        self.config = config
        self.names = list(names)
        self.at_steps = set(prune_steps(config.start_step, config.every, config.count))
        self.movement: dict[str, torch.Tensor] = {}
        self.squared: dict[str, torch.Tensor] = {}
        self.trace: list[dict] = []
        self.trade_off: list[dict] = []
        self.score_handles: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        for name in self.names:
            module = self.layers[name]
            if self.config.score == "movement":
                self.watch_movement(name, module)
            elif self.config.score == "wanda":
                self.watch_inputs(name, module)
        if 0 in self.at_steps:
            self.reprune(0)

    def watch_movement(self, name: str, module: nn.Module) -> None:
        score = torch.zeros(weight_matrix(module).shape, device=module.weight.device)
        self.movement[name] = score

        def hook(grad, module=module, score=score):
            S.movement_update(score, storage_mask(module, grad), weight_matrix(module).detach())

        self.score_handles.append(module.weight.register_hook(hook))

    def watch_inputs(self, name: str, module: nn.Module) -> None:
        columns = weight_matrix(module).shape[1]
        squared = torch.zeros(columns, dtype=torch.float64, device=module.weight.device)
        self.squared[name] = squared

        def hook(_module, args, squared=squared):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            squared.add_(x.double().pow(2).sum(dim=0))

        self.score_handles.append(module.register_forward_pre_hook(hook))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.at_steps:
            self.reprune(state.global_step)

    def penalty(self) -> torch.Tensor | float:
        """λ1·mean|w| over the target layers + λg·mean unit norm (FFN channels, heads):
        added to the training loss; their values are logged with the loss."""
        config, total = self.config, 0.0
        if config.l1 > 0:
            weights = [trained_matrix(self.layers[name]) for name in self.names]
            total = total + config.l1 * S.l1_penalty(weights)
        if config.group_lasso > 0:
            total = total + config.group_lasso * S.group_lasso_penalty(self.unit_norms())
        return total

    def unit_norms(self) -> list[torch.Tensor]:
        """The L2 norm of every FFN channel and (where heads can go) attention head."""
        config = getattr(self.model, "config", None)
        model_type = getattr(config, "model_type", "?")
        norms = []
        for block in find_layout(self.model).blocks:
            ffn = find_ffn(block, model_type)
            rows = [trained_matrix(module) for module in ffn.inputs]
            norms.append(S.unit_norms(rows, [trained_matrix(ffn.output)], 1))
            if model_type in HEAD_FAMILIES:
                att = find_attention(block, config)
                q, o = trained_matrix(att.q), trained_matrix(att.o)
                norms.append(S.unit_norms([q], [o], att.head_dim))
        return norms

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The trade-off between sparsity and loss: penalty and the share of small weights."""
        if (
            logs is None
            or "loss" not in logs
            or (self.config.l1 == 0 and self.config.group_lasso == 0)
        ):
            return
        with torch.no_grad():
            penalty = float(self.penalty())
            tau = self.config.threshold or 0.0
            small = sum(int((weight_matrix(self.layers[n]).abs() < tau).sum()) for n in self.names)
            total = sum(weight_matrix(self.layers[n]).numel() for n in self.names)
        self.trade_off.append(
            {
                "step": state.global_step,
                "loss": logs["loss"],
                "penalty": penalty,
                "below_threshold": small / total,
            }
        )

    def scores(self, name: str) -> torch.Tensor:
        weight = weight_matrix(self.layers[name]).detach()
        if self.config.score == "movement":
            return summed_over_ranks(self.movement[name].clone())
        if self.config.score == "wanda":
            return S.wanda_online(weight, summed_over_ranks(self.squared[name].clone()))
        return weight.abs().float()

    @torch.no_grad()
    def reprune(self, step: int) -> None:
        config = self.config
        target = None
        if config.threshold is None:
            target = scheduled_sparsity(
                step,
                config.schedule,
                config.start_sparsity,
                config.sparsity,
                config.start_step,
                config.every,
                config.count,
            )
        for name in self.names:
            existing = self.unpacked[name]
            if config.threshold is not None:
                weight = weight_matrix(self.layers[name])  # the same on every rank
                mask = S.threshold_mask(weight, config.threshold, existing)
            else:
                mask = unstructured_mask(self.scores(name), target, existing)
            self.tighten(name, mask)
        for squared in self.squared.values():
            squared.zero_()  # Wanda norms: the batches since the last re-prune
        kept = sum(int(self.unpacked[n].sum()) for n in self.names)
        total = sum(self.unpacked[n].numel() for n in self.names)
        self.trace.append({"step": step, "target": target, "sparsity": 1 - kept / total})

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.score_handles:
            handle.remove()
        self.score_handles = []
        super().on_train_end(args, state, control, **kwargs)


def gradual_prune(
    model: nn.Module,
    tokenizer,
    config: GradualConfig,
    masks: ModelMasks | None = None,
    windows: torch.Tensor | None = None,
    teacher: TeacherSource = None,
) -> tuple[nn.Module, ModelMasks, dict]:
    """Fine-tune `model` while pruning it on `config`'s schedule; returns the model, its
    masks (earlier masks kept and grown) and the training summary with the schedule
    actually followed (`summary["schedule"]`: step, target and reached sparsity)."""
    layout = find_layout(model)
    names = select_layers(list(layout.linears()), config.targets, config.ignore)
    masks = masks.copy() if masks is not None else ModelMasks()
    linears = layout.linears()
    for name in names:
        if name not in masks:
            masks[name] = torch.ones(weight_matrix(linears[name]).shape, dtype=torch.bool)
    made: list[GradualPruner] = []

    def keeper(keep_masks: ModelMasks, train_model: nn.Module) -> GradualPruner:
        made.append(GradualPruner(config, keep_masks, train_model, names))
        return made[0]

    model, summary = finetune(
        model, tokenizer, config, masks, windows, keeper=keeper, teacher=teacher
    )
    summary["schedule"] = made[0].trace if made else []
    summary["regularization"] = made[0].trade_off if made else []
    return model, masks, summary
