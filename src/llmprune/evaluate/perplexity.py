"""Perplexity by the WikiText-2 protocol: mean next-token NLL over non-overlapping windows."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmprune.errors import LLMPruneError


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    tokens: int
    windows: int
    seqlen: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def window_nll(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window in a batch, in float64 for exact totals."""
    return logits_nll(model(input_ids=batch, use_cache=False).logits, batch)


def logits_nll(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each window, given the logits the model gave it."""
    shift_logits = logits[:, :-1, :].float()
    targets = batch[:, 1:]
    losses = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), targets.reshape(-1), reduction="none"
    )
    return losses.view(batch.size(0), -1).double().sum(dim=1)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: torch.Tensor,
    batch_size: int = 4,
    progress: bool = True,
) -> PerplexityResult:
    """exp(total NLL / predicted tokens) over `windows` ([n, seqlen] token ids).

    Each window predicts its tokens 2..seqlen from the ones before (no context carried
    across windows), as in the SparseGPT / Wanda evaluations.
    """
    if batch_size < 1:
        raise LLMPruneError(f"batch size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    start = time.perf_counter()
    total_nll, total_tokens = 0.0, 0
    batches = torch.split(windows, batch_size)
    for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        batch = batch.to(device)
        total_nll += float(window_nll(model, batch).sum())
        total_tokens += batch.size(0) * (batch.size(1) - 1)
    model.train(was_training)
    return perplexity_result(total_nll, total_tokens, windows, start)


def perplexity_result(
    total_nll: float, total_tokens: int, windows: torch.Tensor, start: float
) -> PerplexityResult:
    mean_nll = total_nll / total_tokens
    if not math.isfinite(mean_nll):
        raise LLMPruneError("the model's loss is not finite (NaN/Inf in its weights or outputs)")
    return PerplexityResult(
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        tokens=total_tokens,
        windows=windows.size(0),
        seqlen=windows.size(1),
        seconds=time.perf_counter() - start,
    )


def evaluate_text(
    loaded,
    data: str | None = None,
    split: str = "eval",
    seqlen: int = 512,
    max_windows: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of a loaded model on a split of a named text source."""
    from llmprune.data import check_seqlen, eval_windows, get_source, source_tokens

    source = get_source(data)
    check_seqlen(seqlen, loaded.context_length)
    windows = eval_windows(source_tokens(loaded.tokenizer, source, split), seqlen, max_windows)
    return perplexity(loaded.model, windows, batch_size=batch_size, progress=progress)
