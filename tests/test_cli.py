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


def test_eval_writes_no_file_unless_asked(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = ["eval", tiny_model_dirs["opt"], "--seqlen", 32, "--max-windows", 2]
    code, stdout, _ = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and "perplexity" in stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real
def test_prune_a_gguf_path_and_save(monkeypatch, capsys, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmprune.evaluate import sparsity_summary
    from llmprune.models.loading import default_gguf_path

    out = tmp_path / "pruned"
    args = ["prune", default_gguf_path(), "--method", "magnitude", "--sparsity", 0.5]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args, "--no-eval", "--out", out)
    assert code == 0, stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert sparsity_summary(model)["prunable_sparsity"] == pytest.approx(0.5, abs=1e-4)


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


def test_prune_saves_a_loadable_checkpoint(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmprune.evaluate import sparsity_summary
    from llmprune.export.checkpoint import load_record
    from llmprune.plans import summary as prune_summary

    out = tmp_path / "pruned"
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "prune",
        tiny_model_dirs["llama"],
        "--method",
        "wanda",
        "--pattern",
        "2:4",
        "--nsamples",
        4,
        "--seqlen",
        32,
        "--eval-windows",
        3,
        "--out",
        out,
    )
    assert code == 0, stdout
    assert "dense" in stdout and "pruned" in stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    summary = sparsity_summary(model)
    assert summary["prunable_sparsity"] == 0.5
    assert {layer["nm_pattern"] for layer in summary["layers"]} == {"2:4"}
    record = prune_summary(load_record(out)["steps"])
    assert record["label"] == "wanda@2:4"
    assert record["perplexity"] > 1 and record["dense_perplexity"] > 1
    assert record["peak_rss_mb"] > 0 and record["streamed"]


def test_prune_refuses_to_overwrite(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    source = tiny_model_dirs["gpt2"]
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    magnitude = ["prune", source, "--method", "magnitude", "--sparsity", 0.5, "--no-eval"]
    code, _, stderr = run_cli(monkeypatch, capsys, *magnitude, "--out", source, "--overwrite")
    assert code == 2 and "would overwrite the input model" in stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, _, stderr = run_cli(monkeypatch, capsys, *magnitude, "--out", busy)
    assert code == 2 and "--overwrite" in stderr
    assert (busy / "keep.txt").read_text() == "mine"
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magnitude", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        (["--method", "pruneit", "--sparsity", "0.5"], "unknown method"),
        (["--method", "wanda", "--pattern", "2:5"], "does not divide"),
        (["--method", "wanda", "--pattern", "5:4"], "N < M"),
        (["--method", "wanda", "--sparsity", "0.5", "--override", "oops"], "--override"),
        (["--structured", "ffn=0.5", "--sparsity", "0.5"], "do not go together"),
        (["--structured", "heads=0.5"], "computes the head size from hidden_size"),
        (["--structured", "blocks=2"], "would drop every block"),
        (["--structured", "ffn=1"], "would remove every FFN channel"),
        (["--structured", "ffn=0.5", "--score", "magic"], "score"),
        ([], "give a sparsity"),
    ],
)
def test_prune_bad_options(monkeypatch, capsys, tiny_model_dirs, tmp_path, args, message):
    code, _, stderr = run_cli(
        monkeypatch,
        capsys,
        "prune",
        tiny_model_dirs["opt"],
        "--out",
        tmp_path / "o",
        "--no-eval",
        "--nsamples",
        2,
        "--seqlen",
        16,
        *args,
    )
    assert code == 2, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_compare_a_model_with_itself(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "compare",
        model,
        model,
        "--out",
        tmp_path / "cmp",
        "--count",
        3,
        "--max-new-tokens",
        8,
    )
    assert code == 0, stdout
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(record["prompts"]) == 3
    assert record["summary"][str(model)]["rouge_l_vs_dense"] == pytest.approx(1.0)
    assert "=== prompt 1" in (tmp_path / "cmp" / "side_by_side.txt").read_text()


def test_compare_summaries_with_a_plugged_in_scorer(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["llama"]
    code, stdout, _ = run_cli(
        monkeypatch,
        capsys,
        "compare",
        model,
        model,
        "--out",
        tmp_path / "cmp",
        "--summarize",
        "--faithfulness",
        "tests.test_sweep_report:half_scorer",
        "--count",
        2,
        "--max-new-tokens",
        6,
    )
    assert code == 0, stdout
    record = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert all(prompt.endswith("TL;DR:") for prompt in record["prompts"])
    metrics = record["summary"][str(model)]
    assert metrics["faithfulness"] == 0.5
    assert metrics["hallucination_risk_ratio"] == pytest.approx(1.0)
    assert "| model | words |" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["zeroshot", "{opt}", "--tasks", "no_such_task"], "unknown zero-shot task"),
        (["report", "{tmp}"], "neither a sweep nor a run"),
        (["sweep", "{opt}", "--sparsity", "0.5:1.5:0.5", "--out", "{tmp}/s"], "[0, 1)"),
        (["sweep", "{opt}", "--recover", "gills", "--out", "{tmp}/s"], "unknown trainable part"),
        (["compare", "{opt}", "{opt}", "--summarize", "--faithfulness", "x"], "module:function"),
        (["compare", "{opt}", "{opt}", "--chat", "--count", "1"], "no chat template"),
        (["run", "{tmp}/missing.yaml"], "no such recipe"),
    ],
)
def test_more_bad_input(monkeypatch, capsys, tiny_model_dirs, tmp_path, args, message):
    args = [a.format(opt=tiny_model_dirs["opt"], tmp=tmp_path) for a in args]
    code, _, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 2, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_export_eval_and_densify_a_sparse_folder(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmprune.evaluate import sparsity_summary

    pruned = tmp_path / "pruned"
    prune = ["prune", tiny_model_dirs["llama"], "--method", "magnitude", "--sparsity", 0.6]
    assert run_cli(monkeypatch, capsys, *prune, "--no-eval", "--out", pruned)[0] == 0
    sparse = tmp_path / "sparse"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "export", pruned, "--out", sparse)
    assert code == 0, stderr
    assert "x dense" in stdout
    code, stdout, _ = run_cli(
        monkeypatch, capsys, "eval", sparse, "--seqlen", 32, "--max-windows", 2
    )
    assert code == 0 and "60.00%" in stdout
    dense = tmp_path / "dense"
    assert run_cli(monkeypatch, capsys, "densify", sparse, "--out", dense)[0] == 0
    summary = sparsity_summary(AutoModelForCausalLM.from_pretrained(dense))
    assert summary["prunable_sparsity"] == pytest.approx(0.6, abs=1e-3)
    code, _, stderr = run_cli(
        monkeypatch, capsys, "export", pruned, "--pattern", "2:4", "--out", tmp_path / "nm"
    )
    assert code == 2 and "is not 2:4" in stderr and not (tmp_path / "nm").exists()
    code, _, stderr = run_cli(monkeypatch, capsys, "densify", pruned, "--out", tmp_path / "x")
    assert code == 2 and "not an exported sparse folder" in stderr


def test_prune_structured_saves_a_smaller_model(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "small"
    args = ["prune", tiny_model_dirs["llama"], "--structured", "ffn=0.5,heads=0.5"]
    args += ["--score", "flap", "--multiple", 8, "--nsamples", 4, "--seqlen", 32, "--out", out]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert "parameters" in stdout and "flap ffn=0.5,heads=0.5" in stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.intermediate_size == 64 and model.config.num_key_value_heads == 1
    record = json.loads((out / "llmprune.json").read_text())
    structured = record["steps"][0]["structured"]
    assert structured["parameters"]["after"]["model"] == sum(p.numel() for p in model.parameters())
    assert (out / "pruning_manifest.json").is_file()


def test_speed_measures_models_side_by_side(monkeypatch, capsys, tiny_model_dirs, tmp_path):
    out = tmp_path / "speed.json"
    args = ["speed", tiny_model_dirs["llama"], tiny_model_dirs["gpt2"], "--prefill-tokens", 32]
    args += ["--new-tokens", 4, "--rounds", 1, "--batches", "1,2", "--json", out]
    code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert "median (min–max)" in stdout and "peak RSS" in stdout
    measured = json.loads(out.read_text())["decoders"]
    for source in ("llama", "gpt2"):
        speed = measured[str(tiny_model_dirs[source])]
        assert speed["prefill_tokens_per_s"] > 0
        for batch in (1, 2):
            rates = speed[f"decode_batch_{batch}"]
            assert 0 < rates["min"] <= rates["median"] <= rates["max"]


@pytest.fixture(scope="module")
def pruned_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny LLaMA pruned to 70 %: the lean paths put it on the sparse kernel."""
    from llmprune.pruning import prune
    from tests.conftest import build_tiny

    model = build_tiny("llama", hidden_size=128, intermediate_size=256)
    prune(model, method="magnitude", sparsity=0.7, progress=False)
    directory = tmp_path_factory.mktemp("pruned")
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def test_speed_sparse_times_generate_and_the_lean_loops(
    monkeypatch, capsys, tmp_path, pruned_llama_dir
):
    out = tmp_path / "speed.json"
    args = ["speed", pruned_llama_dir, "--sparse", "--values", "bf16", "--prefill-tokens"]
    args += [16, "--new-tokens", 3, "--rounds", 1, "--json", out]
    code, _, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 0, stderr
    names = list(json.loads(out.read_text())["decoders"])
    assert [n.split(" · ")[1] for n in names] == [
        "generate fp32",
        "lean dense fp32",
        "lean dense bf16",
        "lean sparse (bf16 values)",
    ]


def test_generate_lean_and_sparse_print_the_same_text(monkeypatch, capsys, pruned_llama_dir):
    texts = []
    for flags in ([], ["--lean"], ["--sparse"]):
        args = ["generate", pruned_llama_dir, "--max-new-tokens", 6, *flags]
        code, stdout, stderr = run_cli(monkeypatch, capsys, *args)
        assert code == 0, stderr
        texts.append(stdout.splitlines()[0])
    assert texts[0] == texts[1] == texts[2]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--values", "bf16"], "--values applies to the sparse kernel"),
        (["--sparse", "--values", "fp8"], "--values takes model, fp32, bf16"),
        (["--prompt", " "], "--prompt is empty"),
    ],
)
def test_generate_refuses_bad_options(monkeypatch, capsys, tiny_model_dirs, args, message):
    code, _, stderr = run_cli(monkeypatch, capsys, "generate", tiny_model_dirs["llama"], *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_lean_paths_refuse_other_families(monkeypatch, capsys, tiny_model_dirs):
    code, _, stderr = run_cli(monkeypatch, capsys, "generate", tiny_model_dirs["gpt2"], "--lean")
    assert code == 2 and "lean decoding takes llama, mistral, qwen2 models" in stderr
    assert "Traceback" not in stderr
