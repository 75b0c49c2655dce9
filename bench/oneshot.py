"""One-shot pruning of SmolLM2-135M: llmprune's methods, and llmcompressor side by side.

Every job runs in its own subprocess (so peak RSS is per job), on the same cached model,
the same calibration token windows (drawn once by seed and handed to both tools) and the
same evaluation windows. llmprune and llmcompressor jobs alternate, so machine noise hits
both alike. Prints a table and writes bench/results/oneshot.json.

    bash bench/setup_peer.sh && bench/.venv-peer/bin/python bench/oneshot.py
(without llmcompressor installed, its rows are skipped and the ratios left out)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llmprune.pruning.config import amount_options
from llmprune.pruning.methods import METHODS

RESULTS = Path(__file__).parent / "results"
OURS = list(METHODS)
PEER = ["wanda", "sparsegpt"]


def eval_ppl(model, windows_path: str) -> float:
    from llmprune.evaluate import perplexity

    windows = torch.load(windows_path)
    return perplexity(model, windows, batch_size=4, progress=False).perplexity


def run_ours(job: dict) -> dict:
    """llmprune in memory, or (job["stream"]) as the CLI runs it: streamed from the
    checkpoint into an output directory, one block in memory."""
    if job.get("stream"):
        return run_ours_streamed(job)
    from llmprune.evaluate.resources import peak_rss_mb
    from llmprune.models import load_model
    from llmprune.pruning import make_config, prune

    loaded = load_model(job["model_dir"])
    calibration = torch.load(job["calib"])
    config = make_config(
        method=job["method"],
        allocation=job.get("allocation", "uniform"),
        nsamples=calibration.shape[0],
        seqlen=calibration.shape[1],
        calibration_dtype=job.get("precision", "float32"),
        **amount_options(job["target"]),
    )
    start = time.perf_counter()
    result = prune(loaded.model, calibration=calibration, config=config, progress=False)
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    return {
        "seconds": seconds,
        "peak_rss_mb": rss,
        "sparsity": result.masks.sparsity(),
        "perplexity": eval_ppl(loaded.model, job["eval"]),
    }


def run_ours_streamed(job: dict) -> dict:
    from llmprune.models import load_model
    from llmprune.plans import prune_and_save, summary
    from llmprune.pruning import make_config

    calibration = torch.load(job["calib"])
    options = {
        "method": job["method"],
        "allocation": job.get("allocation", "uniform"),
        "nsamples": calibration.shape[0],
        "seqlen": calibration.shape[1],
        "calibration_dtype": job.get("precision", "float32"),
        **amount_options(job["target"]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        record = summary(
            prune_and_save(
                job["model_dir"],
                Path(tmp) / "out",
                make_config(**options),
                evaluate=False,
                progress=False,
                calibration=calibration,
                echo=lambda *_: None,
            )
        )
        pruned = load_model(record["out"])
        ppl = eval_ppl(pruned.model, job["eval"])
    return {
        "seconds": record["prune_seconds"],
        "peak_rss_mb": record["peak_rss_mb"],
        "sparsity": record["sparsity"],
        "streamed": record["streamed"],
        "perplexity": ppl,
    }


def run_peer(job: dict) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmprune.evaluate import sparsity_summary
    from llmprune.evaluate.resources import peak_rss_mb

    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(job["model_dir"])
    calibration = torch.load(job["calib"])
    dataset = Dataset.from_dict(
        {
            "input_ids": calibration.tolist(),
            "attention_mask": torch.ones_like(calibration).tolist(),
        }
    )
    target = job["target"]
    options = (
        {"sparsity": 0.5, "mask_structure": target}
        if ":" in target
        else {"sparsity": float(target), "mask_structure": "0:0"}
    )
    modifier_class = SparseGPTModifier if job["method"] == "sparsegpt" else WandaPruningModifier
    modifier = modifier_class(targets=["Linear"], ignore=["re:.*lm_head"], **options)
    start = time.perf_counter()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=[modifier],
        num_calibration_samples=calibration.shape[0],
        max_seq_length=calibration.shape[1],
        shuffle_calibration_samples=False,
        batch_size=1,
    )
    seconds = time.perf_counter() - start
    rss = peak_rss_mb()
    model.eval()
    return {
        "seconds": seconds,
        "peak_rss_mb": rss,
        "sparsity": sparsity_summary(model)["prunable_sparsity"],
        "perplexity": eval_ppl(model, job["eval"]),
    }


def worker(spec: str) -> None:
    job = json.loads(spec)
    torch.set_num_threads(job["threads"])  # once, before any work
    result = run_peer(job) if job["tool"] == "llmcompressor" else run_ours(job)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(job: dict, log) -> dict:
    process = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(job["threads"])},
    )
    log.write(process.stdout + process.stderr)
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**job, **json.loads(line[7:])}
    tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
    return {**job, "error": tail}


def peer_available() -> bool:
    try:
        import llmcompressor  # noqa: F401
    except ImportError:
        return False
    return True


def prepare(args, workdir: Path) -> tuple[dict, float]:
    from llmprune.data import calibration_windows, eval_windows, get_source, source_tokens
    from llmprune.evaluate import perplexity
    from llmprune.models import load_model
    from llmprune.models.loading import default_model_dir

    loaded = load_model(args.model)
    source = get_source(args.data)
    calib = calibration_windows(
        source_tokens(loaded.tokenizer, source, "train"), args.nsamples, args.seqlen, args.seed
    )
    evals = eval_windows(
        source_tokens(loaded.tokenizer, source, "eval"), args.seqlen, args.eval_windows
    )
    torch.save(calib, workdir / "calib.pt")
    torch.save(evals, workdir / "eval.pt")
    dense = perplexity(loaded.model, evals, batch_size=4, progress=False).perplexity
    model_dir = str(default_model_dir()) if args.model == "smollm2" else args.model
    base = {
        "model_dir": model_dir,
        "calib": str(workdir / "calib.pt"),
        "eval": str(workdir / "eval.pt"),
    }
    return base, dense


def jobs(
    base: dict,
    targets: list[str],
    peer_targets: list[str],
    owl_targets: list[str],
    with_peer: bool,
    methods: list[str] = OURS,
    precisions: tuple[str, ...] = ("float32",),
) -> list[dict]:
    planned = []
    for target in targets:
        for method in methods:
            for precision in precisions if METHODS[method].needs_calibration else ("float32",):
                planned.append(
                    {
                        **base,
                        "tool": "llmprune",
                        "method": method,
                        "target": target,
                        "precision": precision,
                    }
                )
            if with_peer and method in PEER and target in peer_targets:
                planned.append(
                    {**base, "tool": "llmcompressor", "method": method, "target": target}
                )
    for target in owl_targets:
        for method in ("wanda", "sparsegpt"):
            planned.append(
                {
                    **base,
                    "tool": "llmprune",
                    "method": method,
                    "target": target,
                    "allocation": "owl",
                }
            )
    return planned


def add_ratios(rows: list[dict]) -> None:
    peers = {
        (r["method"], r["target"]): r
        for r in rows
        if r["tool"] == "llmcompressor" and "error" not in r
    }
    for row in rows:
        peer = peers.get((row["method"], row["target"]))
        if row.get("precision", "float32") != "float32":  # compared with our fp32 row instead
            ours = [
                r
                for r in rows
                if r["tool"] == "llmprune"
                and (r["method"], r["target"]) == (row["method"], row["target"])
                and r.get("precision") == "float32"
                and r.get("allocation") != "owl"
                and "error" not in r
            ]
            if ours and "error" not in row:
                row["vs_fp32_calibration"] = {
                    key: row[key] / ours[0][key] for key in ("perplexity", "seconds")
                }
        if (
            row["tool"] != "llmprune"
            or row.get("allocation") == "owl"
            or not peer
            or "error" in row
        ):
            continue
        row["vs_llmcompressor"] = {
            key: row[key] / peer[key] for key in ("perplexity", "seconds", "peak_rss_mb")
        }


def print_table(rows: list[dict], dense: float) -> None:
    print(f"\ndense perplexity {dense:.3f}")
    header = (
        f"{'tool':<14}{'method':<14}{'calib':>6}{'target':>7}{'sparsity':>9}{'ppl':>10}"
        f"{'s':>8}{'RSS MiB':>9}"
    )
    print(header + f"{'ppl x':>8}{'time x':>8}{'RSS x':>8}")
    for r in rows:
        name = r["method"] + ("+owl" if r.get("allocation") == "owl" else "")
        calib = {"float32": "fp32", "bfloat16": "bf16"}.get(r.get("precision", "float32"))
        if "error" in r:
            print(f"{r['tool']:<14}{name:<14}{calib:>6}{r['target']:>7}  error: {r['error'][:60]}")
            continue
        ratio = r.get("vs_llmcompressor")
        extra = (
            f"{ratio['perplexity']:>8.3f}{ratio['seconds']:>8.2f}{ratio['peak_rss_mb']:>8.2f}"
            if ratio
            else ""
        )
        if "vs_fp32_calibration" in r:
            fp32 = r["vs_fp32_calibration"]
            extra = f"   vs fp32 calibration: ppl x {fp32['perplexity']:.4f}"
            extra += f", time x {fp32['seconds']:.2f}"
        print(
            f"{r['tool']:<14}{name:<14}{calib:>6}{r['target']:>7}{r['sparsity']:>9.3f}"
            f"{r['perplexity']:>10.3f}{r['seconds']:>8.1f}{r['peak_rss_mb']:>9.0f}" + extra
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--data", default="pydoc")
    parser.add_argument("--targets", default="0.5,2:4,0.7")
    parser.add_argument("--peer-targets", default="0.5,2:4", help="llmcompressor runs these")
    parser.add_argument("--owl-targets", default="0.7")
    parser.add_argument("--stream", action="store_true", help="llmprune streams from disk")
    parser.add_argument("--no-peer", action="store_true", help="skip llmcompressor")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-windows", type=int, default=None)
    parser.add_argument("--methods", default=",".join(OURS), help="llmprune methods to run")
    parser.add_argument(
        "--precisions", default="float32", help="calibration compute: float32,bfloat16"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of every job")
    parser.add_argument("--out", type=Path, default=RESULTS / "oneshot.json")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    with_peer = peer_available() and not args.no_peer
    if not with_peer:
        print("llmcompressor is not installed here: its rows are skipped (bench/setup_peer.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        base, dense = prepare(args, Path(tmp))
        base["stream"] = args.stream
        base["threads"] = args.threads
        rows = []
        with open(Path(tmp) / "log.txt", "w") as log:
            planned = jobs(
                base,
                split(args.targets),
                split(args.peer_targets),
                split(args.owl_targets),
                with_peer,
                split(args.methods),
                tuple(split(args.precisions)),
            )
            for job in planned:
                rows.append(spawn(job, log))
                save(args, dense, rows, partial=True)
                row = rows[-1]
                print(
                    f"  {row['tool']} {row['method']} {row.get('precision', '')} {row['target']}"
                    f" {row.get('allocation', '')}"
                    f" -> {row.get('perplexity', row.get('error'))}",
                    flush=True,
                )
            add_ratios(rows)
    print_table(rows, dense)
    save(args, dense, rows, partial=False)
    print(f"wrote {args.out}")


def split(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def save(args, dense: float, rows: list[dict], partial: bool) -> None:
    from llmprune.io import write_json

    hidden = ("model_dir", "calib", "eval")
    write_json(
        args.out,
        {
            "model": args.model,
            "data": args.data,
            "nsamples": args.nsamples,
            "seqlen": args.seqlen,
            "seed": args.seed,
            "dense_perplexity": dense,
            "torch": torch.__version__,
            "threads": args.threads,
            "partial": partial,
            "rows": [{k: v for k, v in r.items() if k not in hidden} for r in rows],
        },
    )


if __name__ == "__main__":
    main()
