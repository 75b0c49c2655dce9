"""Model loading and the generic map of decoder blocks and their linear layers."""

from llmprune.models.layout import (
    ModelLayout,
    find_layout,
    is_prunable,
    set_weight_matrix,
    weight_matrix,
)
from llmprune.models.loading import DEFAULT_MODEL, LoadedModel, load_model

__all__ = [
    "DEFAULT_MODEL",
    "LoadedModel",
    "ModelLayout",
    "find_layout",
    "is_prunable",
    "load_model",
    "set_weight_matrix",
    "weight_matrix",
]
