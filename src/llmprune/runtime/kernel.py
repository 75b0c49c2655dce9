"""The sparse matmul kernels: C (AVX2 where the CPU has it, OpenMP threads), built once with
the system compiler into the cache and called through ctypes.

Plain C with no torch headers builds in about a second. With OpenMP the library links
libgomp by its soname, which a process that imported torch already holds, so the kernel
runs on torch's threads (a second thread pool would spin against torch's). A compiler
without OpenMP gives a one-thread kernel; a machine without a compiler gets one warning
and the dense path. Every matmul goes through `bound_matmul`; the decode loop's helpers
(`add_rms_norm`, `rope_cache`) and `densify` call the library directly.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from pathlib import Path

import torch

from llmprune.models.loading import cache_dir

log = logging.getLogger(__name__)
SOURCE = "sparse_matmul.c"
MAX_TOKENS = 8
PADDING = 8  # values after the last one: the SIMD loop loads 8 at a time
LAYOUTS = ("bitmask", "indexed")
VALUE_TYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (with one warning) where it cannot be built. torch is
    imported (above) before it loads, so its libgomp is the one the kernel binds to."""
    source = files("llmprune.runtime").joinpath(SOURCE).read_bytes()
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        log.warning("no C compiler: sparse layers run on the dense path")
        return None
    # -march=native: a library built on another CPU (a shared cache) must not be reused
    digest = hashlib.sha256(source + compiler.encode() + cpu_signature()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"sparse_matmul-{digest}.so"
    if not target.is_file() and not build(compiler, source, target):
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        log.warning("the sparse kernel did not load (%s): dense path", exc)
        return None
    for layout in (*LAYOUTS, "dense"):
        pointers = 3 if layout == "dense" else 5
        simd = [ctypes.c_int] if layout == "bitmask" else []
        for suffix in VALUE_TYPES.values():
            function = getattr(lib, f"{layout}_matmul_{suffix}")
            function.restype = ctypes.c_int
            function.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * 3 + simd
    for suffix in VALUE_TYPES.values():
        function = getattr(lib, f"densify_{suffix}")
        function.restype = None
        function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_int]
    lib.rope_cache_f32.restype = None
    lib.rope_cache_f32.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 7
    lib.add_rms_norm_f32.restype = None
    lib.add_rms_norm_f32.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [ctypes.c_float]
    return lib


def cpu_signature() -> bytes:
    """The CPU's model and feature flags (Linux), or its architecture name elsewhere."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        lines = info.read_text(errors="replace").splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(wanted))).encode()
    return platform.machine().encode()


def build(compiler: str, source: bytes, target: Path) -> bool:
    """Compile with OpenMP, or without it where the compiler has none. Atomic, and safe
    when two processes build at once: each writes its own temporary files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source_path, partial = Path(scratch) / "kernel.c", Path(scratch) / "kernel.so"
        source_path.write_bytes(source)
        flags = ["-O3", "-march=native", "-shared", "-fPIC"]
        for threads in (["-fopenmp"], []):
            result = subprocess.run(
                [compiler, *flags, *threads, "-o", str(partial), str(source_path)],
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                partial.replace(target)  # a half-written library is never loaded
                return True
    first = (result.stderr.strip().splitlines() or ["?"])[0]
    log.warning("the sparse kernel did not build (%s): dense path", first)
    return False


def kernel_for(layout: str, values: torch.Tensor):
    lib = library()
    if lib is None:
        raise RuntimeError("the sparse kernel is not available")
    if values.dtype not in VALUE_TYPES:
        raise ValueError(f"the kernels take fp32 or bf16 weights, not {values.dtype}")
    return getattr(lib, f"{layout}_matmul_{VALUE_TYPES[values.dtype]}")


def bound_matmul(
    kernel, weights: tuple[torch.Tensor, ...], rows: int, cols: int, bias, *extra: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """y = x Wᵀ (+ bias) for contiguous fp32 x of 1 to MAX_TOKENS tokens, with the weight's
    pointers read once: the decode loop's call, a few microseconds cheaper than a module's.
    The tensors are held by the closure, so the pointers stay valid."""
    pointers = tuple(t.data_ptr() for t in weights)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if x.dtype != torch.float32:
            raise ValueError(f"the kernels take fp32 inputs, not {x.dtype}")
        y = torch.empty(*x.shape[:-1], rows, dtype=torch.float32)
        tokens = x.numel() // cols
        if kernel(*pointers, x.data_ptr(), y.data_ptr(), rows, cols, tokens, *extra):
            raise ValueError(f"the kernels take 1 to {MAX_TOKENS} tokens, got {tokens}")
        return y if bias is None else y.add_(bias)

    run.weights = weights  # keeps them alive as long as the closure
    return run


def bound_dense(weight: torch.Tensor, bias=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`bound_matmul` for a contiguous fp32 or bf16 weight [rows, cols]."""
    return bound_matmul(kernel_for("dense", weight), (weight,), *weight.shape, bias)


def bound_sparse(
    layout: str, structure, values, offsets, rows: int, cols: int, bias=None, simd: bool = True
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`bound_matmul` for a sparse layer: `structure` is the bitmask (uint8 [rows,
    ceil(cols/8)]) or the column indices (int16 read as uint16, one a value); `values`
    fp32 or bf16 with PADDING values after the last non-zero."""
    extra = (int(simd),) if layout == "bitmask" else ()
    weights = (structure, values, offsets)
    return bound_matmul(kernel_for(layout, values), weights, rows, cols, bias, *extra)


def dense_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y [tokens, rows] = x [tokens, cols] (fp32) times the weight transposed."""
    return bound_dense(weight)(x)


def add_rms_norm(
    hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """hidden += delta in place (fp32, contiguous), then RMSNorm(hidden) * weight."""
    if hidden.dtype != torch.float32 or not hidden.is_contiguous():
        raise ValueError("the norm kernel takes a contiguous fp32 hidden state")
    if delta is not None and (delta.shape != hidden.shape or delta.dtype != torch.float32):
        raise ValueError("the residual must match the hidden state (fp32)")
    out = torch.empty_like(hidden)
    rows, dim = hidden.numel() // hidden.shape[-1], hidden.shape[-1]
    delta = None if delta is None else delta.contiguous()  # held until the call returns
    pointers = [hidden.data_ptr(), 0 if delta is None else delta.data_ptr()]
    library().add_rms_norm_f32(*pointers, weight.data_ptr(), out.data_ptr(), rows, dim, eps)
    return out


def rope_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    heads: int,
    start: int,
) -> torch.Tensor:
    """Rotated q [batch, heads, length, head_dim]; rotated k and v go into the caches."""
    batch, length, _, head_dim = qkv.shape
    if start + length > keys.shape[2] or keys.shape != values.shape:
        raise ValueError(
            f"positions {start}..{start + length} do not fit a KV cache of {keys.shape[2]}"
        )
    if qkv.dtype != torch.float32 or keys.dtype != torch.float32 or not keys.is_contiguous():
        raise ValueError("the rotary kernel takes fp32 tensors and contiguous caches")
    q = torch.empty(batch, heads, length, head_dim, dtype=torch.float32)
    tensors = (qkv.contiguous(), cos.contiguous(), sin.contiguous(), q, keys, values)
    kv_heads, capacity = keys.shape[1], keys.shape[2]
    sizes = (batch, length, heads, kv_heads, head_dim, start, capacity)
    library().rope_cache_f32(*(t.data_ptr() for t in tensors), *sizes)
    return q


def densify(
    layout: str, structure: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, shape
) -> torch.Tensor:
    """The dense fp32 matrix of a sparse layer (for prompts, which run dense)."""
    out = torch.empty(*shape, dtype=torch.float32)
    function = getattr(library(), f"densify_{VALUE_TYPES[values.dtype]}")
    pointers = (structure.data_ptr(), values.data_ptr(), offsets.data_ptr(), out.data_ptr())
    function(*pointers, *shape, int(layout == "indexed"))
    return out


def sparse_matmul(
    layout: str,
    structure: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    x: torch.Tensor,
    rows: int,
    simd: bool = True,
) -> torch.Tensor:
    """y [tokens, rows] = x [tokens, cols] (fp32) times the sparse weight transposed."""
    return bound_sparse(layout, structure, values, offsets, rows, x.shape[-1], None, simd)(x)
