"""Pruning: pure rules (magnitude, Wanda, SparseGPT), selection, allocation, the driver."""

from llmprune.pruning.amounts import NM, Sparsity, parse_pattern
from llmprune.pruning.config import PruneConfig, make_config
from llmprune.pruning.masks import ModelMasks
from llmprune.pruning.oneshot import PruneResult, prune

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
