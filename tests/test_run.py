"""Recipes and runs: validation, iterative schedules, logs, and resume after a kill."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmprune.errors import LLMPruneError
from llmprune.export import load_masks
from llmprune.recipe import load_recipe, plan
from llmprune.run import read_log, run_recipe
from tests.conftest import torchrun


def write_recipe(tmp_path, model_dir, **changes):
    recipe = {
        "model": str(model_dir),
        "eval": {"seqlen": 32, "max_windows": 3},
        "stages": [
            {"evaluate": {}},
            {
                "iterative": {
                    "prune": {"method": "wanda", "nsamples": 4, "seqlen": 32},
                    "schedule": [0.2, 0.4, 0.6],
                    "finetune": {"steps": 2, "batch_size": 2, "seqlen": 32, "learning_rate": 0.001},
                }
            },
        ],
    }
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def final_weights(run_dir):
    stage = sorted(p for p in run_dir.iterdir() if p.name.startswith("stage-"))[-1]
    return load_file(next(stage.glob("*.safetensors")))


def test_iterative_run_nests_masks_and_logs_every_step(tmp_path, tiny_model_dirs):
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dirs["llama"]))
    steps = plan(recipe)
    assert [s.kind for s in steps] == ["evaluate"] + ["prune", "finetune"] * 3
    log = run_recipe(recipe, tmp_path / "run", echo=lambda *_: None)
    assert [line["step"] for line in log] == list(range(1, 8))
    assert all(line["perplexity"] > 1 for line in log)
    assert log[-1]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    masks = [load_masks(tmp_path / "run" / f"stage-{i:02d}-prune") for i in (2, 4, 6)]
    for earlier, later in zip(masks, masks[1:], strict=False):
        for name in later:
            assert torch.all(later[name] <= earlier[name]), name
    final = load_masks(tmp_path / "run" / "stage-07-finetune")
    assert final.sparsity() == pytest.approx(0.6, abs=1e-3)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["kind"] == "evaluate"


def test_resume_after_a_kill_matches_an_unbroken_run(tmp_path, tiny_model_dirs, monkeypatch):
    import llmprune.run as run_module

    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dirs["gpt2"]))
    run_recipe(recipe, tmp_path / "whole", echo=lambda *_: None)

    real_step = run_module.run_step
    calls = {"n": 0}

    def dying_step(index, step, state, ctx):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # killed during step 4
        return real_step(index, step, state, ctx)

    monkeypatch.setattr(run_module, "run_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "broken", echo=lambda *_: None)
    assert len(read_log(tmp_path / "broken")) == 3
    monkeypatch.setattr(run_module, "run_step", real_step)
    with pytest.raises(LLMPruneError, match="--resume"):
        run_recipe(recipe, tmp_path / "broken", echo=lambda *_: None)
    log = run_recipe(recipe, tmp_path / "broken", resume=True, echo=lambda *_: None)
    assert len(log) == 7
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(tmp_path / "broken")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_resume_refuses_a_run_of_another_recipe(tmp_path, tiny_model_dirs):
    first = load_recipe(write_recipe(tmp_path, tiny_model_dirs["opt"], stages=[{"evaluate": {}}]))
    run_recipe(first, tmp_path / "run", echo=lambda *_: None)
    other = load_recipe(
        write_recipe(tmp_path, tiny_model_dirs["opt"], seed=5, stages=[{"evaluate": {}}])
    )
    with pytest.raises(LLMPruneError, match="different recipe"):
        run_recipe(other, tmp_path / "run", resume=True, echo=lambda *_: None)
    assert (tmp_path / "run" / "stage-01-evaluate" / "stage.json").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"modle": "x"}, "Extra inputs"),
        ({"stages": [{"iterative": {"schedule": [0.5, 0.3]}}]}, "must increase"),
        ({"stages": [{"iterative": {"schedule": [0.5, 1.0]}}]}, r"\[0, 1\)"),
        ({"stages": [{"prune": {"method": "wanda", "sparsity": 1.2}}]}, r"\[0, 1\)"),
        ({"stages": [{"distill": {}}]}, "unknown stage 'distill'"),
        ({"stages": [{"finetune": {"trainable": ["gills"]}}]}, "unknown trainable part"),
        ({"stages": []}, "at least one stage"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path, change, message):
    path = write_recipe(tmp_path, "smollm2", **change)
    with pytest.raises(LLMPruneError, match=message):
        load_recipe(path)


def test_lora_on_a_missing_layer_stops_the_run_and_keeps_earlier_steps(tmp_path, tiny_model_dirs):
    stages = [
        {"evaluate": {}},
        {
            "finetune": {
                "trainable": ["lora"],
                "lora_targets": ["*.no_such_proj"],
                "steps": 1,
                "seqlen": 32,
            }
        },
    ]
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dirs["llama"], stages=stages))
    with pytest.raises(LLMPruneError, match="matches no linear layer"):
        run_recipe(recipe, tmp_path / "run", echo=lambda *_: None)
    assert len(read_log(tmp_path / "run")) == 1


def test_demo_recipe_is_valid():
    recipe = load_recipe(None)
    assert [s.kind for s in plan(recipe)] == ["evaluate", "prune", "finetune"]


def test_a_recipe_under_torchrun_with_two_processes(tmp_path, tiny_model_dirs):
    stages = [
        {"prune": {"method": "magnitude", "sparsity": 0.5}},
        {"finetune": {"steps": 2, "batch_size": 2, "seqlen": 32, "learning_rate": 0.001}},
        {"finetune": {"steps": 2, "batch_size": 2, "seqlen": 32, "sharding": "fsdp"}},
    ]
    path = write_recipe(tmp_path, tiny_model_dirs["llama"], stages=stages)
    process = torchrun("-m", "llmprune.cli", "run", str(path), "--run-dir", str(tmp_path / "run"))
    assert process.returncode == 0, process.stderr[-3000:]
    log = read_log(tmp_path / "run")
    assert [line["kind"] for line in log] == ["prune", "finetune", "finetune"]
    for step, sharded in (("stage-02-finetune", False), ("stage-03-finetune", True)):
        masks = load_masks(tmp_path / "run" / step)
        assert masks.sparsity() == pytest.approx(0.5, abs=1e-3)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / step)
        assert masks.violations(model) == {}
        record = json.loads((tmp_path / "run" / step / "stage.json").read_text())
        assert record["finetune"]["world_size"] == 2
        assert record["finetune"]["sharded"] is sharded


def test_the_same_point_gives_the_same_perplexity_through_prune_run_and_sweep(
    tmp_path, tiny_model_dirs
):
    from llmprune.plans import prune_and_save, summary
    from llmprune.pruning import make_config
    from llmprune.sweep import SweepConfig, run_sweep

    model = str(tiny_model_dirs["llama"])
    point = dict(method="wanda", sparsity=0.5, nsamples=4, seqlen=32)
    quiet = dict(echo=lambda *_: None)
    records = prune_and_save(
        model, tmp_path / "p", make_config(**point), eval_windows=3, progress=False, **quiet
    )
    via_prune = summary(records)["perplexity"]
    stages = [{"prune": point}, {"evaluate": {}}]
    path = write_recipe(tmp_path, model, stages=stages)
    via_run = run_recipe(load_recipe(path), tmp_path / "run", **quiet)[-1]["perplexity"]
    sweep = SweepConfig(
        model=model,
        methods=["wanda"],
        sparsity="0.5",
        pattern=[],
        nsamples=4,
        seqlen=32,
        eval_windows=3,
    )
    points = run_sweep(sweep, tmp_path / "sweep", **quiet)
    via_sweep = next(p for p in points if p["method"] == "wanda")["perplexity"]
    assert via_prune == pytest.approx(via_run, rel=1e-6)
    assert via_prune == pytest.approx(via_sweep, rel=1e-6)
    dense = next(p for p in points if p["method"] == "dense")["perplexity"]
    assert summary(records)["dense_perplexity"] == pytest.approx(dense, rel=1e-6)


def test_a_save_stage_that_would_overwrite_the_input_stops_before_anything_runs(
    tmp_path, tiny_model_dirs
):
    model = tiny_model_dirs["opt"]
    stages = [{"prune": {"method": "magnitude", "sparsity": 0.5}}, {"save": {"out": str(model)}}]
    recipe = load_recipe(write_recipe(tmp_path, model, stages=stages))
    with pytest.raises(LLMPruneError, match="would overwrite the input model"):
        run_recipe(recipe, tmp_path / "run", echo=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_a_save_stage_writes_a_checkpoint_with_the_whole_run_record(tmp_path, tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    from llmprune.export.checkpoint import load_record

    out = tmp_path / "shipped"
    stages = [
        {"prune": {"method": "magnitude", "sparsity": 0.5}},
        {"save": {"out": str(out)}},
        {"evaluate": {}},
    ]
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dirs["llama"], stages=stages))
    log = run_recipe(recipe, tmp_path / "run", echo=lambda *_: None)
    record = load_record(out)
    assert [step["kind"] for step in record["steps"]] == ["prune", "save", "evaluate"]
    assert record["steps"][-1]["perplexity"] == pytest.approx(log[-1]["perplexity"])
    assert not (out / "stage.json").exists()
    masks = load_masks(out)
    masks.check(AutoModelForCausalLM.from_pretrained(out))
    assert masks.sparsity() == pytest.approx(0.5, abs=1e-3)
