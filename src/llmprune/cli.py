"""The `llmprune` command: one thin typer command per verb over the Python API."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmprune.errors import LLMPruneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Prune Hugging Face causal LMs, recover their quality, and measure both.",
)
console = Console()

ModelArg = Annotated[
    str, typer.Argument(help="Hub id, save_pretrained directory, .gguf file, or 'smollm2'.")
]
DataOpt = Annotated[str, typer.Option("--data", help="pydoc | wikitext2 | c4 | a .txt/.jsonl file")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 | bfloat16 | float16")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N")]


@app.command("eval")
def eval_command(
    model: ModelArg = "smollm2",
    data: DataOpt = "pydoc",
    split: Annotated[str, typer.Option(help="train | eval | all")] = "eval",
    seqlen: Annotated[int, typer.Option(help="Tokens per evaluation window.")] = 512,
    max_windows: Annotated[int | None, typer.Option(help="Evaluate at most this many.")] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    json_path: Annotated[Path, typer.Option("--json", help="Where to write results.")] = Path(
        "eval.json"
    ),
) -> None:
    """Perplexity of MODEL on a text (WikiText-2 protocol) and its sparsity."""
    from llmprune.evaluate import sparsity_summary
    from llmprune.evaluate.perplexity import evaluate_text
    from llmprune.io import write_json
    from llmprune.models import load_model

    start = time.perf_counter()
    loaded = load_model(model, dtype=dtype, device=device)
    result = evaluate_text(loaded, data, split, seqlen, max_windows, batch_size)
    summary = sparsity_summary(loaded.model)
    record = {
        "model": loaded.source,
        "data": data,
        "split": split,
        **result.to_dict(),
        **summary,
        "total_seconds": time.perf_counter() - start,
    }
    table = Table(title=f"perplexity of {loaded.source}")
    for column in ("data", "seqlen", "windows", "tokens", "perplexity", "sparsity", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{data}:{split}",
        str(result.seqlen),
        str(result.windows),
        str(result.tokens),
        f"{result.perplexity:.3f}",
        f"{summary['prunable_sparsity']:.2%}",
        f"{result.seconds:.1f}",
    )
    console.print(table)
    write_json(json_path, record)
    console.print(f"wrote {json_path}")


@app.command("inspect")
def inspect_command(
    model: ModelArg = "smollm2",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Each prunable linear layer's shape, sparsity and N:M pattern."""
    from llmprune.evaluate import sparsity_summary
    from llmprune.io import write_json
    from llmprune.models import load_model

    loaded = load_model(model)
    summary = sparsity_summary(loaded.model)
    table = Table(title=f"prunable layers of {loaded.source}")
    for column in ("layer", "shape", "sparsity", "N:M"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for layer in summary["layers"]:
        shape = "x".join(map(str, layer["shape"]))
        table.add_row(layer["name"], shape, f"{layer['sparsity']:.2%}", layer["nm_pattern"] or "-")
    console.print(table)
    console.print(
        f"parameters {summary['parameters']:,}  prunable {summary['prunable_parameters']:,}  "
        f"prunable sparsity {summary['prunable_sparsity']:.2%}  "
        f"model sparsity {summary['model_sparsity']:.2%}"
    )
    if json_path is not None:
        write_json(json_path, {"model": loaded.source, **summary})


def parse_overrides(values: list[str]) -> dict[str, str]:
    overrides = {}
    for item in values:
        pattern, sep, value = item.partition("=")
        if not sep or not pattern or not value:
            raise LLMPruneError(
                f"--override must look like 'PATTERN=0.7' or 'PATTERN=2:4', got {item!r}"
            )
        overrides[pattern] = value
    return overrides


@app.command("prune")
def prune_command(
    model: ModelArg = "smollm2",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("pruned"),
    method: Annotated[str, typer.Option(help="magnitude | wanda | sparsegpt")] = "sparsegpt",
    sparsity: Annotated[float | None, typer.Option(help="Unstructured fraction in [0, 1).")] = None,
    pattern: Annotated[str | None, typer.Option(help="Semi-structured N:M, e.g. 2:4.")] = None,
    allocation: Annotated[str, typer.Option(help="uniform | owl")] = "uniform",
    targets: Annotated[list[str] | None, typer.Option("--targets", help="Glob of layers.")] = None,
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Glob of layers.")] = None,
    override: Annotated[
        list[str] | None, typer.Option("--override", help="PATTERN=SPARSITY or PATTERN=N:M")
    ] = None,
    calib: Annotated[str, typer.Option(help="Calibration text source.")] = "pydoc",
    nsamples: Annotated[int, typer.Option(help="Calibration windows.")] = 128,
    seqlen: Annotated[int, typer.Option(help="Tokens per window.")] = 512,
    seed: Annotated[int, typer.Option(help="Seed for calibration sampling.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    blocksize: Annotated[int, typer.Option(help="SparseGPT column block.")] = 128,
    dampening: Annotated[float, typer.Option(help="SparseGPT dampening, x mean diag(H).")] = 0.01,
    per_row: Annotated[bool, typer.Option(help="Magnitude: compare within rows.")] = False,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Dense vs pruned ppl.")] = True,
    data: DataOpt = "pydoc",
    eval_windows: Annotated[int | None, typer.Option(help="Max evaluation windows.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
) -> None:
    """Prune MODEL one-shot and save a checkpoint that transformers loads."""
    from llmprune.pipeline import prune_and_save

    config_values = dict(
        method=method,
        sparsity=sparsity,
        pattern=pattern,
        allocation=allocation,
        targets=targets or [],
        ignore=ignore or [],
        overrides=parse_overrides(override or []),
        calib=calib,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        batch_size=batch_size,
        blocksize=blocksize,
        dampening=dampening,
        per_row=per_row,
        device=device,
    )
    record = prune_and_save(
        model,
        out,
        config_values,
        dtype=dtype,
        evaluate=evaluate,
        data=data,
        eval_windows=eval_windows,
        overwrite=overwrite,
    )
    table = Table(title=f"{record['label']} on {record['model']}")
    for column in ("model", "perplexity", "sparsity", "seconds", "peak RSS MiB"):
        table.add_column(column, justify="right")
    dense = record.get("dense_perplexity")
    if dense is not None:
        table.add_row("dense", f"{dense:.3f}", "0.00%", "", "")
    pruned_ppl = record.get("perplexity")
    table.add_row(
        "pruned",
        f"{pruned_ppl:.3f}" if pruned_ppl is not None else "-",
        f"{record['sparsity']:.2%}",
        f"{record['prune_seconds']:.1f}",
        f"{record['peak_rss_mb']:.0f}",
    )
    console.print(table)
    console.print(f"saved {record['out']}")


@app.command("run")
def run_command(
    recipe: Annotated[
        Path | None, typer.Argument(help="YAML recipe; without one, the demo recipe.")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Where stages are written.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue a killed run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run.")] = False,
) -> None:
    """Run a recipe: prune / fine-tune / evaluate stages, perplexity after each."""
    from llmprune.recipe import load_recipe
    from llmprune.run import run_recipe

    loaded = load_recipe(recipe)
    name = recipe.stem if recipe is not None else "demo"
    root = run_dir or Path("runs") / f"{name}-{loaded.fingerprint()[:8]}"
    console.print(f"run directory {root}")
    log = run_recipe(loaded, root, resume=resume, overwrite=overwrite, echo=console.print)
    table = Table(title=f"{name}: perplexity after each step")
    for column in ("step", "stage", "perplexity", "sparsity", "seconds"):
        table.add_column(column, justify="right")
    for line in log:
        table.add_row(
            str(line["step"]),
            line["label"],
            f"{line['perplexity']:.3f}",
            f"{line['sparsity']:.2%}",
            f"{line['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"log {root / 'log.jsonl'}")


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        app(standalone_mode=False)
    except LLMPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
