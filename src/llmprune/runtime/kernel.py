"""The bitmask matmul kernel: C (AVX2 where the CPU has it), built once with the system
compiler into the cache and called through ctypes.

Plain C with no torch headers builds in about a second; a machine without a compiler
gets one warning and the dense path. `bitmask_matmul` is the only entry point.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.resources import files
from pathlib import Path

import torch

from llmprune.models.loading import cache_dir

log = logging.getLogger(__name__)
SOURCE = "bitmask_matmul.c"
MAX_TOKENS = 8
PADDING = 8  # floats after the last value: the SIMD loop loads 8 at a time


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning) where it cannot be built."""
    source = files("llmprune.runtime").joinpath(SOURCE).read_bytes()
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log.warning("no C compiler: sparse layers run on the dense path")
        return None
    digest = hashlib.sha256(source + compiler.encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"bitmask_matmul-{digest}.so"
    if not target.is_file() and not build(compiler, source, target):
        return None
    lib = ctypes.CDLL(str(target))
    for function in (lib.bitmask_matmul_f32, lib.bitmask_matmul_bf16):
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    return lib


def build(compiler: str, source: bytes, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    source_path = target.with_suffix(".c")
    source_path.write_bytes(source)
    partial = target.with_suffix(".partial.so")
    flags = ["-O3", "-march=native", "-shared", "-fPIC"]
    result = subprocess.run(
        [compiler, *flags, "-o", str(partial), str(source_path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["?"])[0]
        log.warning("the sparse kernel did not build (%s): dense path", first)
        return False
    partial.replace(target)  # atomic: a half-written library is never loaded
    return True


def bitmask_matmul(
    bitmask: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    x: torch.Tensor,
    rows: int,
    simd: bool = True,
) -> torch.Tensor:
    """y [tokens, rows] = x [tokens, cols] times W transposed, W given by its bitmask layout
    (`values` fp32 or bf16 with PADDING values after the last non-zero; x and y fp32)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the sparse kernel is not available")
    kernels = {torch.float32: lib.bitmask_matmul_f32, torch.bfloat16: lib.bitmask_matmul_bf16}
    if values.dtype not in kernels:
        raise ValueError(f"the sparse kernel takes fp32 or bf16 values, not {values.dtype}")
    x = x.contiguous()
    tokens, cols = x.shape
    y = torch.empty(tokens, rows, dtype=torch.float32)
    pointers = (bitmask.data_ptr(), values.data_ptr(), offsets.data_ptr(), x.data_ptr())

    def run(begin: int, end: int) -> int:  # ctypes releases the GIL: ranges run in parallel
        return kernels[values.dtype](
            *pointers, y.data_ptr(), rows, cols, tokens, begin, end, int(simd)
        )

    ranges = row_ranges(rows, cols)
    if len(ranges) == 1:
        codes = [run(*ranges[0])]
    else:
        codes = list(thread_pool().map(lambda span: run(*span), ranges))
    if any(codes):
        raise ValueError(f"the sparse kernel takes 1 to {MAX_TOKENS} tokens, got {tokens}")
    return y


PARALLEL_MIN_WEIGHTS = 1 << 20  # smaller layers: one thread beats the hand-off


def row_ranges(rows: int, cols: int) -> list[tuple[int, int]]:
    """Contiguous output-row ranges, one per torch thread for layers big enough to split."""
    parts = torch.get_num_threads() if rows * cols >= PARALLEL_MIN_WEIGHTS else 1
    parts = max(1, min(parts, rows))
    bounds = [rows * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


@cache
def thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=torch.get_num_threads())
