"""Dense baseline: perplexity of the real SmolLM2-135M on the default evaluation text.

Prints a table and writes bench/results/eval_baseline.json. Run: python bench/eval_baseline.py
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from llmprune.evaluate import sparsity_summary
from llmprune.evaluate.perplexity import evaluate_text
from llmprune.io import write_json
from llmprune.models import load_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="pydoc")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "eval_baseline.json")
    args = parser.parse_args()

    start = time.perf_counter()
    loaded = load_model(args.model)
    load_seconds = time.perf_counter() - start
    result = evaluate_text(loaded, args.data, "eval", args.seqlen, args.max_windows)
    summary = sparsity_summary(loaded.model)
    record = {
        "model": loaded.source,
        "data": f"{args.data}:eval",
        **result.to_dict(),
        "parameters": summary["parameters"],
        "prunable_sparsity": summary["prunable_sparsity"],
        "load_seconds": load_seconds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }
    print(
        f"{'model':<10} {'data':<12} {'seqlen':>6} {'windows':>7} {'tokens':>7} {'ppl':>8} {'s':>6}"
    )
    print(
        f"{loaded.source:<10} {record['data']:<12} {result.seqlen:>6} {result.windows:>7} "
        f"{result.tokens:>7} {result.perplexity:>8.3f} {result.seconds:>6.1f}"
    )
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
