"""Bad input to every command: one line on stderr, exit code 2, input untouched, no output.

Each case names a command line (with {tiny}: a tiny model directory, {out}: an output
path that must not appear, {tmp}: a scratch directory) and a piece of the message.
"""

import errno
import hashlib
import json
import shutil
import sys

import pytest

from llmprune.cli import main


def digest(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


CASES = [
    # structured
    (
        ["prune", "{tiny}", "--structured", "ffn=1", "--seqlen", "32", "--out", "{out}"],
        "every FFN channel",
    ),
    (
        ["prune", "{tiny}", "--structured", "heads=0.1", "--seqlen", "32", "--out", "{out}"],
        "removes no head",
    ),
    (
        ["prune", "{tiny}", "--structured", "blocks=2", "--seqlen", "32", "--out", "{out}"],
        "drop every block",
    ),
    (
        ["prune", "{tiny}", "--structured", "ffn=0.5", "--sparsity", "0.5", "--out", "{out}"],
        "do not go together",
    ),
    (["speed", "{tmp}/no-such-model"], "no such model"),
    # amounts
    (["prune", "{tiny}", "--sparsity", "1.0", "--out", "{out}"], "[0, 1)"),
    (["prune", "{tiny}", "--sparsity", "-0.1", "--out", "{out}"], "[0, 1)"),
    (["prune", "{tiny}", "--sparsity", "nan", "--out", "{out}"], "[0, 1)"),
    (["prune", "{tiny}", "--pattern", "4:2", "--out", "{out}"], "N < M"),
    (["prune", "{tiny}", "--pattern", "half", "--out", "{out}"], "like 2:4"),
    (
        ["prune", "{tiny}", "--pattern", "2:5", "--method", "magnitude", "--out", "{out}"],
        "does not divide",
    ),
    (["prune", "{tiny}", "--sparsity", "0.5", "--pattern", "2:4", "--out", "{out}"], "not both"),
    (["sweep", "{tiny}", "--sparsity", "0.5,1.5", "--out", "{out}"], "[0, 1)"),
    (["sweep", "{tiny}", "--pattern", "8:4", "--out", "{out}"], "N < M"),
    # names
    (
        ["prune", "{tiny}", "--method", "lottery", "--sparsity", "0.5", "--out", "{out}"],
        "unknown method",
    ),
    (["sweep", "{tiny}", "--methods", "lottery", "--out", "{out}"], "unknown method"),
    (
        ["prune", "{tiny}", "--sparsity", "0.5", "--allocation", "random", "--out", "{out}"],
        "allocation",
    ),
    (
        ["prune", "{tiny}", "--sparsity", "0.5", "--calib", "imagenet", "--out", "{out}"],
        "unknown data source",
    ),
    (["eval", "{tiny}", "--data", "imagenet"], "unknown data source"),
    (["zeroshot", "{tiny}", "--tasks", "no_such_task"], "unknown zero-shot task"),
    (["sweep", "{tiny}", "--recover", "gills", "--out", "{out}"], "unknown trainable part"),
    (["export", "{tiny}", "--format", "zip", "--out", "{out}"], "format"),
    (["export", "{tiny}", "--values", "int3", "--out", "{out}"], "values"),
    # models
    (["eval", "{tmp}/no-such-model"], "no such model"),
    (["prune", "{tmp}/no-such-model", "--sparsity", "0.5", "--out", "{out}"], "no such model"),
    (["inspect", "{tmp}/empty"], "without config.json"),
    (["eval", "{tmp}/weights.safetensors"], "is a file"),
    (["eval", "{tmp}/fake.gguf"], "cannot load a model config"),
    (["densify", "{tiny}", "--out", "{out}"], "not an exported sparse folder"),
    # lengths and outputs
    (["eval", "{tiny}", "--seqlen", "4096"], "above the model's context"),
    (
        ["prune", "{tiny}", "--sparsity", "0.5", "--seqlen", "4096", "--out", "{out}"],
        "above the model's context",
    ),
    (
        ["prune", "{tiny}", "--sparsity", "0.5", "--out", "{tiny}", "--overwrite"],
        "would overwrite the input model",
    ),
    (["export", "{tiny}", "--out", "{tiny}", "--overwrite"], "would overwrite the input model"),
    (["prune", "{tiny}", "--sparsity", "0.5", "--out", "{tmp}/busy"], "--overwrite"),
    # text where a number belongs, unknown options
    (["prune", "{tiny}", "--sparsity", "half", "--out", "{out}"], "Invalid value for '--sparsity'"),
    (
        ["prune", "{tiny}", "--sparsity", "0.5", "--nsamples", "many", "--out", "{out}"],
        "Invalid value for '--nsamples'",
    ),
    (["prune", "{tiny}", "--bogus", "--out", "{out}"], "No such option"),
    (["frobnicate"], "No such command"),
    # checkpoints that are not models, or not safe to open
    (["eval", "{tmp}/config-only"], "cannot load model"),
    (["eval", "{tmp}/t5"], "not a causal"),
    (["eval", "{tmp}/remote-code"], "cannot load a model config"),
    (["eval", "{tmp}/pickled"], "only pickled weights"),
    (["eval", "{tmp}/lying-header"], "cannot load model"),
    # text
    (["eval", "{tiny}", "--data", "{tmp}/empty.txt", "--seqlen", "16"], "no text"),
    (
        ["eval", "{tiny}", "--data", "{tmp}/short.txt", "--split", "all", "--seqlen", "64"],
        "fewer than one window",
    ),
    # recipes and reports
    (["run", "{tmp}/missing.yaml", "--run-dir", "{out}"], "no such recipe"),
    (["run", "{tmp}/bad.yaml", "--run-dir", "{out}"], "unknown stage"),
    (["run", "{tmp}/not-yaml.yaml", "--run-dir", "{out}"], "not valid YAML"),
    (["report", "{tmp}/empty"], "neither a sweep nor a run"),
    (["compare", "{tiny}", "{tmp}/no-such-model", "--out", "{out}"], "no such model"),
]


@pytest.fixture
def scratch(tmp_path, tiny_model_dirs):
    (tmp_path / "empty").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    (tmp_path / "weights.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf file" * 64)
    (tmp_path / "bad.yaml").write_text("stages:\n  - distill: {}\n")
    (tmp_path / "not-yaml.yaml").write_text("stages: [unclosed\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("Too short to hold a window.")
    llama = tiny_model_dirs["llama"]
    for name in ("config-only", "pickled", "lying-header"):
        (tmp_path / name).mkdir()
        shutil.copy(llama / "config.json", tmp_path / name / "config.json")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    weights = (llama / "model.safetensors").read_bytes()
    header = (len(weights) * 2).to_bytes(8, "little")  # says the header is longer than the file
    (tmp_path / "lying-header" / "model.safetensors").write_bytes(header + weights[8:])
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "remote-code").mkdir()
    remote = {"model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig"}}
    (tmp_path / "remote-code" / "config.json").write_text(json.dumps(remote))
    (tmp_path / "remote-code" / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    return tmp_path


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args, message, scratch, tiny_model_dirs, monkeypatch, capsys
):
    tiny = tiny_model_dirs["llama"]
    out = scratch / "out"
    before = digest(tiny)
    argv = [a.format(tiny=tiny, out=out, tmp=scratch) for a in args]
    monkeypatch.setenv("LLMPRUNE_CACHE", str(scratch / "cache"))
    monkeypatch.setattr(sys, "argv", ["llmprune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert stderr.startswith("error: ") and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert not out.exists()
    assert digest(tiny) == before
    assert (scratch / "busy" / "mine.txt").read_text() == "keep me"


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")


@pytest.mark.parametrize("stream", [True, False])
def test_a_full_disk_while_saving_leaves_no_output_and_one_line(
    stream, scratch, tiny_model_dirs, monkeypatch, capsys
):
    from llmprune.models.streaming import ShardWriter

    tiny = tiny_model_dirs["llama"]
    before = digest(tiny)
    out = scratch / "out"
    if stream:  # the streamed prune writes shards as blocks are done
        monkeypatch.setattr(ShardWriter, "add_tensor", no_space)
    else:  # save_pretrained writes the model at the end
        monkeypatch.setattr("transformers.modeling_utils.safe_save_file", no_space)
    argv = ["prune", str(tiny), "--method", "magnitude", "--sparsity", "0.5", "--no-eval"]
    argv += ["--out", str(out)] + ([] if stream else ["--no-stream"])
    monkeypatch.setattr(sys, "argv", ["llmprune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0], stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not [p for p in scratch.iterdir() if p.name.startswith(".out")]  # no partial dirs
    assert digest(tiny) == before


def test_a_model_too_big_for_free_memory_is_refused_and_the_streamed_path_named(
    scratch, tiny_model_dirs, monkeypatch, capsys
):
    tiny = tiny_model_dirs["llama"]
    # more than a magnitude prune of one block needs (0.4 MiB: the block twice and one
    # layer's working memory), less than the whole model (0.5 MiB)
    monkeypatch.setattr("llmprune.models.loading.available_memory_bytes", lambda: 580_000)
    argv = ["prune", str(tiny), "--method", "magnitude", "--sparsity", "0.5", "--seqlen", "32"]
    argv += ["--eval-windows", "2", "--no-stream"]
    monkeypatch.setattr(sys, "argv", ["llmprune", *argv, "--out", str(scratch / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "streamed block by block" in stderr and len(stderr.strip().splitlines()) == 1
    assert "0.0 GiB is free" in stderr
    assert not (scratch / "out").exists()
    # streamed (the default), the same prune and its evaluations never load the whole
    # model: it runs
    monkeypatch.setattr(sys, "argv", ["llmprune", *argv[:-1], "--out", str(scratch / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert (scratch / "out" / "masks.safetensors").is_file()


def test_a_model_whose_one_block_does_not_fit_is_refused_before_any_work(
    scratch, tiny_model_dirs, monkeypatch, capsys
):
    tiny = tiny_model_dirs["llama"]
    monkeypatch.setattr("llmprune.models.loading.available_memory_bytes", lambda: 1_000_000)
    argv = ["prune", str(tiny), "--method", "sparsegpt", "--sparsity", "0.5", "--seqlen", "32"]
    argv += ["--nsamples", "64", "--out", str(scratch / "out")]
    monkeypatch.setattr(sys, "argv", ["llmprune", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(stderr.strip().splitlines()) == 1
    # 37 k weights × 4 B, twice; 6 Hessians 64² and one 128², 4 × 128² for the inversion
    # and 20 B a weight of the largest layer; 64 windows × 32 tokens × 64 wide × 4 B, and
    # one batch through 128-wide layers
    assert "needs about 1.5 MiB (block weights 0.3 MiB, statistics 0.6 MiB, calibration " in stderr
    assert "activations 0.6 MiB) on cpu and 1.0 MiB is free" in stderr
    assert not (scratch / "out").exists()
