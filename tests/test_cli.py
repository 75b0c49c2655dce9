"""The command line: real runs on tiny models, and bad input as one-line errors."""

import json
import sys

import pytest

from llmprune.cli import main


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["llmprune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_eval_prints_a_table_and_writes_json(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    out = tmp_path / "eval.json"
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "eval",
        tiny_model_dirs["gpt_neox"],
        "--seqlen",
        32,
        "--max-windows",
        4,
        "--json",
        out,
    )
    assert code == 0
    assert "perplexity" in stdout
    record = json.loads(out.read_text())
    assert record["windows"] == 4 and record["tokens"] == 4 * 31
    assert record["perplexity"] > 1
    assert record["prunable_sparsity"] < 0.01
    assert len(record["layers"]) == 8


def test_inspect_lists_each_layer(monkeypatch, capsys, tiny_model_dirs):
    code, stdout, _ = run_cli(monkeypatch, capsys, "inspect", tiny_model_dirs["opt"])
    assert code == 0
    assert "model.decoder.layers.1.fc2" in stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "/no/such/model"], "no such model"),
        (["eval", "{opt}", "--data", "imagenet", "--seqlen", "32"], "unknown data source"),
        (["eval", "{opt}", "--seqlen", "4096"], "above the model's context"),
        (["eval", "{opt}", "--dtype", "int3"], "unknown dtype"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(monkeypatch, capsys, tiny_model_dirs, args, message):
    args = [a.format(opt=tiny_model_dirs["opt"]) for a in args]
    code, _, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert stderr.startswith("error: ") and message in stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
