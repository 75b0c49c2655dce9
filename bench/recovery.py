"""Recovery after pruning on SmolLM2-135M: full fine-tuning vs PERP vs PERP+LoRA,
and iterative prune → fine-tune schedules vs one-shot at the same fine-tuning budget.

Fine-tuning reads the train part of the default text, perplexity the eval part (they
share no text). Prints a table and writes bench/results/recovery.json.

    python bench/recovery.py [--steps 60] [--eval-windows 24]
    python bench/recovery.py --only oneshot --recoveries perp+lora   # LoRA masked vs not
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from llmprune.evaluate.perplexity import evaluate_text
from llmprune.finetune import finetune, make_finetune_config
from llmprune.io import write_json
from llmprune.models import load_model
from llmprune.pruning import ModelMasks, make_config, prune

RESULTS = Path(__file__).parent / "results"
RECOVERIES = {
    "full": (["all"], None),
    "perp (biases+norms)": (["biases", "norms"], None),
    # LoRA trained dense and masked only at merge (the model trained is not the one shipped)
    "perp+lora r16, masked at merge": (["biases", "norms", "lora"], "plain"),
    # PERP's masked adapter W + (B·A) ⊙ M, trained as shipped (llmprune's default)
    "perp+lora r16, masked in training": (["biases", "norms", "lora"], "masked"),
}


def ppl(loaded, args) -> float:
    return evaluate_text(
        loaded, "pydoc", "eval", args.seqlen, args.eval_windows, progress=False
    ).perplexity


def tune(loaded, masks, parts, steps, args, lora_mode=None) -> dict:
    lr = args.full_lr if parts == ["all"] else args.perp_lr
    config = make_finetune_config(
        trainable=parts,
        steps=steps,
        learning_rate=lr,
        batch_size=args.batch_size,
        seqlen=args.seqlen,
        warmup_steps=max(1, steps // 10),
        lora_rank=16,
        lora_mode=lora_mode,
    )
    model, summary = finetune(loaded.model, loaded.tokenizer, config, masks)
    loaded.model = model
    assert not masks.violations(model), "a pruned weight moved"
    return summary


def prune_once(loaded, method, sparsity, args, existing=None):
    config = make_config(
        method=method, sparsity=sparsity, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed
    )
    return prune(loaded.model, loaded.tokenizer, config, existing=existing, progress=False)


def one_shot_rows(base, args) -> list[dict]:
    rows = []
    for method in ("magnitude", "sparsegpt"):
        pruned = copy.deepcopy(base)
        masks = prune_once(pruned, method, 0.5, args).masks
        before = ppl(pruned, args)
        rows.append({"method": method, "sparsity": 0.5, "recovery": "none", "ppl": before})
        print(f"{method} 0.5 one-shot: {before:.2f}", flush=True)
        for name, (parts, lora_mode) in RECOVERIES.items():
            if args.recoveries and not any(name.startswith(k) for k in args.recoveries):
                continue
            model = copy.deepcopy(pruned)
            start = time.perf_counter()
            summary = tune(model, masks, parts, args.steps, args, lora_mode)
            after = ppl(model, args)
            rows.append(
                {
                    "method": method,
                    "sparsity": 0.5,
                    "recovery": name,
                    "ppl": after,
                    "trainable_fraction": summary["trainable_fraction"],
                    "steps": args.steps,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(
                f"  + {name}: {after:.2f} ({summary['trainable_fraction']:.3%} trainable)",
                flush=True,
            )
    return rows


def schedule_rows(base, args) -> list[dict]:
    """Iterative 0.1 … 0.8 vs one-shot 0.8, each with the same total fine-tuning steps."""
    schedule = [round(0.1 * k, 1) for k in range(1, 9)]
    per_step = max(1, args.schedule_steps // len(schedule))
    rows = []
    for method in ("magnitude", "sparsegpt"):
        model, masks = copy.deepcopy(base), ModelMasks()
        start = time.perf_counter()
        for sparsity in schedule:
            masks = prune_once(model, method, sparsity, args, existing=masks).masks
            tune(model, masks, ["all"], per_step, args)
        rows.append(
            {
                "method": method,
                "sparsity": 0.8,
                "recovery": "iterative 0.1→0.8",
                "ppl": ppl(model, args),
                "steps": per_step * len(schedule),
                "seconds": time.perf_counter() - start,
                "final_sparsity": masks.sparsity(),
            }
        )
        model = copy.deepcopy(base)
        start = time.perf_counter()
        masks = prune_once(model, method, 0.8, args).masks
        no_ft = ppl(model, args)
        tune(model, masks, ["all"], per_step * len(schedule), args)
        rows.append(
            {
                "method": method,
                "sparsity": 0.8,
                "recovery": "one-shot + full FT",
                "ppl": ppl(model, args),
                "ppl_before_ft": no_ft,
                "steps": per_step * len(schedule),
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"{method} 0.8: iterative {rows[-2]['ppl']:.2f} vs one-shot {rows[-1]['ppl']:.2f}"
            f" (one-shot before FT {no_ft:.2f})",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--schedule-steps", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--perp-lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["oneshot", "schedule"], default=None)
    parser.add_argument(
        "--recoveries", nargs="*", default=[], help="only recoveries whose names start so"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "recovery.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    base = load_model("smollm2")
    dense = ppl(base, args)
    print(f"dense: {dense:.2f}", flush=True)
    rows = []
    if args.only in (None, "oneshot"):
        rows += one_shot_rows(base, args)
    if args.only in (None, "schedule"):
        rows += schedule_rows(base, args)
    print(
        f"\n{'method':<11}{'sparsity':>9}  {'recovery':<36}{'ppl':>9}{'trainable':>11}{'steps':>7}"
    )
    for r in rows:
        frac = f"{r['trainable_fraction']:.3%}" if "trainable_fraction" in r else ""
        print(
            f"{r['method']:<11}{r['sparsity']:>9}  {r['recovery']:<36}{r['ppl']:>9.2f}"
            f"{frac:>11}{r.get('steps', ''):>7}"
        )
    write_json(
        args.out,
        {"dense_ppl": dense, "settings": vars(args) | {"out": str(args.out)}, "rows": rows},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
