"""Pruning while training on SmolLM2-135M, at budgets that fit a CPU: gradual (cubic)
pruning vs one-shot SparseGPT followed by the same number of fine-tuning steps, each
with and without distillation from the dense model; L1 + threshold; and a learned
structured run vs the one-shot structured prune of the same size.

Every run trains the same number of steps on the same windows of the train split;
perplexity is measured on the eval split. Rows are written to
bench/results/train_time.json as they finish.

    python bench/train_time.py [--targets 0.5 0.7] [--steps 40] [--parts gradual l1 learned]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from llmprune.evaluate.perplexity import evaluate_text
from llmprune.finetune import finetune, make_finetune_config
from llmprune.finetune.trainer import training_windows
from llmprune.gradual import gradual_prune, make_gradual_config
from llmprune.io import write_json
from llmprune.models import load_model
from llmprune.pruning import make_config, prune
from llmprune.structured import structured_prune
from llmprune.structured.learned import learn_structure, make_learned_config

RESULTS = Path(__file__).parent / "results"


def ppl(loaded, args) -> float:
    return evaluate_text(
        loaded, "pydoc", "eval", args.seqlen, args.eval_windows, progress=False
    ).perplexity


def train_options(args, distill: float) -> dict:
    return dict(
        steps=args.steps,
        batch_size=args.batch_size,
        seqlen=args.seqlen,
        learning_rate=args.lr,
        distill=distill,
    )


def record(data, args, row: dict) -> None:
    data["rows"].append(row)
    print(
        f"{row['run']:<44} ppl {row['perplexity']:>9.2f}"
        + (f"  sparsity {row['sparsity']:.3f}" if "sparsity" in row else "")
        + f"  {row['seconds']:.0f} s",
        flush=True,
    )
    write_json(args.out, data)


def gradual_rows(base, args, windows, data) -> None:
    for target in args.targets:
        for distill in (0.0, args.distill):
            tag = f" + distill {distill:g}" if distill else ""
            loaded, start = copy.deepcopy(base), time.perf_counter()
            config = make_gradual_config(
                **train_options(args, distill),
                sparsity=target,
                schedule="cubic",
                start_step=1,
                every=max(1, args.steps // 8),
            )
            loaded.model, masks, _ = gradual_prune(
                loaded.model,
                loaded.tokenizer,
                config,
                None,
                windows,
                base.model if distill else None,
            )
            record(
                data,
                args,
                {
                    "run": f"gradual cubic 0→{target:g}{tag}",
                    "target": target,
                    "distill": distill,
                    "perplexity": ppl(loaded, args),
                    "sparsity": masks.sparsity(),
                    "seconds": time.perf_counter() - start,
                },
            )
            loaded, start = copy.deepcopy(base), time.perf_counter()
            prune_config = make_config(
                method="sparsegpt", sparsity=target, nsamples=args.nsamples, seqlen=args.seqlen
            )
            masks = prune(loaded.model, loaded.tokenizer, prune_config, progress=False).masks
            one_shot = ppl(loaded, args)
            tune = make_finetune_config(**train_options(args, distill))
            loaded.model, _ = finetune(
                loaded.model,
                loaded.tokenizer,
                tune,
                masks,
                windows,
                teacher=base.model if distill else None,
            )
            record(
                data,
                args,
                {
                    "run": f"SparseGPT {target:g} + {args.steps} steps FT{tag}",
                    "target": target,
                    "distill": distill,
                    "perplexity": ppl(loaded, args),
                    "before_ft": one_shot,
                    "sparsity": masks.sparsity(),
                    "seconds": time.perf_counter() - start,
                },
            )


def l1_rows(base, args, windows, data) -> None:
    loaded, start = copy.deepcopy(base), time.perf_counter()
    config = make_gradual_config(
        **train_options(args, 0.0),
        l1=args.l1,
        threshold=args.tau,
        start_step=args.steps,
        every=1,
        prunes=0,
    )
    loaded.model, masks, summary = gradual_prune(
        loaded.model, loaded.tokenizer, config, None, windows
    )
    record(
        data,
        args,
        {
            "run": f"L1 λ={args.l1:g} + threshold {args.tau:g}",
            "perplexity": ppl(loaded, args),
            "sparsity": masks.sparsity(),
            "trade_off": summary["regularization"],
            "seconds": time.perf_counter() - start,
        },
    )


def learned_rows(base, args, windows, data) -> None:
    loaded, start = copy.deepcopy(base), time.perf_counter()
    config = make_learned_config(
        **train_options(args, 0.0),
        sparsity=args.structured_target,
        units=["ffn", "heads"],
        target_warmup=args.steps // 2,
    )
    loaded.model, _, summary = learn_structure(
        loaded.model, loaded.tokenizer, config, None, windows
    )
    params = sum(p.numel() for p in loaded.model.parameters())
    structure = summary["structure"]
    record(
        data,
        args,
        {
            "run": f"learned ffn+heads → {args.structured_target:g} of block params",
            "perplexity": ppl(loaded, args),
            "parameters": params,
            "ffn_width": structure["ffn_width"],
            "heads_per_group": structure["query_heads_per_group"],
            "seconds": time.perf_counter() - start,
        },
    )
    # the one-shot structured prune to the same widths, then the same fine-tuning
    loaded, start = copy.deepcopy(base), time.perf_counter()
    dense = base.model.config
    group = dense.num_attention_heads // dense.num_key_value_heads
    spec = f"ffn={1 - structure['ffn_width'] / dense.intermediate_size:.4f}"
    if structure["query_heads_per_group"] < group:
        spec += f",heads={1 - structure['query_heads_per_group'] / group:.4f}"
    structured_prune(
        loaded.model,
        loaded.tokenizer,
        remove=spec,
        score="wanda-sp",
        head_unit="query",
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        progress=False,
    )
    tune = make_finetune_config(**train_options(args, 0.0))
    loaded.model, _ = finetune(loaded.model, loaded.tokenizer, tune, None, windows)
    record(
        data,
        args,
        {
            "run": f"one-shot Wanda-sp to the same widths ({spec}) + {args.steps} steps FT",
            "perplexity": ppl(loaded, args),
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "seconds": time.perf_counter() - start,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["gradual", "l1", "learned"])
    parser.add_argument("--targets", type=float, nargs="*", default=[0.5, 0.7])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--distill", type=float, default=0.5)
    parser.add_argument("--l1", type=float, default=50.0)
    parser.add_argument("--tau", type=float, default=0.01)
    parser.add_argument("--structured-target", type=float, default=0.3)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "train_time.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    base = load_model("smollm2")
    windows = training_windows(base.tokenizer, make_finetune_config(**train_options(args, 0.0)))
    data = {
        "model": "SmolLM2-135M",
        "settings": vars(args) | {"out": str(args.out), "threads": torch.get_num_threads()},
        "dense_perplexity": ppl(base, args),
        "rows": [],
    }
    print(f"dense ppl {data['dense_perplexity']:.2f}", flush=True)
    if "gradual" in args.parts:
        gradual_rows(base, args, windows, data)
    if "l1" in args.parts:
        l1_rows(base, args, windows, data)
    if "learned" in args.parts:
        learned_rows(base, args, windows, data)
    write_json(args.out, data)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
