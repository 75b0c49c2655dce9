"""Structured pruning on SmolLM2-135M: FFN channels, heads and blocks, each score,
perplexity before and after a short PERP+LoRA recovery, and prefill/decode speed
against the dense model measured side by side.

Three parts (all by default), written to bench/results/structured.json as they finish:
- grid: 20 and 50 % of FFN channels, 1/3 and 2/3 of the key-value groups, 1–8 blocks,
  with every score (no recovery);
- equal: about 30 % of the block parameters removed three ways (FFN only, FFN + heads,
  blocks), every score, perplexity before and after recovery — the fair comparison;
- speed: prefill (512 tokens) and decode (greedy, KV cache) tokens/s of each shape vs
  dense, in interleaved rounds;
- widths (only when asked): the same removals with uniform widths and with widths
  ranked model-wide (--widths global), Wanda-sp and FLAP, no recovery.

    python bench/structured.py [--parts grid equal speed] [--recovery-steps 20]
    python bench/structured.py --parts widths --out bench/results/structured_widths.json
    python bench/structured.py --parts grid --grid heads=0.333 heads=0.667 \
        --head-unit query --out bench/results/structured_query_heads.json
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from llmprune.data import calibration_sample
from llmprune.evaluate.perplexity import evaluate_text
from llmprune.evaluate.speed import compare_speed
from llmprune.finetune import finetune, make_finetune_config
from llmprune.io import write_json
from llmprune.models import load_model
from llmprune.models.loading import max_context
from llmprune.pruning import ModelMasks
from llmprune.structured import structured_prune

RESULTS = Path(__file__).parent / "results"
SCORES = ("wanda-sp", "flap", "taylor")
BLOCK_SCORES = ("influence", "angular")
GRID = ["ffn=0.2", "ffn=0.5", "heads=0.333", "heads=0.667"]
GRID_BLOCKS = ["blocks=1", "blocks=2", "blocks=4", "blocks=8"]
# each removes about 30 % of SmolLM2's block parameters (29.7 %, 30.2 %, 30.0 %)
EQUAL = ["ffn=0.4", "ffn=0.3,heads=0.333", "blocks=9"]
WIDTHS = ["ffn=0.3", "ffn=0.5", "ffn=0.3,heads=0.333"]
SPEED = ["ffn=0.4", "ffn=0.3,heads=0.333", "blocks=9", "ffn=0.5", "heads=0.667", "blocks=4"]


def ppl(loaded, args) -> float:
    return evaluate_text(
        loaded, "pydoc", "eval", args.seqlen, args.eval_windows, progress=False
    ).perplexity


def scores_for(spec: str) -> tuple[str, ...]:
    return BLOCK_SCORES if spec.startswith("blocks") else SCORES


def cut(base, spec: str, score: str, windows, args, widths: str = "uniform"):
    loaded = copy.deepcopy(base)
    options = {"block_score": score} if spec.startswith("blocks") else {"score": score}
    options["head_unit"] = args.head_unit
    options["widths"] = widths
    start = time.perf_counter()
    result = structured_prune(
        loaded.model, loaded.tokenizer, calibration=windows, remove=spec, progress=False, **options
    )
    return loaded, result, time.perf_counter() - start


def recover(loaded, args) -> float:
    config = make_finetune_config(
        trainable=["biases", "norms", "lora"],
        steps=args.recovery_steps,
        learning_rate=args.perp_lr,
        batch_size=args.batch_size,
        seqlen=args.seqlen,
        lora_rank=16,
    )
    loaded.model, _ = finetune(loaded.model, loaded.tokenizer, config, ModelMasks())
    return ppl(loaded, args)


def row(spec, score, result, seconds, perplexity) -> dict:
    params = result.manifest["parameters"]
    return {
        "removal": spec,
        "score": score,
        "parameters": params["after"]["model"],
        "block_parameters_removed": 1 - params["after"]["blocks"] / params["before"]["blocks"],
        "parameters_removed": 1 - params["after"]["model"] / params["before"]["model"],
        "achieved": result.manifest["achieved"],
        "perplexity": perplexity,
        "prune_seconds": seconds,
    }


def run_rows(base, specs, windows, args, data, key, shapes, recovery: bool) -> None:
    for spec in specs:
        for score in scores_for(spec):
            loaded, result, seconds = cut(base, spec, score, windows, args)
            entry = row(spec, score, result, seconds, ppl(loaded, args))
            if recovery:
                start = time.perf_counter()
                entry["recovered_perplexity"] = recover(loaded, args)
                entry["recovery_seconds"] = time.perf_counter() - start
            shapes.setdefault(spec, loaded)
            data[key].append(entry)
            recovered = entry.get("recovered_perplexity")
            print(
                f"{spec:<22}{score:<10} params -{entry['block_parameters_removed']:.1%} of blocks"
                f"  ppl {entry['perplexity']:.2f}"
                + (f" -> {recovered:.2f} after recovery" if recovered else ""),
                flush=True,
            )
            write_json(args.out, data)


def widths_rows(base, windows, args, data) -> None:
    """The same removal with every block cut alike and with widths ranked model-wide."""
    for spec in WIDTHS:
        for score in ("wanda-sp", "flap"):
            for widths in ("uniform", "global"):
                loaded, result, seconds = cut(base, spec, score, windows, args, widths)
                entry = row(spec, score, result, seconds, ppl(loaded, args)) | {"widths": widths}
                data["widths"].append(entry)
                per_layer = result.manifest["achieved"].get("intermediate_size")
                print(
                    f"{spec:<22}{score:<10}{widths:<8} ppl {entry['perplexity']:.2f}"
                    f"  FFN widths {per_layer}",
                    flush=True,
                )
                write_json(args.out, data)


def speed_rows(base, shapes, windows, args, data) -> None:
    for spec in SPEED:
        model = shapes.get(spec)
        if model is None:
            model, _, _ = cut(base, spec, scores_for(spec)[0], windows, args)
        measured = compare_speed(
            {"dense": base.model, spec: model.model},
            prefill_tokens=args.prefill_tokens,
            new_tokens=args.new_tokens,
            rounds=args.rounds,
        )
        dense, pruned = measured["dense"], measured[spec]
        entry = {
            "removal": spec,
            "parameters": sum(p.numel() for p in model.model.parameters()),
            "dense": dense,
            "pruned": pruned,
            "prefill_speedup": pruned["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
            "decode_speedup": pruned["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
        }
        data["speed"].append(entry)
        print(
            f"{spec:<22} prefill {entry['prefill_speedup']:.2f}x  "
            f"decode {entry['decode_speedup']:.2f}x  "
            f"(dense {dense['prefill_tokens_per_s']:.0f} prefill, "
            f"{dense['decode_tokens_per_s']:.1f} decode tokens/s)",
            flush=True,
        )
        write_json(args.out, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["grid", "equal", "speed"])
    parser.add_argument("--grid", nargs="*", default=GRID + GRID_BLOCKS, help="Grid removals.")
    parser.add_argument("--head-unit", choices=["kv-group", "query"], default="kv-group")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--recovery-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--perp-lr", type=float, default=5e-4)
    parser.add_argument("--prefill-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "structured.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    base = load_model("smollm2")
    context = max_context(base.model.config)
    windows = calibration_sample(
        base.tokenizer, "pydoc", args.nsamples, args.seqlen, args.seed, context
    )
    data = {
        "model": "SmolLM2-135M",
        "settings": vars(args) | {"out": str(args.out), "threads": torch.get_num_threads()},
        "dense": {
            "parameters": sum(p.numel() for p in base.model.parameters()),
            "perplexity": ppl(base, args),
        },
        "grid": [],
        "equal": [],
        "speed": [],
        "widths": [],
    }
    print(f"dense ppl {data['dense']['perplexity']:.2f}", flush=True)
    shapes: dict = {}
    if "grid" in args.parts:
        run_rows(base, args.grid, windows, args, data, "grid", shapes, recovery=False)
    if "equal" in args.parts:
        run_rows(base, EQUAL, windows, args, data, "equal", shapes, recovery=True)
    if "speed" in args.parts:
        speed_rows(base, shapes, windows, args, data)
    if "widths" in args.parts:
        widths_rows(base, windows, args, data)
    write_json(args.out, data)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
