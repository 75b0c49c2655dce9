"""Pruning while training on tiny models: exact sparsity, nested masks, every score,
threshold mode, a resumed run equal to an unbroken one, and bad configs."""

import pytest
import torch
import yaml
from safetensors.torch import load_file

from llmprune.errors import LLMPruneError
from llmprune.gradual import GradualPruner, gradual_prune, make_gradual_config
from llmprune.models.layout import find_layout, weight_matrix
from tests.conftest import VOCAB, build_tiny

WINDOWS = torch.randint(0, VOCAB, (64, 32), generator=torch.Generator().manual_seed(3))
BASE = {"batch_size": 2, "seqlen": 32, "learning_rate": 1e-3}


def run(model, masks=None, **options):
    config = make_gradual_config(**(BASE | options))
    return gradual_prune(model, None, config, masks, WINDOWS[: config.steps * 2])


@pytest.fixture
def snapshots(monkeypatch):
    """The masks right after every re-prune."""
    taken = []
    original = GradualPruner.reprune

    def recording(self, step):
        original(self, step)
        taken.append({name: mask.clone() for name, mask in self.unpacked.items()})

    monkeypatch.setattr(GradualPruner, "reprune", recording)
    return taken


@pytest.mark.parametrize("score", ["magnitude", "wanda", "movement"])
def test_cubic_schedule_reaches_its_target_exactly_with_nested_masks(score, snapshots):
    model = build_tiny("llama")
    model, masks, summary = run(
        model, sparsity=0.5, schedule="cubic", steps=10, start_step=1, every=3, score=score
    )
    trace = summary["schedule"]
    assert [point["step"] for point in trace] == [1, 4, 7, 10]
    assert trace[0]["sparsity"] == pytest.approx(0.0, abs=1e-9)
    reached = [point["sparsity"] for point in trace]
    assert reached == sorted(reached) and reached[-1] == pytest.approx(0.5, abs=1e-3)
    for layer, sparsity in masks.layer_sparsity().items():
        assert sparsity == pytest.approx(0.5, abs=1e-3), layer
    for earlier, later in zip(snapshots, snapshots[1:], strict=False):
        for name in later:
            assert torch.all(later[name] <= earlier[name]), name  # pruned stays pruned
    assert masks.violations(model) == {}


def test_gradual_keeps_the_masks_of_an_earlier_prune():
    from llmprune.pruning import prune

    model = build_tiny("llama")
    earlier = prune(model, method="magnitude", sparsity=0.3, progress=False).masks
    model, masks, _ = run(model, earlier, sparsity=0.6, steps=6, start_step=1, every=5)
    for name in earlier:
        assert torch.all(masks[name] <= earlier[name]), name
    assert masks.sparsity() == pytest.approx(0.6, abs=1e-3)


def test_threshold_mode_prunes_exactly_the_weights_below_tau():
    model = build_tiny("llama")
    tau = 0.01
    model, masks, summary = run(model, threshold=tau, steps=6, start_step=2, every=2)
    layers = find_layout(model).linears()
    for name, mask in masks.items():
        weight = weight_matrix(layers[name])
        assert torch.all(weight[mask].abs() >= tau), name  # the last re-prune is the last step
        assert torch.all(weight[~mask] == 0), name
    assert 0 < summary["schedule"][-1]["sparsity"] < 1


def write_recipe(tmp_path, model_dir):
    recipe = {
        "model": str(model_dir),
        "eval": {"seqlen": 32, "max_windows": 2, "after_each": False},
        "stages": [
            {
                "gradual": {
                    **BASE,
                    "sparsity": 0.5,
                    "steps": 8,
                    "start_step": 1,
                    "every": 3,
                    "score": "movement",
                }
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_gradual_run_killed_midway_resumes_to_the_same_weights(
    tmp_path, tiny_model_dirs, monkeypatch
):
    from llmprune.recipe import load_recipe
    from llmprune.run import run_recipe

    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dirs["llama"]))
    log = run_recipe(recipe, tmp_path / "whole", echo=lambda *_: None)
    assert log[0]["kind"] == "gradual" and log[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    original = GradualPruner.on_step_end

    def killed(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(GradualPruner, "on_step_end", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "broken", echo=lambda *_: None)
    monkeypatch.setattr(GradualPruner, "on_step_end", original)
    run_recipe(recipe, tmp_path / "broken", resume=True, echo=lambda *_: None)
    whole = load_file(next((tmp_path / "whole" / "stage-01-gradual").glob("*.safetensors")))
    broken = load_file(next((tmp_path / "broken" / "stage-01-gradual").glob("*.safetensors")))
    assert whole.keys() == broken.keys()
    assert all(torch.equal(whole[k], broken[k]) for k in whole)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 0.3, "initial_sparsity": 0.5}, "below its start"),
        ({"sparsity": 1.0}, "less than 1"),
        ({"threshold": -0.1}, "greater than or equal to 0"),
        ({}, "target sparsity or a threshold"),
        ({"sparsity": 0.5, "threshold": 0.1}, "target sparsity or a threshold"),
        ({"sparsity": 0.5, "schedule": "constant", "initial_sparsity": 0.1}, "constant"),
        ({"sparsity": 0.5, "every": 10, "prunes": 5, "steps": 20}, "after the last"),
        ({"sparsity": 0.5, "score": "movement", "trainable": ["norms"]}, "trainable [all]"),
        ({"sparsity": 0.5, "score": "wanda", "start_step": 0}, "start_step >= 1"),
        ({"sparsity": 0.5, "trainable": ["all", "lora"]}, "no LoRA"),
        ({"sparsity": 0.5, "schedule": "quartic"}, "schedule"),
    ],
)
def test_bad_gradual_configs_are_one_line_errors(options, message):
    with pytest.raises(LLMPruneError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_gradual_config(**options)


@pytest.mark.parametrize("penalty", ["l1", "group_lasso"])
def test_a_penalty_drives_weights_toward_zero_and_logs_the_trade_off(penalty):
    options = dict(threshold=0.01, steps=10, start_step=10, every=1, prunes=0)
    _, plain, _ = run(build_tiny("llama"), **options)
    _, pushed, summary = run(build_tiny("llama"), **options, **{penalty: 1e4})
    assert pushed.sparsity() > plain.sparsity() + 0.02
    trade_off = summary["regularization"]
    assert trade_off and {"loss", "penalty", "below_threshold"} <= set(trade_off[-1])
    assert trade_off[-1]["penalty"] < trade_off[0]["penalty"]  # the penalty's gradient acts
