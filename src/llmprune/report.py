"""Tables and plots of a sweep or a run: JSON + CSV + Markdown, and PNG figures.

The figures follow the papers: perplexity against sparsity per method on a log axis
(dense as a dotted line, N:M patterns as separate markers at their sparsity, numbers
after recovery dashed), zero-shot accuracy against sparsity with ±1 standard error, and
OWL's per-block sparsity.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from llmprune.errors import LLMPruneError
from llmprune.io import write_json, write_text
from llmprune.pruning.amounts import parse_pattern
from llmprune.pruning.methods import METHODS

COLUMNS = [
    "method",
    "allocation",
    "amount",
    "sparsity",
    "perplexity",
    "ppl_vs_dense",
    "zero_shot_acc",
    "seconds",
]
RECOVERED_COLUMNS = ["ppl_recovered", "zero_shot_acc_recovered"]
PATTERN_MARKERS = {"2:4": "*", "4:8": "X"}


def point_amount(point: dict) -> str:
    """A point's amount ("0.5", "2:4"); sweeps written before 2026-11 called it "target"."""
    return point.get("amount", point.get("target"))


def zero_shot_acc(point: dict) -> float | None:
    """Mean accuracy over the point's zero-shot tasks (the papers' "average" column)."""
    tasks = point.get("zero_shot") or {}
    values = [m["acc"] for m in tasks.values() if "acc" in m]
    return sum(values) / len(values) if values else None


def zero_shot_stderr(point: dict) -> float | None:
    """Binomial standard error of the mean accuracy: small offline tasks are noisy.

    Each task's accuracy is a mean of n 0/1 outcomes, so its error is
    sqrt(acc (1 - acc) / (n - 1)), as lm-eval computes it; the mean over k tasks has the
    root of the summed variances over k.
    """
    tasks = [m for m in (point.get("zero_shot") or {}).values() if "acc" in m]
    if not tasks or any(m.get("sample_len", 0) < 2 for m in tasks):
        return None
    variance = sum(m["acc"] * (1 - m["acc"]) / (m["sample_len"] - 1) for m in tasks)
    return variance**0.5 / len(tasks)


def new_figure(size: tuple[float, float]):
    """A figure and its axis on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save_figure(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def method_rank(point: dict) -> tuple[int, bool]:
    """Dense first, then the papers' method order; uniform before OWL allocation."""
    order = ("dense", *METHODS)
    rank = order.index(point["method"]) if point["method"] in order else len(order)
    return rank, point.get("allocation") == "owl"


def task_names(points: list[dict]) -> list[str]:
    names = {task for p in points for task in (p.get("zero_shot") or {})}
    return sorted(names)


def rows(points: list[dict]) -> list[dict]:
    """One row per point, dense first, then per method: unstructured by sparsity, N:M."""
    dense = next((p["perplexity"] for p in points if p["method"] == "dense"), None)
    tasks = task_names(points)
    table = []
    for p in sorted(
        points,
        key=lambda p: (
            method_rank(p)[0],
            p["method"],
            p.get("allocation", ""),
            "pattern" in p,
            p.get("sparsity", 0.5),
        ),
    ):
        recovered = p.get("recovered") or {}
        row = {
            "method": p["method"],
            "allocation": p.get("allocation", "uniform"),
            "amount": point_amount(p),
            "sparsity": p.get("sparsity_measured", p.get("sparsity", 0.5)),
            "perplexity": p["perplexity"],
            "ppl_vs_dense": p["perplexity"] / dense if dense else None,
            "zero_shot_acc": zero_shot_acc(p),
            "seconds": p.get("seconds"),
            "ppl_recovered": recovered.get("perplexity"),
            "zero_shot_acc_recovered": zero_shot_acc(recovered) if recovered else None,
        }
        for task in tasks:
            row[task] = (p.get("zero_shot") or {}).get(task, {}).get("acc")
        table.append(row)
    return table


def table_columns(table: list[dict]) -> list[str]:
    """COLUMNS, plus per-task accuracy when there is more than one task, plus the numbers
    after recovery when the sweep recovered its points."""
    columns = list(COLUMNS)
    known = set(COLUMNS) | set(RECOVERED_COLUMNS)
    tasks = [c for c in (table[0] if table else {}) if c not in known]
    if len(tasks) > 1:
        at = columns.index("zero_shot_acc")
        columns[at:at] = tasks
    for column in RECOVERED_COLUMNS:
        if any(row.get(column) is not None for row in table):
            columns.insert(columns.index("seconds"), column)
    return columns


def markdown_table(table: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in table]
    return "\n".join(lines) + "\n"


def write_tables(points: list[dict], out: Path) -> tuple[list[dict], list[str]]:
    table = rows(points)
    columns = table_columns(table)
    write_json(out / "results.json", table)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    write_text(out / "results.csv", buffer.getvalue())
    write_text(out / "results.md", markdown_table(table, columns))
    return table, columns


def series(points: list[dict]) -> dict[str, list[dict]]:
    """Unstructured points grouped per method (+ allocation), in the papers' method order."""
    grouped: dict[str, list[dict]] = {}
    for p in sorted(points, key=method_rank):
        if p["method"] == "dense" or "pattern" in p:
            continue
        label = p["method"] + (" + OWL" if p.get("allocation") == "owl" else "")
        grouped.setdefault(label, []).append(p)
    return {k: sorted(v, key=lambda p: p["sparsity"]) for k, v in grouped.items()}


def after_recovery(metric):
    """The same metric read from a point's `recovered` record (None where there is none)."""

    def value(point: dict):
        recovered = point.get("recovered")
        return metric(recovered) if recovered else None

    return value


def draw_lines(axis, grouped: dict, value, error, recovered: bool, colors: dict) -> None:
    """One line per method over sparsity, with a ±error band; dashed after recovery."""
    markers = iter("osD^v<>")
    for label, group in grouped.items():
        marker = next(markers)
        shown = [p for p in group if value(p) is not None]
        if not shown:
            continue
        xs, ys = [p["sparsity"] for p in shown], [value(p) for p in shown]
        method, owl = label.split(" ")[0], label.endswith("OWL")
        (line,) = axis.plot(
            xs,
            ys,
            marker=marker,
            linestyle="--" if recovered else ("-." if owl else "-"),
            markerfacecolor="white" if recovered else None,
            color=colors.get(label) or (colors.get(method) if owl else None),
            label=f"{label} + recovery" if recovered else label,
        )
        colors.setdefault(label, line.get_color())
        colors.setdefault(method, line.get_color())
        if error:
            spread = [error(p) or 0 for p in shown]
            pairs = list(zip(ys, spread, strict=True))
            low, high = [y - e for y, e in pairs], [y + e for y, e in pairs]
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.12, linewidth=0)


def draw_patterns(axis, points: list[dict], value, error, recovered: bool, colors: dict) -> None:
    """N:M points at their sparsity (1 - N/M), nudged apart per method so none hides."""
    methods = [m for m in METHODS if any(p["method"] == m and "pattern" in p for p in points)]
    for p in points:
        if "pattern" not in p or value(p) is None:
            continue
        nudge = 0.012 * (methods.index(p["method"]) - (len(methods) - 1) / 2)
        color = colors.get(p["method"], "black")
        axis.errorbar(
            [parse_pattern(p["pattern"]).fraction + nudge],
            [value(p)],
            yerr=[error(p) or 0] if error else None,
            marker=PATTERN_MARKERS.get(p["pattern"], "P"),
            markersize=11,
            markeredgecolor=color if recovered else "black",
            markerfacecolor="white" if recovered else color,
            color=color,
            capsize=3 if error else 0,
            zorder=3,
        )


def pattern_handles(points: list[dict]) -> list:
    from matplotlib.lines import Line2D

    patterns = sorted({p["pattern"] for p in points if "pattern" in p})
    return [
        Line2D(
            [],
            [],
            marker=PATTERN_MARKERS.get(t, "P"),
            markersize=10,
            color="white",
            markerfacecolor="lightgray",
            markeredgecolor="black",
            label=f"{t} (N:M)",
        )
        for t in patterns
    ]


def plot_metric(
    points: list[dict], value, ylabel: str, path: Path, log: bool, error=None
) -> Path | None:
    """The papers' figure: a metric against sparsity, one line per method (and allocation).

    N:M patterns are marked points at their sparsity; points with a recovery record add
    the same metric after recovery as dashed lines and hollow markers, in the same colour.
    """
    dense = next((p for p in points if p["method"] == "dense"), None)
    grouped = series(points)
    if not grouped or all(value(p) is None for g in grouped.values() for p in g):
        return None
    figure, axis = new_figure((7.5, 4.8))
    colors: dict = {}
    for recovered in (False, True):
        metric = after_recovery(value) if recovered else value
        spread = (after_recovery(error) if recovered else error) if error else None
        draw_lines(axis, grouped, metric, spread, recovered, colors)
        draw_patterns(axis, points, metric, spread, recovered, colors)
    handles, _ = axis.get_legend_handles_labels()
    handles += pattern_handles(points)
    if dense is not None and value(dense) is not None:
        handles.append(axis.axhline(value(dense), color="gray", linestyle=":", label="dense"))
    if log:
        axis.set_yscale("log")
    axis.set_xlabel("sparsity of the pruned linear layers")
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(handles=handles, fontsize=8, ncol=2)
    return save_figure(figure, path)


def plot_owl(points: list[dict], path: Path) -> Path | None:
    owl = [p for p in points if p.get("allocation") == "owl" and p.get("block_sparsity")]
    if not owl:
        return None
    figure, axis = new_figure((8, 4))
    for p in sorted(owl, key=lambda p: (p["method"], p["sparsity"])):
        blocks = p["block_sparsity"]
        (line,) = axis.plot(
            range(len(blocks)), blocks, marker=".", label=f"{p['method']}, mean {point_amount(p)}"
        )
        axis.axhline(p["sparsity"], color=line.get_color(), linestyle=":", linewidth=1)
    axis.set_xlabel("decoder block")
    axis.set_ylabel("sparsity of the block (OWL)")
    axis.set_title("OWL: fewer weights pruned in blocks with more outliers", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(figure, path)


def sweep_figures(points: list[dict], out: Path) -> list[Path]:
    figures = [
        plot_metric(
            points,
            lambda p: p["perplexity"],
            "perplexity (log)",
            out / "perplexity_vs_sparsity.png",
            log=True,
        ),
        plot_metric(
            points,
            zero_shot_acc,
            "zero-shot accuracy (±1 standard error)",
            out / "zeroshot_vs_sparsity.png",
            log=False,
            error=zero_shot_stderr,
        ),
        plot_owl(points, out / "owl_block_sparsity.png"),
    ]
    return [f for f in figures if f is not None]


def sweep_setup(settings: dict, points: list[dict]) -> str:
    """The sentence a reader needs to compare these numbers with anyone else's."""
    source = settings.get("calib", "pydoc")
    text = (
        f"Calibration: {settings.get('nsamples')} windows of {settings.get('seqlen')} tokens "
        f"from the {source} train split. Perplexity: "
    )
    tokens = next((p.get("eval_tokens") for p in points if p.get("eval_tokens")), None)
    text += f"{tokens} tokens" if tokens else "the windows"
    text += f" of the {source} eval split, windows of {settings.get('seqlen')} tokens."
    tasks = settings.get("zero_shot_tasks")
    if tasks:
        counts = {
            task: int(metrics.get("sample_len", 0))
            for p in points
            for task, metrics in (p.get("zero_shot") or {}).items()
        }
        text += " Zero-shot (lm-eval): " + ", ".join(
            f"{task} ({counts.get(task, '?')} examples)" for task in tasks
        )
        text += "."
    return text


def render_report(directory: str | Path) -> Path:
    """One Markdown page for a sweep directory or a run directory."""
    from llmprune.run import LOG_FILE, read_log
    from llmprune.sweep import SWEEP_FILE, load_points

    directory = Path(directory)
    if (directory / SWEEP_FILE).is_file():
        points = load_points(directory)
        table, columns = write_tables(points, directory)
        figures = sweep_figures(points, directory)
        settings = json.loads((directory / SWEEP_FILE).read_text())
        body = f"# Sweep of {settings['model']}\n\n{sweep_setup(settings, points)}\n\n"
        body += markdown_table(table, columns)
    elif (directory / LOG_FILE).is_file():
        log = read_log(directory)
        figures = [plot_run(log, directory / "perplexity_by_step.png")]
        body = "# Run\n\n" + markdown_table(
            log, ["step", "label", "perplexity", "sparsity", "seconds"]
        )
    else:
        raise LLMPruneError(f"{directory} holds neither a sweep nor a run")
    body += "".join(f"\n![{f.stem}]({f.name})\n" for f in figures)
    path = directory / "report.md"
    write_text(path, body)
    return path


def plot_run(log: list[dict], path: Path) -> Path:
    figure, axis = new_figure((7, 4))
    measured = [r for r in log if r.get("perplexity") is not None]
    axis.plot([r["step"] for r in measured], [r["perplexity"] for r in measured], marker="o")
    axis.set_xticks(
        [r["step"] for r in log], [r["label"] for r in log], rotation=30, ha="right", fontsize=7
    )
    axis.set_yscale("log")
    axis.set_ylabel("perplexity (log)")
    axis.grid(True, which="both", alpha=0.3)
    return save_figure(figure, path)
