"""Token windows: random calibration samples and the non-overlapping evaluation windows."""

from __future__ import annotations

import torch

from llmprune.data.sources import TextSource
from llmprune.errors import LLMPruneError


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a whole text as one 1-D tensor (no special tokens, no length limit)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def check_seqlen(seqlen: int, context: int | None) -> None:
    """A window must hold at least one prediction and fit the model's context."""
    if seqlen < 2:
        raise LLMPruneError(f"seqlen must be at least 2, got {seqlen}")
    if context is not None and seqlen > context:
        raise LLMPruneError(f"seqlen {seqlen} is above the model's context of {context} tokens")


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut a token stream into non-overlapping windows of `seqlen` (WikiText-2 protocol).

    The tail shorter than a window is dropped, as in the reference evaluations.
    """
    check_seqlen(seqlen, None)
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise LLMPruneError(f"the text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: count * seqlen].view(count, seqlen)


def calibration_windows(
    ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0
) -> torch.Tensor:
    """Draw `nsamples` windows of `seqlen` tokens at random starts chosen by `seed`."""
    if nsamples < 1:
        raise LLMPruneError(f"nsamples must be at least 1, got {nsamples}")
    if ids.numel() < seqlen:
        raise LLMPruneError(
            f"the calibration text has {ids.numel()} tokens, fewer than seqlen {seqlen}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def source_tokens(tokenizer, source: TextSource, split: str, max_tokens: int | None = None):
    """Tokenize a split; with `max_tokens`, stop once that many tokens are gathered.

    Documents are tokenized one by one, so a large corpus (C4) costs only what it gives.
    """
    if max_tokens is None:
        return tokenize(tokenizer, source.text(split))
    pieces, total = [], 0
    for document in source.documents(split):
        piece = tokenize(tokenizer, document + "\n\n")
        pieces.append(piece)
        total += piece.numel()
        if total >= max_tokens:
            break
    return torch.cat(pieces)


def calibration_sample(
    tokenizer,
    source: str,
    nsamples: int,
    seqlen: int,
    seed: int = 0,
    context: int | None = None,
) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens from the train part of `source`.

    Only as much text is tokenized as the sample needs (a large corpus costs what it gives).
    """
    from llmprune.data.sources import get_source

    if tokenizer is None:
        raise LLMPruneError("calibration needs a tokenizer (or ready-made token windows)")
    text = get_source(source)
    check_seqlen(seqlen, context)
    budget = max(nsamples * seqlen * 4, 1_000_000)
    ids = source_tokens(tokenizer, text, "train", max_tokens=budget)
    return calibration_windows(ids, nsamples, seqlen, seed)


def configured_sample(tokenizer, config, context: int | None = None) -> torch.Tensor:
    """`calibration_sample` with a config's calib, nsamples, seqlen and seed (prune and
    structured configs carry the same four)."""
    return calibration_sample(
        tokenizer, config.calib, config.nsamples, config.seqlen, config.seed, context
    )
