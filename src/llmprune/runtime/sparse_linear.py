"""A linear layer computed from its non-zeros, and the swap that puts it into a model.

`SparseLinear` keeps only the bitmask, the packed fp32 non-zeros and row offsets (the
sparse folder's encoding). Up to `max_sparse_tokens` tokens per call (decode) it runs the
bitmask kernel; longer inputs (prefill, compute-bound) decode the weight and use the
dense matmul. `sparsify` swaps in a `SparseLinear` only where a quick measurement at
load shows the kernel beating the dense layer it replaces.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from llmprune.export.sparse import decode, encode_bitmask
from llmprune.models.layout import find_layout, weight_matrix
from llmprune.runtime.kernel import MAX_TOKENS, PADDING, bitmask_matmul, library


class SparseLinear(nn.Module):
    """`values_dtype` bf16 halves the bytes of the non-zeros (each rounded to bf16)."""

    def __init__(
        self,
        matrix: torch.Tensor,
        bias: torch.Tensor | None,
        simd: bool = True,
        values_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        parts = encode_bitmask(matrix.detach().float().cpu())
        self.out_features, self.in_features = matrix.shape
        self.register_buffer("bitmask", parts["bitmask"])
        values = torch.cat([parts["compressed"], torch.zeros(PADDING)]).to(values_dtype)
        self.register_buffer("values", values)
        self.register_buffer("row_offsets", parts["row_offsets"])
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.simd = simd
        self.max_sparse_tokens = MAX_TOKENS if library() is not None else 0

    @classmethod
    def from_module(
        cls, module: nn.Module, simd: bool = True, values_dtype: torch.dtype = torch.float32
    ) -> SparseLinear:
        return cls(weight_matrix(module), getattr(module, "bias", None), simd, values_dtype)

    def dense_weight(self) -> torch.Tensor:
        parts = {
            "bitmask": self.bitmask,
            "compressed": self.values[: self.values.numel() - PADDING].float(),
            "row_offsets": self.row_offsets,
            "shape": torch.tensor([self.out_features, self.in_features]),
        }
        return decode(parts, "sparse layer")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if 0 < flat.shape[0] <= self.max_sparse_tokens:
            y = bitmask_matmul(
                self.bitmask, self.values, self.row_offsets, flat, self.out_features, self.simd
            )
        else:
            y = flat @ self.dense_weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)


def median_seconds(call, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def sparsify(model: nn.Module, min_sparsity: float = 0.3) -> dict[str, float]:
    """Swap each block linear with at least `min_sparsity` zeros for a `SparseLinear` where
    the kernel is faster at one token; return {layer: dense time / sparse time} of those
    swapped (fp32 CPU models; others are left as they are)."""
    if library() is None:
        return {}
    speedups = {}
    modules = dict(model.named_modules())
    for name, module in find_layout(model).linears().items():
        matrix = weight_matrix(module)
        if matrix.dtype != torch.float32 or matrix.device.type != "cpu":
            continue
        if float((matrix == 0).float().mean()) < min_sparsity:
            continue
        sparse = SparseLinear.from_module(module)
        x = torch.randn(1, matrix.shape[1])
        dense_time = median_seconds(lambda m=module, x=x: m(x))
        sparse_time = median_seconds(lambda s=sparse, x=x: s(x))
        if sparse_time < dense_time:
            parent, _, leaf = name.rpartition(".")
            setattr(modules[parent], leaf, sparse)
            speedups[name] = dense_time / sparse_time
    return speedups
