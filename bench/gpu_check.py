"""One short check of the CUDA path on a machine with one GPU and no network.

Builds LLaMA-shaped models with random weights from a config (nothing is downloaded),
then on the device: Wanda and SparseGPT in memory and streamed from a safetensors folder
this script writes, a few mask-preserving fine-tuning steps, sparsity and finiteness
checks, seconds per block, and a 2:4 matmul with torch's semi-structured sparse tensors
against dense bf16 on 7B-sized layers. Every part is timed and guarded: a failure is
recorded and the next part runs. Results: JSON (default bench/results/gpu_check.json).

    python bench/gpu_check.py --device cuda --size 1b      # bench/gpu_check.sh wraps this
    python bench/gpu_check.py --device cpu --size tiny     # the same code paths, on a CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import torch

SIZES = {  # LLaMA shapes: hidden, intermediate, layers, heads, kv heads
    "tiny": (256, 688, 4, 8, 4),
    "1b": (2048, 5632, 22, 32, 4),
    "3b": (3200, 8640, 26, 32, 32),
    "8b": (4096, 14336, 32, 32, 8),
}


def llama(size: str, vocab: int = 32000):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hidden, inter, layers, heads, kv = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")  # bf16 from the start: an 8B model is 16 GB
    generator = torch.Generator().manual_seed(0)
    for param in model.parameters():
        param.data.normal_(0.0, 0.02, generator=generator)
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # tables computed, not random
    return model.eval()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part(results: dict, name: str, run, deadline: float) -> None:
    """Run one part, record its numbers or its error, never stop the script."""
    if time.perf_counter() > deadline:
        results[name] = {"skipped": "time budget spent"}
        return
    start = time.perf_counter()
    try:
        results[name] = run() | {"seconds": round(time.perf_counter() - start, 2)}
    except Exception as exc:  # a check script: record and go on
        results[name] = {
            "error": f"{type(exc).__name__}: {exc}",
            "trace": traceback.format_exc()[-2000:],
        }
    print(name, json.dumps(results[name])[:400], flush=True)


def prune_in_memory(
    model, windows, method: str, device: str, calibration_dtype: str = "auto"
) -> dict:
    from llmprune.models.layout import find_layout, weight_matrix
    from llmprune.pruning import prune

    if device.startswith("cuda"):  # blocks visit the device one at a time
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = prune(
        model,
        None,
        calibration=windows,
        method=method,
        sparsity=0.5,
        device=device,
        progress=False,
        batch_size=1,
        calibration_dtype=calibration_dtype,
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    layout = find_layout(model)
    finite = all(torch.isfinite(weight_matrix(m)).all() for m in layout.linears().values())
    out = {
        "sparsity": round(result.masks.sparsity(), 5),
        "seconds_per_block": round(seconds / layout.num_blocks, 3),
        "finite": bool(finite),
        "masks_hold": not result.masks.violations(model),
        "calibration_compute_dtype": result.compute_dtype,
    }
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def prune_streamed(model, windows, device: str) -> dict:
    from llmprune.models.streaming import ShardWriter, StreamedModel, StreamResidency
    from llmprune.pruning import ModelMasks, prune

    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "dense", Path(tmp) / "pruned"
        model.save_pretrained(source)
        out.mkdir()
        streamed = StreamedModel(source, torch.bfloat16)
        writer = ShardWriter(out)
        residency = StreamResidency(streamed, writer, torch.device(device))
        start = time.perf_counter()
        result = prune(
            streamed.model,
            None,
            calibration=windows,
            method="sparsegpt",
            sparsity=0.5,
            device=device,
            progress=False,
            residency=residency,
            batch_size=1,
        )
        writer.add(streamed.outside_tensors())
        writer.finish()
        seconds = time.perf_counter() - start
        masks: ModelMasks = result.masks
        return {
            "sparsity": round(masks.sparsity(), 5),
            "seconds_per_block": round(seconds / streamed.model.config.num_hidden_layers, 3),
            "files": sorted(p.name for p in out.iterdir())[:6],
        }


def finetune_steps(model, windows, device: str) -> dict:
    from llmprune.finetune import finetune, make_finetune_config
    from llmprune.pruning import prune

    model = model.to(device)
    masks = prune(model, None, method="magnitude", sparsity=0.5, progress=False).masks
    config = make_finetune_config(
        trainable=["norms", "biases"] if device == "cpu" else ["all"],
        steps=3,
        batch_size=1,
        seqlen=windows.shape[1],
        precision="bf16" if device.startswith("cuda") else "fp32",
        device=device,
        learning_rate=1e-5,
    )
    tuned, summary = finetune(model, None, config, masks, windows.repeat(3, 1))
    return {"masks_hold": not masks.violations(tuned), "train_loss": summary["train_loss"]}


def semi_structured_matmul(device: str) -> dict:
    if not device.startswith("cuda"):
        return {"skipped": "semi-structured sparse tensors need CUDA"}
    from torch.sparse import to_sparse_semi_structured

    rows, cols, tokens = 11008, 4096, 128
    weight = torch.randn(rows, cols, dtype=torch.bfloat16, device=device)
    mask = torch.tensor([1, 1, 0, 0], dtype=torch.bool, device=device).repeat(rows, cols // 4)
    weight = weight * mask
    sparse = to_sparse_semi_structured(weight)
    x = torch.randn(cols, tokens, dtype=torch.bfloat16, device=device)

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(50):
            fn()
        synchronize(device)
        return (time.perf_counter() - start) / 50

    dense_s, sparse_s = timed(lambda: weight @ x), timed(lambda: sparse @ x)
    return {
        "shape": [rows, cols, tokens],
        "dense_ms": dense_s * 1e3,
        "sparse_ms": sparse_s * 1e3,
        "speedup": dense_s / sparse_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=list(SIZES), default="1b")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--budget", type=float, default=420.0, help="Seconds for all parts.")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check.json"
    )
    args = parser.parse_args()
    deadline = time.perf_counter() + args.budget
    results: dict = {
        "device": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else platform.processor(),
        "torch": torch.__version__,
        "size": args.size,
        "shape": dict(
            zip(
                ("hidden", "intermediate", "layers", "heads", "kv_heads"),
                SIZES[args.size],
                strict=True,
            )
        ),
    }
    model = llama(args.size)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    windows = torch.randint(
        0,
        model.config.vocab_size,
        (args.windows, args.seqlen),
        generator=torch.Generator().manual_seed(1),
    )
    for method in ("wanda", "sparsegpt"):
        part(
            results,
            f"{method} in memory",
            lambda m=method: prune_in_memory(llama(args.size), windows, m, args.device),
            deadline,
        )
    for precision in ("float32", "bfloat16"):  # fp32 weights: is bf16 calibration faster?
        part(
            results,
            f"wanda fp32 weights, {precision} calibration",
            lambda p=precision: prune_in_memory(
                llama(args.size).float(), windows, "wanda", args.device, p
            ),
            deadline,
        )
    part(
        results, "sparsegpt streamed", lambda: prune_streamed(model, windows, args.device), deadline
    )
    part(
        results,
        "fine-tune 3 steps",
        lambda: finetune_steps(llama(args.size), windows[:1], args.device),
        deadline,
    )
    part(results, "2:4 matmul", lambda: semi_structured_matmul(args.device), deadline)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
