"""The `llmprune` command: one thin typer command per verb over the Python API."""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmprune.cli_options import config_options
from llmprune.compare import CompareConfig
from llmprune.errors import LLMPruneError
from llmprune.pruning.config import PruneConfig
from llmprune.stages.export import ExportStage
from llmprune.structured.config import StructuredConfig
from llmprune.sweep import SweepConfig

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
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
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
    if json_path is not None:
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


@app.command("prune")
@config_options
def prune_command(
    config: PruneConfig | StructuredConfig,
    model: ModelArg = "smollm2",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("pruned"),
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Dense vs pruned ppl.")] = True,
    data: DataOpt = "pydoc",
    eval_windows: Annotated[int | None, typer.Option(help="Max evaluation windows.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    stream: Annotated[
        bool, typer.Option(help="Stream a safetensors model block by block from disk.")
    ] = True,
    dtype: DtypeOpt = "float32",
) -> None:
    """Prune MODEL one-shot and save a checkpoint that transformers loads.

    Unstructured (--sparsity) or N:M (--pattern) with --method; or structured
    (--structured ffn=0.3,heads=0.25,blocks=2 with --score), which removes units and
    saves a smaller model."""
    from llmprune.plans import prune_and_save, summary

    records = prune_and_save(
        model,
        out,
        config,
        dtype=dtype,
        evaluate=evaluate,
        data=data,
        eval_windows=eval_windows,
        overwrite=overwrite,
        stream=stream,
        echo=console.print,
    )
    result = summary(records)
    structured = result["structured"]
    size = "parameters" if structured else "sparsity"
    table = Table(title=f"{result['label']} on {model}")
    for column in ("model", "perplexity", size, "seconds", "peak RSS MiB"):
        table.add_column(column, justify="right")
    if structured:
        before, after = (structured["parameters"][k]["model"] for k in ("before", "after"))
        dense_size, pruned_size = f"{before:,}", f"{after:,} ({after / before:.1%})"
    else:
        dense_size, pruned_size = "0.00%", f"{result['sparsity']:.2%}"
    if result["dense_perplexity"] is not None:
        table.add_row("dense", f"{result['dense_perplexity']:.3f}", dense_size, "", "")
    pruned_ppl = result["perplexity"]
    table.add_row(
        "pruned",
        f"{pruned_ppl:.3f}" if pruned_ppl is not None else "-",
        pruned_size,
        f"{result['prune_seconds']:.1f}",
        f"{result['peak_rss_mb']:.0f}",
    )
    console.print(table)
    console.print(f"saved {result['out']}" + (" (streamed)" if result["streamed"] else ""))


@app.command("export")
@config_options
def export_command(
    config: ExportStage,
    model: ModelArg = "smollm2",
    dtype: DtypeOpt = "float32",
) -> None:
    """Write MODEL as a sparse folder (bitmask + packed values) that shrinks with sparsity."""
    from llmprune.run import execute_plan
    from llmprune.stages import ModelState, StageContext, Step

    state = ModelState(source=model, dtype=dtype)
    ctx = StageContext(echo=lambda *_: None)
    record = execute_plan([Step("export", config)], state, ctx, Path(config.out))[-1]
    console.print(
        f"wrote {record['out']}: {record['layers']} sparse layers, "
        f"{record['bytes'] / 2**20:.1f} MiB of tensors "
        f"({record['bytes'] / record['dense_bytes']:.2f}x dense)"
        + (
            f"; values rounded by at most {record['max_rounding']:.2e}"
            if record["max_rounding"]
            else ""
        )
    )


@app.command("densify")
def densify_command(
    folder: Annotated[Path, typer.Argument(help="An exported sparse folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Write an exported sparse folder back as a plain checkpoint transformers loads."""
    from llmprune.export.sparse import is_sparse_folder
    from llmprune.models import find_layout, load_model, weight_matrix
    from llmprune.pruning import ModelMasks
    from llmprune.run import execute_plan
    from llmprune.stages import ModelState, StageContext, make_steps

    if not is_sparse_folder(folder):
        raise LLMPruneError(f"{folder} is not an exported sparse folder")
    steps = make_steps("save", {"out": str(out), "overwrite": overwrite})
    state = ModelState(source=str(folder))
    steps[0].spec.check(steps[0].config, state)  # before the model is rebuilt
    state.loaded = load_model(folder)
    layers = find_layout(state.loaded.model).linears()
    zeros = {n: weight_matrix(m) != 0 for n, m in layers.items()}
    state.masks = ModelMasks({n: keep for n, keep in zeros.items() if not bool(keep.all())})
    execute_plan(steps, state, StageContext(echo=lambda *_: None), out)
    console.print(f"wrote {out}")


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
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    table = Table(title=f"{name}: perplexity after each step")
    for column in ("step", "stage", "perplexity", "sparsity", "seconds"):
        table.add_column(column, justify="right")
    for line in log:
        table.add_row(
            str(line["step"]),
            line["label"],
            number(line.get("perplexity")),
            f"{line['sparsity']:.2%}",
            f"{line['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"log {root / 'log.jsonl'}")


@app.command("sweep")
@config_options
def sweep_command(
    config: SweepConfig,
    model: ModelArg = "smollm2",
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory.")] = Path("sweep"),
) -> None:
    """Prune and evaluate MODEL over methods x sparsities; tables, plots, report."""
    from llmprune.report import render_report
    from llmprune.sweep import run_sweep

    points = run_sweep(config, out, echo=console.print)
    report = render_report(out)
    console.print((out / "results.md").read_text())
    console.print(f"{len(points)} points; report {report}")


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="A sweep or run directory.")],
) -> None:
    """Render one Markdown page with the tables and PNG plots of a sweep or a run."""
    from llmprune.report import render_report

    console.print(f"wrote {render_report(directory)}")


@app.command("zeroshot")
def zeroshot_command(
    model: ModelArg = "smollm2",
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval tasks.")] = (
        "llmprune_lastword"
    ),
    limit: Annotated[int | None, typer.Option(help="Examples per task.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    data: DataOpt = "pydoc",
    json_path: Annotated[Path | None, typer.Option("--json", help="Write JSON here.")] = None,
) -> None:
    """Zero-shot accuracy via lm-evaluation-harness (offline: llmprune_lastword)."""
    from llmprune.evaluate.zeroshot import check_tasks, task_manager, zero_shot
    from llmprune.io import write_json
    from llmprune.models import load_model

    names = [task.strip() for task in tasks.split(",") if task.strip()]
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        check_tasks(names, task_manager(Path(scratch), data))  # before loading the model
    loaded = load_model(model)
    results = zero_shot(loaded.model, loaded.tokenizer, names, limit, batch_size, data=data)
    table = Table(title=f"zero-shot: {loaded.source}")
    for column in ("task", "acc", "perplexity"):
        table.add_column(column, justify="right")
    for task, metrics in results.items():
        ppl = metrics.get("perplexity")
        table.add_row(
            task,
            f"{metrics.get('acc', float('nan')):.3f}",
            f"{ppl:.2f}" if ppl is not None else "-",
        )
    console.print(table)
    if json_path is not None:
        write_json(json_path, {"model": loaded.source, "results": results})


@app.command("compare")
@config_options
def compare_command(
    config: CompareConfig,
    dense: Annotated[str, typer.Argument(help="The reference (dense) model.")],
    pruned: Annotated[list[str], typer.Argument(help="One or more pruned models.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results directory.")] = Path("compare"),
) -> None:
    """Generate greedily from dense and pruned models; repetition, length, ROUGE-L, and
    with --summarize faithfulness to the document and the hallucination risk ratio."""
    from llmprune.compare import run_compare

    summary = run_compare(dense, pruned, out, config)
    table = Table(title="behaviour of generations")
    table.add_column("model")
    for column in config.columns:
        table.add_column(column, justify="right")
    for source, metrics in summary.items():
        table.add_row(source, *(number(metrics[c]) for c in config.columns))
    console.print(table)
    console.print(f"wrote compare.json, compare.md and side_by_side.txt in {out}")


@app.command("speed")
def speed_command(
    models: Annotated[list[str], typer.Argument(help="Models; ratios are to the first row.")],
    prefill_tokens: Annotated[int, typer.Option(min=2, help="Prompt length for prefill.")] = 512,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens to decode.")] = 64,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (median).")] = 3,
    batches: Annotated[str, typer.Option(help="Decode batch sizes, comma-separated.")] = "1",
    sparse: Annotated[
        bool,
        typer.Option(
            "--sparse",
            help="Also time the lean decode loop: dense fp32, dense bf16 and on the sparse "
            "kernel (LLaMA-family models).",
        ),
    ] = False,
    values: Annotated[
        str, typer.Option(help="Sparse values (with --sparse): fp32 | bf16 (the bf16 copy).")
    ] = "fp32",
    dtype: DtypeOpt = "float32",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
) -> None:
    """Prefill and decode tokens/s of MODELS, measured side by side in interleaved rounds.
    With --sparse each model is timed as fp32 and as a bf16 copy (--dtype does not apply)."""
    from llmprune.evaluate.resources import peak_rss_mb
    from llmprune.evaluate.speed import compare_speed, lean_decoders
    from llmprune.io import write_json
    from llmprune.models import load_model
    from llmprune.provenance import environment

    sizes = parse_batches(batches)
    values_dtype = parse_values(values, sparse)
    if sparse and dtype != "float32":
        raise LLMPruneError("--sparse times fp32 and bf16 copies of each model; drop --dtype")
    loaded = {source: load_model(source, dtype=dtype) for source in models}
    vocab = min(len(item.tokenizer) for item in loaded.values())
    decoders = {}
    for source, item in loaded.items():
        if sparse:
            decoders |= lean_decoders(source, item.model, True, values_dtype)
        else:
            decoders[source] = item.model
    measured = compare_speed(
        decoders,
        prefill_tokens=prefill_tokens,
        new_tokens=new_tokens,
        rounds=rounds,
        vocab=vocab,
        batches=sizes,
    )
    print_speed(measured, prefill_tokens, new_tokens, sizes)
    peak = peak_rss_mb()
    console.print(f"peak RSS of this process: {peak:.0f} MiB")
    if json_path is not None:
        settings = {"prefill_tokens": prefill_tokens, "new_tokens": new_tokens, "rounds": rounds}
        settings |= {"dtype": dtype, "batches": list(sizes), "sparse": sparse, "values": values}
        write_json(
            json_path,
            {
                "decoders": measured,
                "settings": settings,
                "peak_rss_mib": peak,
                "environment": environment(),
            },
        )


def parse_values(text: str, sparse: bool):
    """--values of the sparse kernel: None (the layer's own dtype), fp32 or bf16."""
    import torch

    choices = {"model": None, "fp32": torch.float32, "bf16": torch.bfloat16}
    if text not in choices:
        raise LLMPruneError(f"--values takes {', '.join(choices)}, not {text!r}")
    if not sparse and text not in ("model", "fp32"):
        raise LLMPruneError("--values applies to the sparse kernel: add --sparse")
    return choices[text]


def first_token(eos: int | list[int] | None) -> int:
    if eos is None:
        return 0
    return eos[0] if isinstance(eos, list) else eos


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise LLMPruneError(f"--batches takes positive integers such as 1,4, not {text!r}")
    return sizes


def print_speed(measured: dict, prefill_tokens: int, new_tokens: int, sizes) -> None:
    first = next(iter(measured.values()))
    title = f"speed ({prefill_tokens}-token prefill, {new_tokens} decoded tokens; median (min–max))"
    table = Table(title=title)
    table.add_column("decoder")
    table.add_column("prefill tok/s", justify="right")
    table.add_column("×", justify="right")
    for b in sizes:
        table.add_column(f"decode tok/s, batch {b}", justify="right")
        table.add_column("×", justify="right")
    for name, speed in measured.items():
        prefill = speed["prefill_tokens_per_s"]
        row = [name, f"{prefill:.0f}", f"{prefill / first['prefill_tokens_per_s']:.2f}"]
        for b in sizes:
            rate, base = speed[f"decode_batch_{b}"], first[f"decode_batch_{b}"]["median"]
            row.append(f"{rate['median']:.1f} ({rate['min']:.1f}–{rate['max']:.1f})")
            row.append(f"{rate['median'] / base:.2f}")
        table.add_row(*row)
    console.print(table)


@app.command("generate")
def generate_command(
    model: Annotated[str, typer.Argument(help="Model: hub id, folder, .gguf, sparse folder.")],
    prompt: Annotated[str, typer.Option(help="The prompt.")] = "The capital of France is",
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 64,
    sparse: Annotated[
        bool, typer.Option("--sparse", help="Lean decode loop on the sparse kernel.")
    ] = False,
    lean: Annotated[bool, typer.Option("--lean", help="Lean decode loop, dense.")] = False,
    values: Annotated[
        str, typer.Option(help="Sparse values: model (the model's dtype) | fp32 | bf16.")
    ] = "model",
    dtype: DtypeOpt = "float32",
) -> None:
    """Greedy generation by hand: plain transformers `generate`, or the lean loop (--lean),
    or the lean loop on the sparse kernel (--sparse); prints the text and tokens/s."""
    import torch

    from llmprune.models import load_model
    from llmprune.runtime.decode import LeanDecoder

    values_dtype = parse_values(values, sparse)
    if not prompt.strip():
        raise LLMPruneError("--prompt is empty")
    loaded = load_model(model, dtype=dtype)
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise LLMPruneError("--prompt gives no tokens")
    settings = loaded.model.generation_config
    eos = (
        settings.eos_token_id
        if settings.eos_token_id is not None
        else loaded.tokenizer.eos_token_id
    )
    pad = settings.pad_token_id if settings.pad_token_id is not None else first_token(eos)
    if sparse or lean:
        decoder = LeanDecoder(loaded.model, sparse=sparse, values_dtype=values_dtype)
        start = time.perf_counter()
        out = decoder.generate(ids, max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    else:
        start = time.perf_counter()
        with torch.no_grad():
            out = loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
    seconds = time.perf_counter() - start
    new = out.shape[1] - ids.shape[1]
    console.print(loaded.tokenizer.decode(out[0], skip_special_tokens=True))
    path = "sparse lean" if sparse else "lean" if lean else "generate"
    console.print(f"[dim]{new} tokens in {seconds:.2f} s ({new / seconds:.1f} tokens/s, {path})")


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# the machine refused a write: a full disk or quota, a read-only or forbidden place
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # library deprecation notices are for their developers, not for someone pruning a model
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
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
    except OSError as exc:
        if exc.errno not in WRITE_ERRORS:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        tail = "; nothing half-written was left behind" if full else ""
        print(f"error: {exc.strerror or exc}{where}{tail}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # usage errors: typer's own click, or click itself
        import click

        if isinstance(exc, typer.Abort | click.exceptions.Abort):
            sys.exit(1)
        if isinstance(exc, typer.TyperException | click.exceptions.ClickException):
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            print(f"error: {' '.join(message.split())}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
