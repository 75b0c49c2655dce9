"""llmprune: prune Hugging Face causal LMs, recover their quality, and measure both."""

from llmprune.errors import LLMPruneError

__version__ = "0.1.0"
__all__ = ["LLMPruneError", "__version__"]
