"""Pruning: pure rules (magnitude, Wanda, SparseGPT), selection, allocation, the driver."""

from llmprune.pruning.config import PruneConfig, make_config
from llmprune.pruning.masks import ModelMasks
from llmprune.pruning.oneshot import PruneResult, prune
from llmprune.pruning.targets import NM, Sparsity, parse_pattern

__all__ = [
    "NM",
    "ModelMasks",
    "PruneConfig",
    "PruneResult",
    "Sparsity",
    "make_config",
    "parse_pattern",
    "prune",
]
