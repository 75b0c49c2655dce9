"""A linear layer computed from its non-zeros, and the swap that puts it into a model.

`SparseLinear` keeps only the non-zeros (fp32 or bf16) and where they are, in one of the
kernel's two layouts: a row bitmask (the sparse folder's encoding, 0.125 bytes a weight)
or a uint16 column index per non-zero (2 bytes a non-zero: cheaper to walk when rows are
very sparse). Up to `max_sparse_tokens` tokens per call (decode) it runs the kernel;
longer inputs (prefill, compute-bound) rebuild the weight and use the dense matmul.
`sparsify` measures, per layer, the dense layer against both layouts at one token and
keeps whichever is fastest.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmprune.export.sparse import pack_rows, unpack_rows
from llmprune.models.layout import find_layout, weight_matrix
from llmprune.pruning.sequential import has_fast_bf16
from llmprune.runtime.kernel import (
    LAYOUTS,
    MAX_TOKENS,
    PADDING,
    bound_dense,
    bound_sparse,
    dense_matmul,
    densify,
    library,
    sparse_matmul,
)

MAX_INDEXED_COLUMNS = 1 << 16  # column indices are uint16


class SparseLinear(nn.Module):
    """`values_dtype` bf16 halves the bytes of the non-zeros (each rounded to bf16)."""

    def __init__(
        self,
        matrix: torch.Tensor,
        bias: torch.Tensor | None,
        simd: bool = True,
        values_dtype: torch.dtype = torch.float32,
        layout: str = "bitmask",
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown sparse layout {layout!r}: one of {', '.join(LAYOUTS)}")
        matrix = matrix.detach().float().cpu()
        self.out_features, self.in_features = matrix.shape
        if layout == "indexed" and self.in_features > MAX_INDEXED_COLUMNS:
            raise ValueError(f"the indexed layout takes up to {MAX_INDEXED_COLUMNS} columns")
        keep = matrix != 0
        counts = keep.sum(dim=1)
        values = torch.cat([matrix[keep], torch.zeros(PADDING)]).to(values_dtype)
        self.register_buffer("values", values)
        if layout == "bitmask":
            structure, offsets = pack_rows(keep), torch.cumsum(counts, 0) - counts
        else:
            columns = keep.nonzero()[:, 1].numpy().astype(np.uint16)
            structure = torch.from_numpy(columns.view(np.int16))
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
        self.register_buffer("structure", structure.contiguous())
        self.register_buffer("offsets", offsets.to(torch.int64).contiguous())
        self.layout = layout
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), False)
        self.simd = simd
        self.max_sparse_tokens = MAX_TOKENS if library() is not None else 0

    @classmethod
    def from_module(cls, module: nn.Module, **options) -> SparseLinear:
        return cls(weight_matrix(module), getattr(module, "bias", None), **options)

    def keep(self) -> torch.Tensor:
        """Bool [out, in]: where the non-zeros are."""
        if self.layout == "bitmask":
            return unpack_rows(self.structure, self.in_features)
        keep = torch.zeros(self.out_features, self.in_features, dtype=torch.bool)
        counts = self.offsets[1:] - self.offsets[:-1]
        rows = torch.repeat_interleave(torch.arange(self.out_features), counts)
        columns = torch.from_numpy(self.structure.numpy().view(np.uint16).astype(np.int64))
        keep[rows, columns] = True
        return keep

    def dense_weight(self) -> torch.Tensor:
        shape = (self.out_features, self.in_features)
        if library() is not None:
            return densify(self.layout, self.structure, self.values, self.offsets, shape)
        matrix = torch.zeros(self.out_features, self.in_features, dtype=torch.float32)
        matrix[self.keep()] = self.values[: self.values.numel() - PADDING].float()
        return matrix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        if 0 < flat.shape[0] <= self.max_sparse_tokens:
            y = sparse_matmul(
                self.layout,
                self.structure,
                self.values,
                self.offsets,
                flat,
                self.out_features,
                self.simd,
            )
        else:
            y = flat @ self.dense_weight().t()
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def decode_call(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The decode loop's call: contiguous fp32 x of 1 to MAX_TOKENS tokens, fp32 out."""
        parts = (self.structure, self.values, self.offsets)
        sizes = (self.out_features, self.in_features)
        return bound_sparse(self.layout, *parts, *sizes, self.bias, self.simd)

    def extra_repr(self) -> str:
        density = (self.values.numel() - PADDING) / (self.out_features * self.in_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"layout={self.layout}, values={self.values.dtype}, density={density:.3f}"
        )


def layer_values_dtype(matrix: torch.Tensor, values_dtype: torch.dtype | None) -> torch.dtype:
    """bf16 layers keep bf16 values (exact); fp32 layers fp32 unless asked otherwise."""
    if values_dtype is not None:
        return values_dtype
    return torch.bfloat16 if matrix.dtype == torch.bfloat16 else torch.float32


class TorchLinear(nn.Module):
    """torch's own matmul on a dense weight: the reference every kernel is timed against.
    Prompts (more than MAX_TOKENS tokens) of bf16 weights on a CPU without native bf16 run
    in fp32: there the bf16 matmul is emulated and several times slower."""

    def __init__(self, matrix: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight", matrix.detach().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(matrix.dtype))
        self.widen = matrix.dtype == torch.bfloat16 and not has_fast_bf16(matrix.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.widen and x.numel() > MAX_TOKENS * x.shape[-1]:
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias).to(x.dtype)
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)

    def decode_call(self) -> Callable[[torch.Tensor], torch.Tensor]:
        weight, bias = self.weight, self.bias
        if weight.dtype == torch.float32:
            return lambda x: F.linear(x, weight, bias)
        return lambda x: F.linear(x.to(weight.dtype), weight, bias).float()


class DenseKernelLinear(TorchLinear):
    """The dense weight through the kernel's one-row loop up to MAX_TOKENS tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.weight.shape[1])
        if flat.shape[0] > MAX_TOKENS:
            return super().forward(x)
        y = dense_matmul(self.weight, flat.float())
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], -1).to(x.dtype)

    def decode_call(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return bound_dense(self.weight, None if self.bias is None else self.bias.float())


KINDS = ("torch", "dense kernel", *LAYOUTS)
FLUSH_BYTES = 64 << 20  # more than the last-level cache of the CPUs this runs on


def kinds_for(matrix: torch.Tensor, sparse: bool) -> list[str]:
    if library() is None or matrix.device.type != "cpu":
        return ["torch"]
    if matrix.dtype not in (torch.float32, torch.bfloat16):
        return ["torch"]
    kinds = ["torch", "dense kernel"]
    if sparse:
        kinds.append("bitmask")
        if matrix.shape[1] <= MAX_INDEXED_COLUMNS:
            kinds.append("indexed")
    return kinds


def build_linear(kind: str, matrix, bias, values_dtype: torch.dtype) -> nn.Module:
    if kind == "torch":
        return TorchLinear(matrix, bias)
    if kind == "dense kernel":
        return DenseKernelLinear(matrix, bias)
    return SparseLinear(matrix, bias, values_dtype=values_dtype, layout=kind)


@cache
def flush_buffer() -> torch.Tensor:
    return torch.zeros(FLUSH_BYTES // 4)


def median_times(
    calls: dict[str, Callable[[], object]],
    repeats: int,
    before: Callable[[], object] | None = None,
) -> dict[str, float]:
    """Median seconds of each call after a warm-up, the calls taking turns so that a slow
    moment of the machine hits them all alike; `before` runs untimed before each call."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            if before is not None:
                before()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cold_seconds(calls: dict[str, Callable[[], object]], repeats: int = 9) -> dict[str, float]:
    """`median_times` with the weights out of the caches, as in decoding, where every
    layer's weights come from memory (a model is larger than the last-level cache)."""
    return median_times(calls, repeats, before=lambda: flush_buffer().add_(1.0))


CHOICES: dict[tuple, str] = {}  # measured winners, by shape, dtypes and density


@torch.no_grad()
def fastest_linear(
    matrix: torch.Tensor,
    bias: torch.Tensor | None,
    sparse: bool = True,
    values_dtype: torch.dtype | None = None,
    layout: str | None = None,
) -> nn.Module:
    """The module that computes x @ matrixᵀ (+ bias) fastest at one token on this machine,
    weights cold: torch's matmul, the dense kernel, or (`sparse`) a layout of the sparse
    kernel. Layers of one shape, dtype and density (to 0.05) share one measurement.
    Weights stay in the matrix's dtype unless `values_dtype` rounds the sparse values.
    `layout` (with `sparse`) skips the measurement and takes that sparse layout."""
    kinds = kinds_for(matrix, sparse)
    dtype = layer_values_dtype(matrix, values_dtype)
    if sparse and layout is not None:
        if layout not in kinds:
            raise ValueError(f"the {layout} layout cannot run a {list(matrix.shape)} layer here")
        return build_linear(layout, matrix, bias, dtype)
    density = float((matrix != 0).float().mean())
    key = (tuple(matrix.shape), matrix.dtype, dtype, round(density * 20), tuple(kinds))
    if len(kinds) > 1 and key not in CHOICES:
        modules = {kind: build_linear(kind, matrix, bias, dtype) for kind in kinds}
        x = torch.randn(1, matrix.shape[1])  # timed as the decode loop calls them
        calls = {kind: module.decode_call() for kind, module in modules.items()}
        times = cold_seconds({kind: (lambda c=call: c(x)) for kind, call in calls.items()})
        CHOICES[key] = min(times, key=times.get)
        return modules[CHOICES[key]]
    return build_linear(CHOICES.get(key, kinds[0]), matrix, bias, dtype)


@torch.no_grad()
def sparsify(
    model: nn.Module,
    min_sparsity: float = 0.3,
    values_dtype: torch.dtype | None = None,
    layout: str | None = None,
) -> dict[str, str]:
    """Swap each block linear with at least `min_sparsity` zeros for a `SparseLinear` where
    a layout of the kernel beats the dense layer at one token, measured here on this
    machine (or in `layout`, unmeasured); return {layer: layout} of those swapped (CPU
    fp32/bf16 layers; others are left as they are)."""
    chosen = {}
    modules = dict(model.named_modules())
    for name, module in find_layout(model).linears().items():
        matrix = weight_matrix(module).detach()
        if float((matrix == 0).float().mean()) < min_sparsity:
            continue
        bias = getattr(module, "bias", None)
        fastest = fastest_linear(matrix, bias, True, values_dtype, layout)
        if isinstance(fastest, SparseLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(modules[parent], leaf, fastest)
            chosen[name] = fastest.layout
    return chosen
