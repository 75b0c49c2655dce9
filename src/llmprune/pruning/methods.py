"""The method registry: which statistic each method collects and which rule it applies.

Every rule has one signature, `(weight, statistic, amount, existing, config, layer)`, and
a method says what it needs from calibration through its statistic (None: nothing), so
the driver never asks for a method's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from llmprune.pruning.amounts import Amount
from llmprune.pruning.magnitude import magnitude_prune
from llmprune.pruning.sparsegpt import sparsegpt_prune
from llmprune.pruning.statistics import Hessian, InputNorms, Statistic
from llmprune.pruning.wanda import wanda_prune

if TYPE_CHECKING:
    from llmprune.pruning.config import PruneConfig

Rule = Callable[
    [torch.Tensor, "Statistic | None", Amount, "torch.Tensor | None", "PruneConfig", str],
    tuple[torch.Tensor, torch.Tensor],
]


@dataclass(frozen=True)
class Method:
    name: str
    statistic: type[Statistic] | None  # what calibration must collect; None: no calibration
    rule: Rule

    @property
    def needs_calibration(self) -> bool:
        return self.statistic is not None


def _magnitude(weight, _stat, amount, existing, config, _layer):
    return magnitude_prune(weight, amount, existing, per_row=config.per_row)


def _wanda(weight, stat, amount, existing, _config, _layer):
    return wanda_prune(weight, stat.norms.to(weight.device), amount, existing)


def _sparsegpt(weight, stat, amount, existing, config, layer):
    return sparsegpt_prune(
        weight,
        stat.matrix,
        amount,
        existing,
        config.blocksize,
        config.dampening,
        layer,
        hinv=stat.inverse_factor(config.dampening),
    )


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", None, _magnitude),
    "wanda": Method("wanda", InputNorms, _wanda),
    "sparsegpt": Method("sparsegpt", Hessian, _sparsegpt),
}
