"""Runs that are killed resume to the same result; the same seed gives the same bits in
another process; every output says what made it."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def cli(*args, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "llmprune.cli", *map(str, args)]
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def finished(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]


def test_same_seed_same_bits_in_two_processes(tmp_path, tiny_model_dirs):
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        finished(
            cli(
                "prune",
                tiny_model_dirs["llama"],
                "--method",
                "sparsegpt",
                "--sparsity",
                0.5,
                "--nsamples",
                4,
                "--seqlen",
                32,
                "--no-eval",
                "--out",
                out,
            )
        )
        runs.append(out)
    # the same tensors, bit for bit (file bytes may differ: safetensors writes its metadata
    # map in a per-process hash order)
    for name in ("model.safetensors", "masks.safetensors"):
        first, second = load_file(str(runs[0] / name)), load_file(str(runs[1] / name))
        assert first.keys() == second.keys(), name
        assert all(torch.equal(first[k], second[k]) for k in first), name
    record = json.loads((runs[0] / "llmprune.json").read_text())
    assert record["environment"]["packages"]["torch"]
    assert record["steps"][0]["prune"]["config"]["seed"] == 0


def recipe(tmp_path, model_dir) -> str:
    tune = {"steps": 16, "batch_size": 2, "seqlen": 32, "learning_rate": 0.005}
    stages = [
        {"prune": {"method": "wanda", "sparsity": 0.3, "nsamples": 4, "seqlen": 32}},
        {"finetune": tune},
        {"prune": {"method": "magnitude", "sparsity": 0.6}},
        {"finetune": {**tune, "trainable": ["norms", "lora"], "lora_rank": 2}},
    ]
    path = tmp_path / "recipe.yaml"
    body = {"model": str(model_dir), "eval": {"seqlen": 32, "max_windows": 2}, "stages": stages}
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_run_killed_at_a_random_point_resumes_to_the_same_weights(
    seed, tmp_path, tiny_model_dirs
):
    path = recipe(tmp_path, tiny_model_dirs["gpt2"])
    finished(cli("run", path, "--run-dir", tmp_path / "whole"))
    process = cli("run", path, "--run-dir", tmp_path / "killed")
    deadline = time.time() + 120
    while not list((tmp_path / "killed").glob("stage-0*")) and time.time() < deadline:
        time.sleep(0.05)  # the first step is done: kill somewhere after it
    time.sleep(random.Random(seed).uniform(0.0, 1.0))
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = sorted(p.name for p in (tmp_path / "killed").glob("stage-*"))
    assert 1 <= len(done) < 4, done  # killed midway
    assert all((tmp_path / "killed" / name / "stage.json").is_file() for name in done)
    finished(cli("run", path, "--run-dir", tmp_path / "killed", "--resume"))
    last = "stage-04-finetune/model.safetensors"
    whole, resumed = (
        load_file(str(tmp_path / "whole" / last)),
        load_file(str(tmp_path / "killed" / last)),
    )
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    log = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]


def test_a_sweep_killed_midway_resumes_to_the_same_points(tmp_path, tiny_model_dirs):
    options = [
        "--methods",
        "magnitude,wanda",
        "--sparsity",
        "0.3,0.5,0.7",
        "--pattern",
        "",
        "--nsamples",
        4,
        "--seqlen",
        32,
        "--eval-windows",
        2,
    ]
    model = tiny_model_dirs["opt"]
    finished(cli("sweep", model, *options, "--out", tmp_path / "whole"))
    process = cli("sweep", model, *options, "--out", tmp_path / "killed")
    deadline = time.time() + 120
    while len(list((tmp_path / "killed").glob("points/*.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert len(list((tmp_path / "killed").glob("points/*.json"))) < 7  # killed midway
    finished(cli("sweep", model, *options, "--out", tmp_path / "killed"))
    for point in sorted((tmp_path / "whole" / "points").glob("*.json")):
        whole = json.loads(point.read_text())
        resumed = json.loads((tmp_path / "killed" / "points" / point.name).read_text())
        assert resumed["perplexity"] == whole["perplexity"], point.name
        assert resumed.get("layer_sparsity") == whole.get("layer_sparsity"), point.name
