"""Prefill and decode speed of causal LMs, measured side by side.

Machines are noisy, so decoders are measured in interleaved rounds (A, B, A, B, ...) and
the median of each is kept with its min–max; ratios are only quoted between decoders of
the same run. Decode speed is the marginal rate of greedy generation with the KV cache:
(N − 1) new tokens over (time for N tokens − time for 1 token), so the prompt's prefill is
not counted as decoding. A decoder is plain `generate` on a model (`HFDecoder`) or the
lean loop (`llmprune.runtime.decode.LeanDecoder`, dense or sparse).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn


class Decoder(Protocol):
    def prefill(self, ids: torch.Tensor) -> object: ...

    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor: ...


class HFDecoder:
    """transformers' own forward and greedy `generate`."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> object:
        return self.model(input_ids=ids, use_cache=False)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        return self.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def compare_speed(
    decoders: dict[str, Decoder | nn.Module],
    prefill_tokens: int = 512,
    prompt_tokens: int = 16,
    new_tokens: int = 64,
    rounds: int = 3,
    vocab: int = 1000,
    seed: int = 0,
    batches: tuple[int, ...] = (1,),
) -> dict[str, dict]:
    """Prefill tokens/s (one prompt of `prefill_tokens`) and decode tokens/s at each batch
    size (tokens of all rows together), each decoder measured in interleaved rounds."""
    runners = {n: HFDecoder(d) if isinstance(d, nn.Module) else d for n, d in decoders.items()}
    generator = torch.Generator().manual_seed(seed)
    long_prompt = torch.randint(0, vocab, (1, prefill_tokens), generator=generator)
    prompts = {b: torch.randint(0, vocab, (b, prompt_tokens), generator=generator) for b in batches}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
    for runner in runners.values():  # warm-up: allocator, kernels, generation config
        runner.prefill(long_prompt[:, :64])
        runner.generate(prompts[batches[0]], 2)
    for _ in range(rounds):
        for name, runner in runners.items():
            times = samples[name]
            times.setdefault("prefill", []).append(timed(lambda r=runner: r.prefill(long_prompt)))
            for b, prompt in prompts.items():
                one = timed(lambda r=runner, p=prompt: r.generate(p, 1))
                many = timed(lambda r=runner, p=prompt: r.generate(p, new_tokens))
                rate = b * (new_tokens - 1) / max(many - one, 1e-9)
                times.setdefault(f"decode_{b}", []).append(rate)
    result = {}
    for name, times in samples.items():
        prefill = [prefill_tokens / t for t in times["prefill"]]
        entry = {"prefill_tokens_per_s": statistics.median(prefill), "prefill": summary(prefill)}
        for b in batches:
            entry[f"decode_batch_{b}"] = summary(times[f"decode_{b}"])
        entry["decode_tokens_per_s"] = entry[f"decode_batch_{batches[0]}"]["median"]
        result[name] = entry
    return result


def lean_decoders(
    name: str, model: nn.Module, sparse: bool, values_dtype: torch.dtype | None
) -> dict[str, Decoder]:
    """`generate` and the lean loop, dense in fp32 and in bf16 (the fastest dense paths of a
    CPU: bf16 reads half the bytes) and, with `sparse`, on the sparse kernel: bf16 values
    come from the bf16 copy, so that decoder is that same bf16 model on the kernel."""
    import copy

    from llmprune.runtime.decode import LeanDecoder

    model = model.float()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    decoders: dict[str, Decoder] = {
        f"{name} · generate fp32": HFDecoder(model),
        f"{name} · lean dense fp32": LeanDecoder(model),
        f"{name} · lean dense bf16": LeanDecoder(bf16),
    }
    if sparse:
        values = "bf16" if values_dtype == torch.bfloat16 else "fp32"  # the copy it comes from
        source = bf16 if values == "bf16" else model
        decoders[f"{name} · lean sparse ({values} values)"] = LeanDecoder(source, sparse=True)
    return decoders
