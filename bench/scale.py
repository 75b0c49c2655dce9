"""Streamed pruning of LLaMA-shaped models from 0.5 B to 1.5 B parameters, and what 7 B and
70 B models would need by the same figures.

The benchmark writes its own checkpoints (random weights, bf16, sharded safetensors, one
block in memory at a time; nothing is downloaded), then prunes each one streamed with
Wanda and SparseGPT at 50 % on a few short calibration windows, every job in its own
process. It reports peak RSS against the target "the largest block's weights × 3 + the
fixed baseline" (the baseline is measured: the runtime after imports, plus the
embeddings and head a streamed prune keeps in memory), seconds per block, and how both
grow with the number of blocks. The memory the prune would need for 7 B / 70 B comes
from the same estimate the streamed prune checks before it starts
(`pruning/footprint.py`); times are the measured seconds per block scaled by each
method's arithmetic.

    python bench/scale.py                       # 7, 17, 30 blocks: 0.5, 1.0, 1.5 B
    python bench/scale.py --blocks 2 --hidden 256 --intermediate 704   # a quick try
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
GIB = 2**30

# reference shapes (config.json of the public checkpoints)
REFERENCE = {
    "LLaMA-2 7B": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32, blocks=32),
    "LLaMA-2 70B": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8, blocks=80),
}
REFERENCE_VOCAB = 32000


def llama_config(hidden: int, intermediate: int, heads: int, kv_heads: int, blocks: int, vocab):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=blocks,
        vocab_size=vocab,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )


def write_random_checkpoint(config, out: Path, tokenizer_dir: Path, shard_gib: float) -> dict:
    """A checkpoint of random bf16 weights (std 0.02, norms 1) written block by block."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from llmprune.models.streaming import ShardWriter

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True)
    writer = ShardWriter(out, max_shard_bytes=int(shard_gib * GIB))
    generator = torch.Generator().manual_seed(0)
    blocks: dict[int, dict] = {}
    for name, param in skeleton.named_parameters():
        if name.endswith("norm.weight"):
            value = torch.ones(param.shape, dtype=torch.bfloat16)
        else:
            value = torch.empty(param.shape, dtype=torch.float32)
            value.normal_(0.0, 0.02, generator=generator)
            value = value.to(torch.bfloat16)
        writer.add_tensor(name, value)
        del value
        if ".layers." in name:
            index = int(name.split(".layers.")[1].split(".")[0])
            blocks.setdefault(index, {"bytes": 0})["bytes"] += param.numel() * 2
    writer.finish()
    config.save_pretrained(out)
    for item in tokenizer_dir.iterdir():
        if item.name.startswith("tokenizer") or item.name == "special_tokens_map.json":
            shutil.copy(item, out / item.name)
    parameters = sum(p.numel() for p in skeleton.parameters())
    block_bytes = max(b["bytes"] for b in blocks.values())
    return {
        "parameters": parameters,
        "block_bytes": block_bytes,
        "outside_bytes": parameters * 2 - sum(b["bytes"] for b in blocks.values()),
        "disk_bytes": sum(f.stat().st_size for f in out.glob("*.safetensors")),
        "shards": len(list(out.glob("*.safetensors"))),
    }


def footprint_mb(config, method: str, nsamples: int, seqlen: int) -> float:
    """The streamed prune's own estimate of one block's visit (pruning/footprint.py)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from llmprune.models.layout import find_layout
    from llmprune.pruning import make_config
    from llmprune.pruning.footprint import block_footprint

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    options = dict(method=method, sparsity=0.5, nsamples=nsamples, seqlen=seqlen)
    footprint = block_footprint(find_layout(skeleton), make_config(**options), torch.bfloat16)
    return footprint.total / 2**20


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_job(job: dict) -> dict:
    """One streamed prune in this process: peak RSS, seconds, and the guard's estimate."""
    torch.set_num_threads(job["threads"])
    from llmprune.plans import prune_and_save, summary
    from llmprune.pruning import make_config

    runtime_mb = current_rss_mb()  # torch, transformers and llmprune imported
    calibration = torch.load(job["calib"])
    config = make_config(
        method=job["method"],
        sparsity=0.5,
        nsamples=calibration.shape[0],
        seqlen=calibration.shape[1],
    )
    with tempfile.TemporaryDirectory(dir=job["scratch"]) as tmp:
        record = summary(
            prune_and_save(
                job["model_dir"],
                Path(tmp) / "out",
                config,
                dtype="bfloat16",
                evaluate=False,
                progress=False,
                calibration=calibration,
                echo=lambda *_: None,
            )
        )
    return {
        "runtime_mb": runtime_mb,
        "peak_rss_mb": record["peak_rss_mb"],
        "prune_seconds": record["prune_seconds"],
        "sparsity": record["sparsity"],
        "streamed": record["streamed"],
    }


def spawn(job: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"])}
    process = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
    )
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            return {**job, **json.loads(line[7:])}
    tail = (process.stderr.strip().splitlines() or ["no output"])[-1]
    return {**job, "error": tail}


def block_flops(hidden: int, intermediate: int, heads: int, kv_heads: int, method: str) -> float:
    """Arithmetic of pruning one block, for scaling measured seconds to other shapes.

    SparseGPT: per layer rows × cols² (the lazy column updates) plus cols³ (the Hessian's
    Cholesky factors and inverse); Wanda: the forward passes, proportional to the block's
    weights (the calibration tokens are the same)."""
    kv = hidden * kv_heads // heads
    layers = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden)]
    layers += [(intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    if method == "sparsegpt":
        return sum(rows * cols * cols + cols**3 for rows, cols in layers)
    return float(sum(rows * cols for rows, cols in layers))


def projections(rows: list[dict], shape: dict, nsamples: int, seqlen: int) -> list[dict]:
    """7 B / 70 B by the same figures: the guard's per-block estimate (bf16 weights), disk
    for the input and the pruned output, and seconds per block scaled by arithmetic."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from llmprune.models.layout import find_layout
    from llmprune.pruning import make_config
    from llmprune.pruning.footprint import block_footprint

    measured = {}
    for row in rows:
        if "error" in row:
            continue
        seconds = row["prune_seconds"] / row["blocks"]
        flops = block_flops(
            shape["hidden"], shape["intermediate"], shape["heads"], shape["kv_heads"], row["method"]
        )
        measured.setdefault(row["method"], []).append(seconds / flops)
    runtime = max((r["runtime_mb"] for r in rows if "error" not in r), default=0.0)
    out = []
    for name, ref in REFERENCE.items():
        config = llama_config(**ref, vocab=REFERENCE_VOCAB)
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
        layout = find_layout(skeleton)
        parameters = sum(p.numel() for p in skeleton.parameters())
        block = sum(p.numel() for p in layout.blocks[0].parameters()) * 2
        outside = parameters * 2 - block * ref["blocks"]
        for method, rates in measured.items():
            flops = block_flops(
                ref["hidden"], ref["intermediate"], ref["heads"], ref["kv_heads"], method
            )
            per_block = sorted(rates)[len(rates) // 2] * flops
            row = {
                "model": name,
                "method": method,
                "parameters": parameters,
                "block_gib": block / GIB,
                "outside_gib": outside / GIB,
                "disk_gib": 2 * parameters * 2 / GIB,  # the input and the pruned output
                "seconds_per_block": per_block,
                "hours": per_block * ref["blocks"] / 3600,
            }
            # the benchmark's own calibration, and the papers' 128 windows of 2048 tokens
            calibrations = {"bench": (nsamples, seqlen), "papers": (128, 2048)}
            for label, (count, length) in calibrations.items():
                options = dict(method=method, sparsity=0.5, nsamples=count, seqlen=length)
                footprint = block_footprint(layout, make_config(**options), torch.bfloat16)
                row[f"footprint_gib_{label}"] = footprint.total / GIB
                row[f"memory_gib_{label}"] = (runtime * 2**20 + outside + footprint.total) / GIB
            out.append(row)
    return out


def print_tables(result: dict) -> None:
    print(f"\nthreads {result['threads']}; calibration {result['nsamples']} × {result['seqlen']}")
    print(
        f"{'params':>8}{'blocks':>7}{'method':>10}{'peak MiB':>10}{'target MiB':>11}"
        f"{'ok':>4}{'s/block':>9}{'block MiB':>10}{'outside MiB':>12}"
    )
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['parameters'] / 1e9:>7.2f}B{r['blocks']:>7}{r['method']:>10}  {r['error']}")
            continue
        print(
            f"{r['parameters'] / 1e9:>7.2f}B{r['blocks']:>7}{r['method']:>10}"
            f"{r['peak_rss_mb']:>10.0f}{r['target_mb']:>11.0f}{'yes' if r['within'] else 'no':>4}"
            f"{r['prune_seconds'] / r['blocks']:>9.2f}{r['block_bytes'] / 2**20:>10.0f}"
            f"{r['outside_bytes'] / 2**20:>12.0f}"
        )
    print(
        f"\n{'model':<13}{'method':>10}{'block GiB':>10}{'RAM GiB':>9}{'RAM 128x2048':>13}"
        f"{'disk GiB':>9}{'s/block':>9}{'hours':>7}"
    )
    for p in result["projections"]:
        print(
            f"{p['model']:<13}{p['method']:>10}{p['block_gib']:>10.2f}"
            f"{p['memory_gib_bench']:>9.1f}{p['memory_gib_papers']:>13.1f}"
            f"{p['disk_gib']:>9.0f}{p['seconds_per_block']:>9.1f}{p['hours']:>7.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--blocks", default="7,17,30", help="model sizes, in decoder blocks")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard-gib", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_job(json.loads(args.worker))), flush=True)
        return

    from llmprune.data import calibration_windows, get_source, source_tokens
    from llmprune.io import write_json
    from llmprune.models import load_model
    from llmprune.models.loading import default_model_dir

    tokenizer = load_model("smollm2").tokenizer  # converts the offline model once if needed
    vocab = len(tokenizer)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llmprune-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_windows(
        source_tokens(tokenizer, get_source("pydoc"), "train"), args.nsamples, args.seqlen, 0
    )
    torch.save(calib, work / "calib.pt")
    shape = dict(
        hidden=args.hidden, intermediate=args.intermediate, heads=args.heads, kv_heads=args.kv_heads
    )
    rows = []
    try:
        for blocks in [int(b) for b in args.blocks.split(",")]:
            model_dir = work / f"llama-{blocks}-blocks"
            started = time.perf_counter()
            facts = write_random_checkpoint(
                llama_config(**shape, blocks=blocks, vocab=vocab),
                model_dir,
                default_model_dir(),
                args.shard_gib,
            )
            print(
                f"wrote {facts['parameters'] / 1e9:.2f} B parameters in {facts['shards']} "
                f"shards, {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            for method in args.methods.split(","):
                job = {
                    "model_dir": str(model_dir),
                    "calib": str(work / "calib.pt"),
                    "scratch": str(work),
                    "method": method,
                    "threads": args.threads,
                }
                row = {**spawn(job), **facts, "blocks": blocks}
                config = llama_config(**shape, blocks=blocks, vocab=vocab)
                row["estimate_mb"] = footprint_mb(config, method, args.nsamples, args.seqlen)
                if "error" not in row:
                    baseline = row["runtime_mb"] + facts["outside_bytes"] / 2**20
                    row["baseline_mb"] = baseline
                    row["target_mb"] = baseline + 3 * facts["block_bytes"] / 2**20
                    row["within"] = row["peak_rss_mb"] <= row["target_mb"]
                print(
                    f"  {method}: {row.get('peak_rss_mb', row.get('error'))} MiB, "
                    f"{row.get('prune_seconds', 0):.0f} s",
                    flush=True,
                )
                rows.append(
                    {k: v for k, v in row.items() if k not in ("model_dir", "calib", "scratch")}
                )
            shutil.rmtree(model_dir)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {
        "shape": shape,
        "vocab": vocab,
        "dtype": "bfloat16",
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
        "projections": projections(rows, shape, args.nsamples, args.seqlen),
    }
    print_tables(result)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
