"""Prefill and decode speed of causal LMs, measured side by side.

Machines are noisy, so models are measured in interleaved rounds (A, B, A, B, ...) and
the median of each is kept; ratios are only quoted between models of the same run.
Decode speed is the marginal rate of greedy generation with the KV cache:
(N − 1) new tokens over (time for N tokens − time for 1 token), so the prompt's prefill
is not counted as decoding.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@torch.no_grad()
def prefill_seconds(model: nn.Module, prompt: torch.Tensor) -> float:
    return timed(lambda: model(input_ids=prompt, use_cache=False))


@torch.no_grad()
def generate_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    return timed(
        lambda: model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    )


def compare_speed(
    models: dict[str, nn.Module],
    prefill_tokens: int = 512,
    prompt_tokens: int = 16,
    new_tokens: int = 64,
    rounds: int = 3,
    vocab: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Prefill and decode tokens/s of each model, measured in interleaved rounds."""
    generator = torch.Generator().manual_seed(seed)
    long_prompt = torch.randint(0, vocab, (1, prefill_tokens), generator=generator)
    short_prompt = long_prompt[:, :prompt_tokens]
    samples: dict[str, dict[str, list[float]]] = {
        name: {"prefill": [], "one": [], "many": []} for name in models
    }
    for model in models.values():  # warm-up: allocator, kernels, generation config
        model.eval()
        prefill_seconds(model, long_prompt[:, :64])
        generate_seconds(model, short_prompt, 2)
    for _ in range(rounds):
        for name, model in models.items():
            samples[name]["prefill"].append(prefill_seconds(model, long_prompt))
            samples[name]["one"].append(generate_seconds(model, short_prompt, 1))
            samples[name]["many"].append(generate_seconds(model, short_prompt, new_tokens))
    result = {}
    for name, times in samples.items():
        median = {key: statistics.median(values) for key, values in times.items()}
        decode = max(median["many"] - median["one"], 1e-9)
        result[name] = {
            "prefill_tokens_per_s": prefill_tokens / median["prefill"],
            "decode_tokens_per_s": (new_tokens - 1) / decode,
        }
    return result
