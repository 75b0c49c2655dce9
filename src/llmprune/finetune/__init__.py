"""Recovery after pruning: mask-preserving fine-tuning, PERP subsets, LoRA with masked merge."""

from llmprune.finetune.config import FinetuneConfig, make_finetune_config
from llmprune.finetune.trainer import MaskKeeper, finetune

__all__ = ["FinetuneConfig", "MaskKeeper", "finetune", "make_finetune_config"]
