"""Text sources and the token windows cut from them."""

from llmprune.data.sources import DEFAULT_SOURCE, TextSource, get_source
from llmprune.data.windows import (
    calibration_sample,
    calibration_windows,
    check_seqlen,
    configured_sample,
    eval_windows,
    source_tokens,
    tokenize,
)

__all__ = [
    "DEFAULT_SOURCE",
    "TextSource",
    "calibration_sample",
    "calibration_windows",
    "check_seqlen",
    "configured_sample",
    "eval_windows",
    "get_source",
    "source_tokens",
    "tokenize",
]
