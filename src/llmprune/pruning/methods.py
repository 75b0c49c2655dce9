"""The method registry: which statistic each method collects and which rule it applies.

Every rule has one signature, `(weight, statistic, target, existing, config, layer)`,
so the driver never branches on the method's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmprune.pruning.config import PruneConfig
from llmprune.pruning.magnitude import magnitude_prune
from llmprune.pruning.sparsegpt import (
    inverse_hessian_factor,
    sparsegpt_prune,
    with_dead_inputs_fixed,
)
from llmprune.pruning.statistics import Hessian, InputNorms, Statistic
from llmprune.pruning.targets import Target
from llmprune.pruning.wanda import wanda_prune

Rule = Callable[
    [torch.Tensor, Statistic, Target, "torch.Tensor | None", PruneConfig, str],
    tuple[torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class Method:
    name: str
    statistic: type[Statistic]
    rule: Rule


def _magnitude(weight, _stat, target, existing, config, _layer):
    return magnitude_prune(weight, target, existing, per_row=config.per_row)


def _wanda(weight, stat, target, existing, _config, _layer):
    return wanda_prune(weight, stat.norms.to(weight.device), target, existing)


def _sparsegpt(weight, stat, target, existing, config, layer):
    key = ("inverse_hessian_factor", config.dampening)
    if key not in stat.cache:  # q/k/v (and gate/up) share one Hessian: factor it once
        fixed = with_dead_inputs_fixed(stat.matrix)
        stat.cache[key] = inverse_hessian_factor(fixed, config.dampening, layer)
    return sparsegpt_prune(
        weight,
        stat.matrix,
        target,
        existing,
        config.blocksize,
        config.dampening,
        layer,
        hinv=stat.cache[key],
    )


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", Statistic, _magnitude),
    "wanda": Method("wanda", InputNorms, _wanda),
    "sparsegpt": Method("sparsegpt", Hessian, _sparsegpt),
}
