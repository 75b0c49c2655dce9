"""Markdown tables of the benchmark results, for the README: python bench/render.py"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def oneshot_table(data: dict) -> str:
    lines = [
        f"Dense perplexity {data['dense_perplexity']:.2f}; {data['nsamples']} calibration "
        f"windows of {data['seqlen']} tokens (seed {data['seed']}); {data['threads']} thread(s).",
        "",
        "| tool | method | target | sparsity | perplexity | prune s | peak RSS MiB "
        "| ppl × | time × | RSS × |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['tool']} | {r['method']} | {r['target']} | error: {r['error']} | | | | | | |"
            )
            continue
        name = r["method"] + (" + OWL" if r.get("allocation") == "owl" else "")
        ratio = r.get("vs_llmcompressor")
        extra = (
            f"{ratio['perplexity']:.3f} | {ratio['seconds']:.2f} | {ratio['peak_rss_mb']:.2f}"
            if ratio
            else " | | "
        )
        lines.append(
            f"| {r['tool']} | {name} | {r['target']} | {r['sparsity']:.3f} | "
            f"{r['perplexity']:.2f} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {extra} |"
        )
    return "\n".join(lines)


def recovery_table(data: dict) -> str:
    lines = [
        f"Dense perplexity {data['dense_ppl']:.2f} (seqlen {data['settings']['seqlen']}, "
        f"{data['settings']['eval_windows']} windows).",
        "",
        "| method | sparsity | recovery | perplexity | trainable | fine-tuning steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        frac = f"{r['trainable_fraction']:.3%}" if "trainable_fraction" in r else ""
        lines.append(
            f"| {r['method']} | {r['sparsity']} | {r['recovery']} | {r['ppl']:.2f} | "
            f"{frac} | {r.get('steps', '')} |"
        )
    return "\n".join(lines)


SCORE_NAMES = {
    "wanda-sp": "Wanda-sp",
    "flap": "FLAP",
    "taylor": "Taylor",
    "influence": "block influence",
    "angular": "angular distance",
}


def removal_name(spec: str, head_unit: str = "kv-group") -> str:
    """ "ffn=0.3,heads=0.333" -> "30 % FFN + 1/3 heads" as a reader says it."""
    parts = []
    for item in spec.split(","):
        key, value = item.split("=")
        if key == "ffn":
            parts.append(f"{float(value) * 100:.0f} % of FFN channels")
        elif key == "heads":
            share = {"0.333": "1 of 3", "0.667": "2 of 3"}.get(value, value)
            what = "query heads in every group" if head_unit == "query" else "key-value groups"
            parts.append(f"{share} {what}")
        else:
            parts.append(f"{value} block" + ("s" if value != "1" else ""))
    return " + ".join(parts)


def percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def structured_tables(data: dict) -> str:
    dense = data["dense"]
    lines = [
        f"Dense: {dense['parameters']:,} parameters, perplexity {dense['perplexity']:.2f}.",
        "",
        "| removed | score | block params removed | perplexity |",
        "|---|---|---|---|",
    ]
    unit = data["settings"].get("head_unit", "kv-group")
    for r in data["grid"]:
        lines.append(
            f"| {removal_name(r['removal'], unit)} | {SCORE_NAMES[r['score']]} | "
            f"{percent(r['block_parameters_removed'])} | {r['perplexity']:.2f} |"
        )
    lines += [
        "",
        "| about 30 % of block parameters | score | removed | perplexity | after recovery |",
        "|---|---|---|---|---|",
    ]
    for r in data["equal"]:
        lines.append(
            f"| {removal_name(r['removal'])} | {SCORE_NAMES[r['score']]} | "
            f"{percent(r['block_parameters_removed'])} | {r['perplexity']:.2f} | "
            f"{r['recovered_perplexity']:.2f} |"
        )
    if data["speed"]:
        lines += [
            "",
            "| shape | parameters | prefill × dense | decode × dense |",
            "|---|---|---|---|",
        ]
        for r in data["speed"]:
            lines.append(
                f"| {removal_name(r['removal'])} | {r['parameters']:,} | "
                f"{r['prefill_speedup']:.2f} | {r['decode_speedup']:.2f} |"
            )
    return "\n".join(lines)


def train_time_table(data: dict) -> str:
    settings = data["settings"]
    lines = [
        f"Dense perplexity {data['dense_perplexity']:.2f}; {settings['steps']} training steps of "
        f"{settings['batch_size']} windows × {settings['seqlen']} tokens, lr {settings['lr']:g}.",
        "",
        "| run | perplexity | sparsity / parameters | seconds |",
        "|---|---|---|---|",
    ]
    for r in data["rows"]:
        size = f"{r['sparsity']:.3f}" if "sparsity" in r else f"{r['parameters']:,}"
        lines.append(f"| {r['run']} | {r['perplexity']:.2f} | {size} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def sparse_matmul_table(data: dict) -> str:
    lines = [
        "| layer | sparsity | tokens | fastest torch (ms) | fp32 values × torch "
        "| bf16 values × torch | fp32 values × dense kernel fp32 "
        "| bf16 values × dense kernel bf16 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        torch_ms = r["ms"][r["fastest_torch_dense"]]
        lines.append(
            f"| {r['layer'].replace('x', '×')} | {percent(r['sparsity'])} | {r['tokens']} "
            f"| {r['fastest_torch_dense'].removeprefix('torch ')} ({torch_ms:.3f}) "
            f"| {r['fp32_values_x_torch']:.2f} | {r['bf16_values_x_torch']:.2f} "
            f"| {r['fp32_values_x_kernel_same_dtype']:.2f} "
            f"| {r['bf16_values_x_kernel_same_dtype']:.2f} |"
        )
    return "\n".join(lines)


def sparse_decode_table(data: dict) -> str:
    lines = [
        "| decoder | prefill tok/s | decode tok/s, batch 1 (min–max) | decode tok/s, batch 4 |",
        "|---|---|---|---|",
    ]
    for name, r in data["decoders"].items():
        one, four = r["decode_batch_1"], r["decode_batch_4"]
        lines.append(
            f"| {name.split(' · ')[-1]} | {r['prefill_tokens_per_s']:.0f} "
            f"| {one['median']:.1f} ({one['min']:.1f}–{one['max']:.1f}) | {four['median']:.1f} |"
        )
    llama_cpp = data.get("llama_cpp", {})
    if llama_cpp.get("decode"):
        lines.append(
            f"| llama.cpp (Q4_1 GGUF) | {llama_cpp['prefill']:.0f} | {llama_cpp['decode']:.1f} | |"
        )
    return "\n".join(lines)


def main() -> None:
    for name, render in (
        ("oneshot.json", oneshot_table),
        ("recovery.json", recovery_table),
        ("structured.json", structured_tables),
        ("train_time.json", train_time_table),
        ("sparse_matmul.json", sparse_matmul_table),
        ("sparse_decode.json", sparse_decode_table),
        ("sparse_decode_90.json", sparse_decode_table),
    ):
        path = RESULTS / name
        if path.is_file():
            print(f"### {name}\n\n{render(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
    main()
