"""llmprune: prune Hugging Face causal LMs, recover their quality, and measure both."""

from llmprune.errors import LLMPruneError

__version__ = "0.1.0"
__all__ = ["LLMPruneError", "__version__", "load"]


def load(source=None, dtype: str = "float32", device: str = "cpu"):
    """Any model llmprune reads — hub id, directory, .gguf, `smollm2`, or an exported sparse
    folder (rebuilt dense) — as a `LoadedModel` (`.model`, `.tokenizer`)."""
    from llmprune.models import load_model

    return load_model(source, dtype=dtype, device=device)
