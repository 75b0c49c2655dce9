"""Measurements: perplexity, sparsity (and later zero-shot, behaviour, speed)."""

from llmprune.evaluate.perplexity import PerplexityResult, perplexity
from llmprune.evaluate.sparsity import layer_sparsity, nm_pattern, sparsity_summary

__all__ = ["PerplexityResult", "layer_sparsity", "nm_pattern", "perplexity", "sparsity_summary"]
