"""Pruning while training: gradual schedules (constant, linear, exponential, cubic),
magnitude / online Wanda / movement scores, and threshold pruning, inside fine-tuning."""

from llmprune.gradual.config import GradualConfig, make_gradual_config
from llmprune.gradual.schedules import SCHEDULES, prune_steps, scheduled_sparsity
from llmprune.gradual.training import GradualPruner, gradual_prune

__all__ = [
    "SCHEDULES",
    "GradualConfig",
    "GradualPruner",
    "gradual_prune",
    "make_gradual_config",
    "prune_steps",
    "scheduled_sparsity",
]
