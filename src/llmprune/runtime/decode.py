"""A lean greedy decode loop for LLaMA-family models, dense or sparse alike.

Plain `generate` spends most of a small model's token in Python: module calls, cache
objects, masks and logits processors around every layer. At batch 1 the arithmetic is
one read of every weight, so that overhead hides whatever a faster matmul saves. This
loop keeps the model's own numbers (weights, norm weights, rotary tables, attention) but
runs each block as a handful of calls: q, k and v as one fused projection, gate and up as
another, residual + RMSNorm as one kernel call, the rotary embedding and the KV-cache
write as another (q and k rows are interleaved per head at load, so rotation acts on
adjacent pairs; every q·k product is unchanged), a KV cache allocated once, logits for
the last position only. Each fused
projection is run by whichever module `fastest_linear` measured fastest on this machine:
torch's matmul, the dense kernel, or (`sparse=True`) a sparse layout, so what the sparse
kernel saves reaches the tokens/s.

Activations stay fp32 whatever the weights' dtype (bf16 weights are widened in the
kernels). For an fp32 model the greedy tokens equal `generate(do_sample=False)`'s (tested);
a bf16 model's may part from bf16 `generate`, which rounds activations at every op.
It runs on the CPU. Sampling, beams, padded prompts and stop strings stay with `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmprune.errors import LLMPruneError
from llmprune.models.layout import weight_matrix
from llmprune.runtime.kernel import MAX_TOKENS, add_rms_norm, library, rope_cache
from llmprune.runtime.sparse_linear import SparseLinear, fastest_linear

FAMILIES = ("llama", "mistral", "qwen2")  # pre-norm, RoPE, GQA, SwiGLU, no q/k norms


def interleaved(rows: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a q or k projection reordered per head from [x0..x(d/2-1), x(d/2)..] (the
    rotate-half layout) to pairs (x_i, x_(i+d/2)), so rotation is a complex multiply."""
    heads = rows.shape[0] // head_dim
    half = head_dim // 2
    order = torch.arange(head_dim).view(2, half).t().flatten()
    index = (torch.arange(heads)[:, None] * head_dim + order).flatten()
    return rows[index]


class Projection:
    """x @ Wᵀ (+ b) for one or more of a block's linears, fused along the output rows and
    run by whichever module `fastest_linear` measured fastest for the fused weight."""

    def __init__(self, matrices: list[torch.Tensor], biases: list, sparse: bool, options):
        matrix = torch.cat(matrices)
        bias = None
        if any(b is not None for b in biases):
            parts = zip(biases, matrices, strict=True)
            bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for b, w in parts])
        sparse = sparse and float((matrix == 0).float().mean()) >= options["min_sparsity"]
        self.linear = fastest_linear(
            matrix, bias, sparse, options["values_dtype"], options["layout"]
        )
        self.decode = self.linear.decode_call()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 in, fp32 out; decode steps take the bound call, prompts the module."""
        if x.numel() <= MAX_TOKENS * x.shape[-1]:
            return self.decode(x)
        return self.linear(x).float()


@dataclass
class Norm:
    weight: torch.Tensor  # fp32
    eps: float

    def __call__(self, hidden: torch.Tensor, delta: torch.Tensor | None = None) -> torch.Tensor:
        """hidden += delta in place, then the normed hidden (the model's RMSNorm in fp32)."""
        if library() is not None:
            return add_rms_norm(hidden, delta, self.weight, self.eps)
        if delta is not None:
            hidden += delta
        scale = torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * (hidden * scale)


def norm_of(module: nn.Module) -> Norm:
    eps = getattr(module, "variance_epsilon", None) or getattr(module, "eps", 1e-6)
    return Norm(module.weight.detach().float().contiguous(), float(eps))


def rotary(qkv, cos, sin, keys, values, heads: int, start: int) -> torch.Tensor:
    """Rotated q [batch, heads, T, d]; rotated k and plain v written into the caches at
    `start` (q and k rows in (x_i, x_(i+d/2)) pairs, see `interleaved`)."""
    if library() is not None:
        return rope_cache(qkv, cos, sin, keys, values, heads, start)
    length, kv_heads = qkv.shape[1], keys.shape[1]
    pairs = torch.view_as_complex(qkv[:, :, : heads + kv_heads].unflatten(-1, (-1, 2)))
    rotated = torch.view_as_real(pairs * torch.complex(cos, sin).unsqueeze(2)).flatten(-2)
    keys[:, :, start : start + length] = rotated[:, :, heads:].transpose(1, 2)
    values[:, :, start : start + length] = qkv[:, :, heads + kv_heads :].transpose(1, 2)
    return rotated[:, :, :heads].transpose(1, 2)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


@dataclass
class Block:
    attention_norm: Norm
    qkv: Projection
    output: Projection
    mlp_norm: Norm
    gate_up: Projection
    down: Projection
    heads: int
    kv_heads: int


def params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = getattr(module, "bias", None)
    return weight_matrix(module).detach(), None if bias is None else bias.detach()


class LeanDecoder:
    """Greedy decoding of `model` with fused projections and a preallocated KV cache."""

    def __init__(
        self,
        model: nn.Module,
        sparse: bool = False,
        values_dtype: torch.dtype | None = None,
        min_sparsity: float = 0.3,
        layout: str | None = None,
    ):
        """`sparse`: projections with at least `min_sparsity` zeros may run on the sparse
        kernel (in `layout` if given, else whichever is measured fastest)."""
        config = model.config
        if next(model.parameters()).device.type != "cpu":
            raise LLMPruneError("lean decoding runs on the CPU; use generate on other devices")
        if config.model_type not in FAMILIES:
            raise LLMPruneError(
                f"lean decoding takes {', '.join(FAMILIES)} models, not {config.model_type}"
            )
        slides = config.model_type == "mistral" or getattr(config, "use_sliding_window", False)
        self.window = getattr(config, "sliding_window", None) if slides else None
        self.model = model
        self.head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        options = {"values_dtype": values_dtype, "min_sparsity": min_sparsity, "layout": layout}
        self.blocks = [self.block(layer, sparse, options) for layer in model.model.layers]
        self.final_norm = norm_of(model.model.norm)
        self.head = Projection(*zip(params(model.lm_head), strict=True), sparse, options)

    def block(self, layer: nn.Module, sparse: bool, options: dict) -> Block:
        attention, mlp = layer.self_attn, layer.mlp
        (q, q_bias), (k, k_bias), (v, v_bias) = (
            params(m) for m in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        q, k = interleaved(q, self.head_dim), interleaved(k, self.head_dim)
        if q_bias is not None:
            q_bias = interleaved(q_bias, self.head_dim)
        if k_bias is not None:
            k_bias = interleaved(k_bias, self.head_dim)
        gate, up = params(mlp.gate_proj), params(mlp.up_proj)
        return Block(
            attention_norm=norm_of(layer.input_layernorm),
            qkv=Projection([q, k, v], [q_bias, k_bias, v_bias], sparse, options),
            output=Projection(*zip(params(attention.o_proj), strict=True), sparse, options),
            mlp_norm=norm_of(layer.post_attention_layernorm),
            gate_up=Projection([gate[0], up[0]], [gate[1], up[1]], sparse, options),
            down=Projection(*zip(params(mlp.down_proj), strict=True), sparse, options),
            heads=q.shape[0] // self.head_dim,
            kv_heads=k.shape[0] // self.head_dim,
        )

    def sparse_projections(self) -> dict[str, str]:
        """Which fused projections run on the sparse kernel, and in which layout."""
        names = ("qkv", "output", "gate_up", "down")
        found = {
            f"{index}.{name}": getattr(block, name).linear
            for index, block in enumerate(self.blocks)
            for name in names
        }
        found["lm_head"] = self.head.linear
        return {k: m.layout for k, m in found.items() if isinstance(m, SparseLinear)}

    def step(self, ids: torch.Tensor, start: int, caches: list) -> torch.Tensor:
        """fp32 logits of the last position after feeding `ids` [batch, T] at `start`."""
        batch, length = ids.shape
        end = start + length
        hidden = self.model.model.embed_tokens(ids).float()
        positions = torch.arange(start, end).expand(batch, length)
        cos, sin = self.model.model.rotary_emb(hidden, positions)
        half = self.head_dim // 2
        cos, sin = cos[..., :half].float(), sin[..., :half].float()
        delta = None
        for block, (keys, values) in zip(self.blocks, caches, strict=True):
            qkv = block.qkv(block.attention_norm(hidden, delta))
            qkv = qkv.view(batch, length, block.heads + 2 * block.kv_heads, self.head_dim)
            q = rotary(qkv, cos, sin, keys, values, block.heads, start)
            attended = F.scaled_dot_product_attention(
                q,
                keys[:, :, :end],
                values[:, :, :end],
                is_causal=length > 1,
                enable_gqa=block.heads != block.kv_heads,
            )
            delta = block.output(attended.transpose(1, 2).reshape(batch, length, -1))
            delta = block.down(swiglu(block.gate_up(block.mlp_norm(hidden, delta))))
        last = self.final_norm(hidden[:, -1:].contiguous(), delta[:, -1:])
        return self.head(last)[:, -1].float()

    def caches(self, batch: int, capacity: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Empty fp32 key and value caches for `capacity` positions, after checking that
        the model attends over all of them (no sliding window is implemented)."""
        if self.window and capacity > self.window:
            raise LLMPruneError(
                f"lean decoding does not implement sliding-window attention: {capacity} "
                f"tokens exceed the model's window of {self.window}"
            )
        return [
            tuple(
                torch.empty(batch, block.kv_heads, capacity, self.head_dim, dtype=torch.float32)
                for _ in range(2)
            )
            for block in self.blocks
        ]

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Last-position logits of a prompt (what `llmprune speed` times as prefill)."""
        return self.step(ids, 0, self.caches(ids.shape[0], ids.shape[1]))

    @torch.no_grad()
    def generate(
        self,
        ids: torch.Tensor,
        new_tokens: int,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """Prompt + up to `new_tokens` greedy tokens, as `generate` gives them: a row that
        emitted an eos is padded from then on, and decoding stops once every row has."""
        batch, prompt = ids.shape
        if prompt == 0:
            raise LLMPruneError("lean decoding needs a prompt of at least one token")
        total = prompt + new_tokens
        caches = self.caches(batch, total)
        stops = torch.tensor([] if eos_token_id is None else eos_token_id, dtype=torch.long)
        stops = stops.flatten()
        if pad_token_id is None:
            pad_token_id = int(stops[0]) if stops.numel() else 0
        finished = torch.zeros(batch, dtype=torch.bool)
        out = torch.empty(batch, total, dtype=ids.dtype)
        out[:, :prompt] = ids
        logits = self.step(ids, 0, caches)
        for position in range(prompt, total):
            token = logits.argmax(dim=-1).masked_fill(finished, pad_token_id)
            out[:, position] = token
            finished |= torch.isin(token, stops)
            if bool(finished.all()):
                return out[:, : position + 1]
            if position + 1 < total:
                logits = self.step(token[:, None], position, caches)
        return out
