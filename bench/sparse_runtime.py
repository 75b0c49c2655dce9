"""Sparse checkpoints on SmolLM2-135M: how the exported folder's size falls with sparsity.

(a) bytes of the pruned linears and of the whole folder against the dense fp32 model, at
50/70/80/90 % (magnitude; size depends on the amount only) and 2:4, with fp32 values and
with bf16 values (bench/results/sparse_size.json);
(b) the sparse kernel's matmul time (bitmask and indexed layouts, fp32 and bf16 values)
against the fastest dense torch path on this machine (fp32 or bf16, whichever is faster per
case; numpy is left out of the interleaved runs: its BLAS threads keep spinning and slow
whatever runs next) and against llmprune's own dense kernel, on 7B-sized layers
(11008x4096, 4096x11008) and SmolLM2's (1536x576, 576x1536), 1 and 4 tokens, at
50/70/90 %; all variants of a case interleaved, median of the repeats
(bench/results/sparse_matmul.json);
(c) SmolLM2-135M decode and prefill tokens/s, pruned to `--sparsity` (0.7; magnitude:
speed depends on the density only): plain `generate`, the lean loop dense in fp32 and
bf16, and the lean loop on the sparse kernel with fp32 and with bf16 values, interleaved
rounds, batch 1 and 4, and llama.cpp's `llama-bench` on the same GGUF file where it is
installed (bench/results/sparse_decode.json).

    python bench/sparse_runtime.py [--part size|matmul|decode|all] [--repeats 21]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from llmprune.evaluate.resources import peak_rss_mb
from llmprune.evaluate.speed import compare_speed, lean_decoders
from llmprune.export.sparse import DENSE_FILE, SPARSE_FILE, export_sparse
from llmprune.io import write_json
from llmprune.models import find_layout, load_model, weight_matrix
from llmprune.models.loading import default_gguf_path
from llmprune.pruning import prune
from llmprune.pruning.config import amount_options
from llmprune.runtime.kernel import dense_matmul
from llmprune.runtime.sparse_linear import SparseLinear, median_times

RESULTS = Path(__file__).parent / "results"


def tensor_bytes(path: Path) -> int:
    """Bytes of the tensors in a safetensors file (the file less its small header)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = [handle.get_tensor(key) for key in handle.keys()]  # noqa: SIM118
    return sum(t.numel() * t.element_size() for t in tensors)


def measure(base, amount: str, values: str) -> dict:
    loaded = copy.deepcopy(base)
    prune(loaded.model, method="magnitude", progress=False, **amount_options(amount))
    linears = find_layout(loaded.model).linears().values()
    linear_dense = sum(weight_matrix(m).numel() * 4 for m in linears)
    unique = {p.data_ptr(): p for p in loaded.model.state_dict().values()}.values()
    model_dense = sum(t.numel() * 4 for t in unique)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sparse"
        report = export_sparse(loaded, out, values=values)
        sparse = tensor_bytes(out / SPARSE_FILE)
        folder = sparse + tensor_bytes(out / DENSE_FILE)
    return {
        "amount": amount,
        "values": values,
        "linears_x_dense": sparse / linear_dense,
        "folder_x_dense": folder / model_dense,
        "folder_mib": folder / 2**20,
        "dense_mib": model_dense / 2**20,
        "max_rounding": report["max_rounding"],
    }


LAYERS = [(11008, 4096), (4096, 11008), (1536, 576), (576, 1536)]


def matmul_case(rows: int, cols: int, sparsity: float, tokens: int, repeats: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(rows, cols, generator=generator)
    matrix[torch.rand(rows, cols, generator=generator) < sparsity] = 0.0
    x = torch.randn(tokens, cols, generator=generator)
    dense_bf16, x_bf16 = matrix.bfloat16(), x.bfloat16()
    calls = {
        "torch fp32": lambda: x @ matrix.t(),
        "torch bf16": lambda: x_bf16 @ dense_bf16.t(),
        "kernel fp32": lambda: dense_matmul(matrix, x),
        "kernel bf16": lambda: dense_matmul(dense_bf16, x),
    }
    for layout in ("bitmask", "indexed"):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            layer = SparseLinear(matrix, None, values_dtype=dtype, layout=layout)
            calls[f"{layout} {name}"] = lambda layer=layer: layer(x)
    medians = median_times(calls, repeats)
    torch_dense = {k: v for k, v in medians.items() if k.startswith("torch")}
    fastest = min(torch_dense, key=torch_dense.get)
    row = {
        "layer": f"{rows}x{cols}",
        "sparsity": sparsity,
        "tokens": tokens,
        "ms": {k: v * 1e3 for k, v in medians.items()},
        "fastest_torch_dense": fastest,
    }
    for values in ("fp32", "bf16"):
        best = min(medians[f"bitmask {values}"], medians[f"indexed {values}"])
        row[f"{values}_values_x_torch"] = torch_dense[fastest] / best
        row[f"{values}_values_x_kernel_same_dtype"] = medians[f"kernel {values}"] / best
    return row


def matmul_rows(repeats: int) -> list[dict]:
    rows = []
    print(f"threads {torch.get_num_threads()}")
    print(
        f"{'layer':>11} {'sp':>4} {'tok':>3} {'fastest torch':>14} {'ms':>7} "
        f"{'fp32 vals x':>11} {'bf16 vals x':>11} {'x kernel fp32':>13} {'x kernel bf16':>13}"
    )
    for rows_, cols in LAYERS:
        for sparsity in (0.5, 0.7, 0.9):
            for tokens in (1, 4):
                r = matmul_case(rows_, cols, sparsity, tokens, repeats)
                rows.append(r)
                print(
                    f"{r['layer']:>11} {sparsity:>4} {tokens:>3} {r['fastest_torch_dense']:>14} "
                    f"{r['ms'][r['fastest_torch_dense']]:>7.3f} "
                    f"{r['fp32_values_x_torch']:>11.2f} {r['bf16_values_x_torch']:>11.2f} "
                    f"{r['fp32_values_x_kernel_same_dtype']:>13.2f} "
                    f"{r['bf16_values_x_kernel_same_dtype']:>13.2f}",
                    flush=True,
                )
    return rows


def size_rows(amounts: str) -> list[dict]:
    base = load_model("smollm2")
    rows = [measure(base, a, values) for a in amounts.split(",") for values in ("model", "bf16")]
    print(f"{'amount':>7} {'values':>6} {'linears x':>10} {'folder x':>9} {'folder MiB':>11}")
    for r in rows:
        values = "fp32" if r["values"] == "model" else r["values"]
        print(
            f"{r['amount']:>7} {values:>6} {r['linears_x_dense']:>10.3f} "
            f"{r['folder_x_dense']:>9.3f} {r['folder_mib']:>11.1f}"
        )
    return rows


def llama_cpp_row() -> dict:
    """llama.cpp's own bench on the same model file (Q4_1 GGUF), where it is installed."""
    binary = shutil.which("llama-bench")
    if binary is None:
        return {"installed": False}
    command = [binary, "-m", str(default_gguf_path()), "-p", "256", "-n", "64"]
    command += ["-t", str(torch.get_num_threads()), "-o", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
        tests = json.loads(done.stdout)
    except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return {"installed": True, "error": str(exc).splitlines()[0]}
    rates = {"prefill" if t["n_prompt"] else "decode": t["avg_ts"] for t in tests}
    return {"installed": True, "prefill_tokens_per_s": rates.get("prefill"), **rates}


def decode_rows(rounds: int, sparsity: float) -> dict:
    base = load_model("smollm2")
    prune(base.model, method="magnitude", sparsity=sparsity, progress=False)
    name = f"SmolLM2 {sparsity:.0%}".replace("%", " %")
    decoders = lean_decoders(name, base.model, sparse=True, values_dtype=None)
    bf16 = lean_decoders(name, base.model, sparse=True, values_dtype=torch.bfloat16)
    decoders |= {name: d for name, d in bf16.items() if "sparse" in name}
    measured = compare_speed(
        decoders, prefill_tokens=256, new_tokens=64, rounds=rounds, batches=(1, 4)
    )
    for name, speed in measured.items():
        one, four = speed["decode_batch_1"], speed["decode_batch_4"]
        print(
            f"{name:<45} prefill {speed['prefill_tokens_per_s']:7.0f}  decode b1 "
            f"{one['median']:6.1f} [{one['min']:.1f}-{one['max']:.1f}]  b4 {four['median']:6.1f}",
            flush=True,
        )
    return measured


def print_llama_cpp(row: dict) -> None:
    if not row["installed"]:
        print("llama.cpp: llama-bench is not installed here (no row)")
    elif "error" in row:
        print(f"llama.cpp: {row['error']}")
    else:
        print(f"llama.cpp (Q4_1 GGUF) prefill {row['prefill']:.0f}  decode b1 {row['decode']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["size", "matmul", "decode", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.7, help="Of the decode part.")
    parser.add_argument("--amounts", default="0.5,0.7,0.8,0.9,2:4")
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    if args.part in ("size", "all"):
        rows = size_rows(args.amounts)
        write_json(RESULTS / "sparse_size.json", {"model": "SmolLM2-135M-Instruct", "rows": rows})
    if args.part in ("matmul", "all"):
        rows = matmul_rows(args.repeats)
        settings = {"threads": torch.get_num_threads(), "repeats": args.repeats}
        write_json(RESULTS / "sparse_matmul.json", {"settings": settings, "rows": rows})
    if args.part in ("decode", "all"):
        measured = decode_rows(args.rounds, args.sparsity)
        llama_cpp = llama_cpp_row()
        print_llama_cpp(llama_cpp)
        settings = {"threads": torch.get_num_threads(), "rounds": args.rounds}
        pruning = f"magnitude {args.sparsity:.0%}".replace("%", " %")
        settings |= {"prefill_tokens": 256, "new_tokens": 64, "pruning": pruning}
        suffix = "" if args.sparsity == 0.7 else f"_{round(args.sparsity * 100)}"
        write_json(
            RESULTS / f"sparse_decode{suffix}.json",
            {
                "settings": settings,
                "decoders": measured,
                "llama_cpp": llama_cpp,
                "peak_rss_mib": peak_rss_mb(),
            },
        )


if __name__ == "__main__":
    main()
