"""Sparse checkpoints on SmolLM2-135M: how the exported folder's size falls with sparsity.

(a) bytes of the pruned linears and of the whole folder against the dense fp32 model, at
50/70/80/90 % (magnitude; size depends on the amount only) and 2:4, with fp32 values and
with bf16 values. Kernel timings (b) and decode speed (c) are not measured yet.
Prints a table and writes bench/results/sparse_size.json.

    python bench/sparse_runtime.py [--amounts 0.5,0.7,0.8,0.9,2:4]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

from safetensors import safe_open

from llmprune.export.sparse import DENSE_FILE, SPARSE_FILE, export_sparse
from llmprune.io import write_json
from llmprune.models import find_layout, load_model, weight_matrix
from llmprune.pruning import prune
from llmprune.pruning.config import amount_options

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amounts", default="0.5,0.7,0.8,0.9,2:4")
    parser.add_argument("--out", type=Path, default=RESULTS / "sparse_size.json")
    args = parser.parse_args()
    base = load_model("smollm2")
    rows = [
        measure(base, amount, values)
        for amount in args.amounts.split(",")
        for values in ("model", "bf16")
    ]
    print(f"{'amount':>7} {'values':>6} {'linears x':>10} {'folder x':>9} {'folder MiB':>11}")
    for r in rows:
        values = "fp32" if r["values"] == "model" else r["values"]
        print(
            f"{r['amount']:>7} {values:>6} {r['linears_x_dense']:>10.3f} "
            f"{r['folder_x_dense']:>9.3f} {r['folder_mib']:>11.1f}"
        )
    write_json(args.out, {"model": "SmolLM2-135M-Instruct", "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
