"""Structured pruning: remove attention heads, FFN channels and whole blocks, so the
model itself gets smaller and faster on any runtime."""

from llmprune.structured.config import Removal, StructuredConfig, parse_removal
from llmprune.structured.prune import StructuredResult, structured_prune

__all__ = [
    "Removal",
    "StructuredConfig",
    "StructuredResult",
    "parse_removal",
    "structured_prune",
]
