"""Tables and plots of a sweep or a run: JSON + CSV + Markdown, and PNG figures.

The figures follow the papers: perplexity against sparsity per method on a log axis
(dense as a dashed line, N:M patterns as separate markers at their sparsity), zero-shot
accuracy against sparsity, and OWL's per-block sparsity.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from llmprune.errors import LLMPruneError
from llmprune.io import write_json

COLUMNS = ["method", "allocation", "target", "sparsity", "perplexity", "zero_shot_acc", "seconds"]


def zero_shot_acc(point: dict) -> float | None:
    tasks = point.get("zero_shot") or {}
    values = [m["acc"] for m in tasks.values() if "acc" in m]
    return sum(values) / len(values) if values else None


def rows(points: list[dict]) -> list[dict]:
    table = []
    for p in sorted(
        points,
        key=lambda p: (
            p["method"] != "dense",
            p["method"],
            p.get("allocation", ""),
            "pattern" in p,
            p.get("sparsity", 0.5),
        ),
    ):
        table.append(
            {
                "method": p["method"],
                "allocation": p.get("allocation", "uniform"),
                "target": p["target"],
                "sparsity": p.get("sparsity_measured", p.get("sparsity", 0.5)),
                "perplexity": p["perplexity"],
                "zero_shot_acc": zero_shot_acc(p),
                "seconds": p.get("seconds"),
            }
        )
    return table


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


def write_tables(points: list[dict], out: Path) -> list[dict]:
    table = rows(points)
    write_json(out / "results.json", table)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out / "results.md").write_text(markdown_table(table, COLUMNS))
    return table


def series(points: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for p in points:
        if p["method"] == "dense" or "pattern" in p:
            continue
        label = p["method"] + (" + OWL" if p.get("allocation") == "owl" else "")
        grouped.setdefault(label, []).append(p)
    return {k: sorted(v, key=lambda p: p["sparsity"]) for k, v in grouped.items()}


def plot_metric(points: list[dict], value, ylabel: str, path: Path, log: bool) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next((p for p in points if p["method"] == "dense"), None)
    grouped = series(points)
    if not grouped or all(value(p) is None for g in grouped.values() for p in g):
        return None
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = iter("osD^v<>")
    colors = {}
    for label, group in grouped.items():
        xs = [p["sparsity"] for p in group if value(p) is not None]
        ys = [value(p) for p in group if value(p) is not None]
        (line,) = axis.plot(xs, ys, marker=next(markers), label=label)
        colors[label.split(" ")[0]] = line.get_color()
    for p in points:
        if "pattern" in p and value(p) is not None:
            axis.scatter(
                [0.5],
                [value(p)],
                marker="*",
                s=140,
                zorder=3,
                color=colors.get(p["method"], "black"),
                edgecolors="black",
                label=f"{p['method']} {p['pattern']}",
            )
    if dense is not None and value(dense) is not None:
        axis.axhline(value(dense), color="gray", linestyle="--", label="dense")
    if log:
        axis.set_yscale("log")
    axis.set_xlabel("sparsity of the pruned linear layers")
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_owl(points: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    owl = [p for p in points if p.get("allocation") == "owl" and p.get("block_sparsity")]
    if not owl:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    for p in owl:
        blocks = p["block_sparsity"]
        axis.plot(range(len(blocks)), blocks, marker=".", label=f"{p['method']} {p['target']}")
    axis.set_xlabel("decoder block")
    axis.set_ylabel("sparsity (OWL)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


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
            points, zero_shot_acc, "zero-shot accuracy", out / "zeroshot_vs_sparsity.png", log=False
        ),
        plot_owl(points, out / "owl_block_sparsity.png"),
    ]
    return [f for f in figures if f is not None]


def render_report(directory: str | Path) -> Path:
    """One Markdown page for a sweep directory or a run directory."""
    from llmprune.run import LOG_FILE, read_log
    from llmprune.sweep import SWEEP_FILE, load_points

    directory = Path(directory)
    if (directory / SWEEP_FILE).is_file():
        points = load_points(directory)
        table = write_tables(points, directory)
        figures = sweep_figures(points, directory)
        model = json.loads((directory / SWEEP_FILE).read_text())["model"]
        body = f"# Sweep of {model}\n\n" + markdown_table(table, COLUMNS)
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
    path.write_text(body)
    return path


def plot_run(log: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([r["step"] for r in log], [r["perplexity"] for r in log], marker="o")
    axis.set_xticks(
        [r["step"] for r in log], [r["label"] for r in log], rotation=30, ha="right", fontsize=7
    )
    axis.set_yscale("log")
    axis.set_ylabel("perplexity (log)")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
