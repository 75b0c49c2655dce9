"""`prune(model, ...)`: one pass of any method over every target layer, block by block."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from llmprune.data import configured_sample
from llmprune.errors import LLMPruneError
from llmprune.models.layout import ModelLayout, find_layout, set_weight_matrix, weight_matrix
from llmprune.models.loading import max_context
from llmprune.pruning.allocation import (
    outlier_ratio,
    override_amount,
    owl_block_sparsities,
    select_layers,
)
from llmprune.pruning.amounts import NM, Amount, Sparsity
from llmprune.pruning.config import PruneConfig, make_config
from llmprune.pruning.masks import ModelMasks
from llmprune.pruning.methods import METHODS
from llmprune.pruning.sequential import (
    Residency,
    calibration_compute_dtype,
    collect_statistics,
    walk_blocks,
)
from llmprune.pruning.statistics import InputNorms
from llmprune.pruning.wanda import wanda_scores


@dataclass
class PruneResult:
    """What a pruning pass produced: the masks (data for later stages) and how it went."""

    masks: ModelMasks
    config: PruneConfig
    amounts: dict[str, str]  # layer name -> "0.5" or "2:4"
    block_sparsity: list[float] = field(default_factory=list)
    owl_ratios: list[float] = field(default_factory=list)
    seconds: float = 0.0
    compute_dtype: str = ""  # what the calibration forward passes ran in

    def to_dict(self) -> dict:
        return {
            "config": self.config.model_dump(),
            "label": self.config.label,
            "sparsity": self.masks.sparsity(),
            "layer_sparsity": self.masks.layer_sparsity(),
            "amounts": self.amounts,
            "block_sparsity": self.block_sparsity,
            "owl_ratios": self.owl_ratios,
            "seconds": self.seconds,
            "calibration_compute_dtype": self.compute_dtype,
        }


def block_layers(layout: ModelLayout, index: int, chosen: set[str]) -> dict[str, nn.Module]:
    prefix = f"{layout.blocks_path}.{index}."
    return {
        prefix + name: module
        for name, module in layout.block_linears(index).items()
        if prefix + name in chosen
    }


def layer_amounts(
    layout: ModelLayout, config: PruneConfig, names: list[str], block_sparsity: list[float]
) -> dict[str, Amount]:
    """Uniform (or OWL per block) amount for each layer, unless an override matches."""
    linears = layout.linears()
    amounts = {}
    for name in names:
        amount = override_amount(name, config.overrides)
        if amount is None and block_sparsity:
            amount = Sparsity(block_sparsity[layout.block_index(name)])
        amount = amount or config.amount
        if isinstance(amount, NM):
            amount.check_divides(weight_matrix(linears[name]).shape[1], name)
        amounts[name] = amount
    return amounts


def owl_outlier_ratios(
    model,
    layout,
    windows,
    config,
    chosen: set[str],
    progress: bool,
    residency=None,
    compute_dtype: torch.dtype | None = None,
) -> list[float]:
    """OWL's pre-pass over the dense model: outlier ratio of Wanda scores, per block.

    They depend on the dense model, the calibration windows and the threshold only, not
    on the method or the sparsity: a sweep computes them once (`owl_ratios` of prune).
    """
    ratios: list[float] = []

    def visit(index: int, block: nn.Module, inputs) -> None:
        layers = block_layers(layout, index, chosen)
        stats = collect_statistics(
            block,
            index,
            layers,
            lambda n, m: InputNorms(weight_matrix(m).shape[1], n, config.device),
            inputs,
            torch.device(config.device),
        )
        scores = [
            wanda_scores(weight_matrix(m), stats[n].norms.to(weight_matrix(m).device)).flatten()
            for n, m in layers.items()
        ]
        ratios.append(outlier_ratio(torch.cat(scores), config.owl_threshold) if scores else 0.0)

    walk_blocks(
        model,
        layout,
        windows,
        visit,
        config.batch_size,
        config.device,
        "OWL",
        progress,
        residency,
        compute_dtype,
    )
    return ratios


def prune_layer(name, module, statistic, amount, existing, config, method) -> torch.Tensor:
    weight = weight_matrix(module)
    old = existing.get(name) if existing is not None else None
    old = None if old is None else old.to(weight.device)
    if old is not None and old.shape != weight.shape:
        raise LLMPruneError(
            f"existing mask of {name} has shape {tuple(old.shape)}, not {tuple(weight.shape)}"
        )
    mask, new_weight = method.rule(weight.float(), statistic, amount, old, config, name)
    set_weight_matrix(module, new_weight)
    return mask


@torch.no_grad()
def prune(
    model: nn.Module,
    tokenizer=None,
    config: PruneConfig | None = None,
    calibration: torch.Tensor | None = None,
    existing: ModelMasks | None = None,
    progress: bool = True,
    residency: Residency | None = None,
    owl_ratios: list[float] | None = None,
    **options,
) -> PruneResult:
    """Prune `model` in place and return its masks.

    `config` (or keyword options such as method="wanda", sparsity=0.5, pattern="2:4")
    says how. `calibration` ([n, seqlen] token ids) overrides sampling from
    `config.calib`. With `existing` masks, weights pruned earlier stay pruned and the
    new amount counts them (iterative schedules); the returned masks are the earlier
    ones with this pass's layers replaced, so masks accumulate across passes.
    `residency` decides where blocks live between visits (default: in memory;
    `StreamedModel` streams them from disk).
    `owl_ratios` from an earlier result on the same dense model and windows skip OWL's
    pre-pass.
    """
    config = config or make_config(**options)
    start = time.perf_counter()
    layout = find_layout(model)
    names = select_layers(list(layout.linears()), config.targets, config.ignore)
    if not names:
        raise LLMPruneError("no linear layer matches --targets / --ignore")
    chosen = set(names)
    layer_amounts(layout, config, names, [])  # validate N:M and overrides before any work
    method = METHODS[config.method]
    windows = None
    if config.needs_calibration:
        context = max_context(model.config) if hasattr(model, "config") else None
        windows = calibration
        if windows is None:
            windows = configured_sample(tokenizer, config, context)
    compute_dtype = calibration_compute_dtype(
        config.calibration_dtype, config.device, getattr(model, "dtype", torch.float32)
    )
    ratios, block_sparsity = [], []
    if config.allocation == "owl":
        ratios = owl_ratios or owl_outlier_ratios(
            model,
            layout,
            windows,
            config,
            chosen,
            progress,
            residency.read_only() if residency is not None else None,
            compute_dtype,
        )
        if len(ratios) != layout.num_blocks:
            raise LLMPruneError(f"{len(ratios)} OWL ratios for {layout.num_blocks} blocks")
        block_sparsity = owl_block_sparsities(ratios, config.sparsity, config.owl_lambda)
    amounts = layer_amounts(layout, config, names, block_sparsity)
    masks = existing.copy() if existing is not None else ModelMasks()

    def visit(index: int, block: nn.Module, inputs) -> None:
        layers = block_layers(layout, index, chosen)
        stats = {}
        if method.statistic is not None:
            stats = collect_statistics(
                block,
                index,
                layers,
                lambda n, m: method.statistic(weight_matrix(m).shape[1], n, config.device),
                inputs,
                torch.device(config.device),
            )
        for name, module in layers.items():
            masks[name] = prune_layer(
                name, module, stats.get(name), amounts[name], existing, config, method
            )

    walk_blocks(
        model,
        layout,
        windows if method.needs_calibration else None,
        visit,
        config.batch_size,
        config.device,
        config.label,
        progress,
        residency,
        compute_dtype,
    )
    return PruneResult(
        masks=masks,
        config=config,
        amounts={name: str(amount) for name, amount in amounts.items()},
        block_sparsity=block_sparsity,
        owl_ratios=ratios,
        seconds=time.perf_counter() - start,
        compute_dtype=str(compute_dtype or getattr(model, "dtype", "")).replace("torch.", ""),
    )
