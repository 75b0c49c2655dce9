"""Every training path keeps the masks: the four ways sparsity used to leak, each pinned.

1. `all` beside `lora`: base weights train next to the adapters and must stay masked.
2. A later prune stage adds masks to the earlier ones instead of replacing them.
3. Gradients of pruned weights are zero before clipping, and AdamW's moments stay zero.
4. LoRA is trained as W + (B·A) ⊙ M, so the merged model is exactly the trained one.
"""

import pytest
import torch
import yaml

from llmprune.evaluate import sparsity_summary
from llmprune.export import load_masks
from llmprune.finetune import MaskKeeper, finetune, make_finetune_config
from llmprune.finetune.lora import add_lora, mask_adapters, merge_lora
from llmprune.models import find_layout, load_model
from llmprune.pruning import prune
from llmprune.recipe import load_recipe
from llmprune.run import run_recipe
from tests.conftest import build_tiny


def train_windows(count=24, seqlen=24):
    return torch.randint(0, 500, (count, seqlen), generator=torch.Generator().manual_seed(0))


def pruned(family="llama", sparsity=0.5, **options):
    model = build_tiny(family)
    result = prune(model, method="magnitude", sparsity=sparsity, progress=False, **options)
    return model, result.masks


def quick(**overrides):
    values = dict(steps=4, learning_rate=5e-3, batch_size=4, seqlen=24, **overrides)
    return make_finetune_config(**values)


@pytest.mark.parametrize("merge", [True, False])
def test_all_beside_lora_keeps_the_base_weights_masked(merge):
    model, masks = pruned()
    trained, _ = finetune(
        model, None, quick(trainable=["all", "lora"], merge_lora=merge), masks, train_windows()
    )
    assert masks.violations(trained) == {}
    layers = find_layout(trained).linears()
    assert sum(int((layers[n].weight != 0).sum()) for n in masks) > 0  # survivors trained


def test_a_later_prune_adds_to_the_earlier_masks():
    model, first = pruned(targets=["*.mlp.*"])
    second = prune(
        model,
        method="magnitude",
        sparsity=0.5,
        targets=["*self_attn*"],
        existing=first,
        progress=False,
    ).masks
    mlp = {n for n in first}
    attn = {n for n in find_layout(model).linears() if "self_attn" in n}
    assert set(second) == mlp | attn
    assert all(torch.equal(second[n], first[n]) for n in mlp)
    assert second.sparsity() == pytest.approx(0.5, abs=1e-3)


def test_gradients_of_pruned_weights_are_zero_before_clipping_and_in_adam():
    model, masks = pruned()
    model.train()
    keeper = MaskKeeper(masks, model)
    keeper.on_train_begin(None, None, None)
    ids = train_windows(4)
    model(input_ids=ids, labels=ids).loss.backward()
    layers = find_layout(model).linears()
    for name, mask in masks.items():
        assert int((layers[name].weight.grad[~mask] != 0).sum()) == 0, name
    params = [p for p in model.parameters() if p.grad is not None]
    survivors = torch.cat([p.grad.flatten() for p in params]).norm()
    assert float(torch.nn.utils.clip_grad_norm_(params, 1e-3)) == pytest.approx(
        float(survivors), rel=1e-5
    )
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    optimizer.step()
    for name, mask in masks.items():
        weight = layers[name].weight
        assert int((optimizer.state[weight]["exp_avg"][~mask] != 0).sum()) == 0, name
        assert int((weight[~mask] != 0).sum()) == 0, name
    keeper.on_train_end(None, None, None)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_masked_lora_trains_the_model_that_is_shipped(family):
    model, masks = pruned(family)
    peft_model, summary = finetune(
        model,
        None,
        quick(trainable=["lora"], merge_lora=False, lora_mode="masked"),
        masks,
        train_windows(),
    )
    assert summary["masked_lora_layers"] == len(masks)
    ids = train_windows(2)
    with torch.no_grad():
        trained = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model, masks)
        shipped = merged(input_ids=ids).logits
    assert torch.allclose(trained, shipped, atol=1e-5), float((trained - shipped).abs().max())
    assert masks.violations(merged) == {}


@torch.no_grad()
def logits_before_and_after_merge(peft_model, masks):
    """Give the adapters random B (peft starts them at zero), then the logits of the model
    as trained and of the model merged through the masks."""
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.1)
    ids = train_windows(2)
    trained = peft_model(input_ids=ids).logits
    return trained, merge_lora(peft_model, masks)(input_ids=ids).logits


def test_plain_lora_is_not_the_model_shipped():
    """The control: a dense adapter, masked only at merge, changes the model at merge."""
    model, masks = pruned()
    peft_model = add_lora(model, list(masks), rank=4)
    trained, shipped = logits_before_and_after_merge(peft_model, masks)
    assert not torch.allclose(trained, shipped, atol=1e-3)


def test_masked_forward_is_the_merged_weight_on_a_random_adapter():
    model, masks = pruned("gpt2")
    peft_model = add_lora(model, list(masks), rank=4)
    assert mask_adapters(peft_model, masks) == len(masks)
    trained, shipped = logits_before_and_after_merge(peft_model, masks)
    assert torch.allclose(trained, shipped, atol=1e-5)


def test_lora_on_a_tied_head_leaves_the_embeddings_and_reloads(tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model, masks = pruned("gpt2")
    embeddings = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    merged, summary = finetune(
        model, None, quick(trainable=["lora", "lora_head"]), masks, train_windows()
    )
    assert torch.equal(merged.get_input_embeddings().weight, embeddings)
    assert not torch.equal(merged.get_output_embeddings().weight, head)
    assert summary["warmup_steps"] == 0  # 10 % of 4 steps, rounded
    merged.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = train_windows(2)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, reloaded(input_ids=ids).logits)


def test_warmup_defaults_to_a_tenth_of_the_steps():
    assert make_finetune_config(steps=100).warmup == 10
    assert make_finetune_config(steps=100, warmup_steps=3).warmup == 3


def test_sparsity_after_a_mixed_recipe_is_what_the_masks_say(tmp_path, tiny_model_dirs):
    tune = {"steps": 2, "batch_size": 2, "seqlen": 32, "learning_rate": 0.005}
    stages = [
        {"prune": {"method": "magnitude", "sparsity": 0.5, "targets": ["*.mlp.*"]}},
        {"finetune": {**tune, "trainable": ["all", "lora"], "merge_lora": False}},
        {
            "prune": {
                "method": "wanda",
                "sparsity": 0.6,
                "targets": ["*self_attn*"],
                "nsamples": 4,
                "seqlen": 32,
            }
        },
        {"finetune": {**tune, "trainable": ["all"]}},
    ]
    recipe = {
        "model": str(tiny_model_dirs["llama"]),
        "eval": {"seqlen": 32, "max_windows": 2},
        "stages": stages,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    log = run_recipe(load_recipe(path), tmp_path / "run", echo=lambda *_: None)
    final = tmp_path / "run" / "stage-04-finetune"
    masks = load_masks(final)
    linears = find_layout(build_tiny("llama")).linears()
    assert set(masks) == set(linears)  # mlp masks kept, attention masks added
    loaded = load_model(final)  # the base weights; the adapter rides along in adapter/
    assert (final / "adapter").is_dir()
    masks.check(loaded.model)
    weights = sparsity_summary(loaded.model)
    by_layer = {layer["name"]: layer["sparsity"] for layer in weights["layers"]}
    for name, sparsity in masks.layer_sparsity().items():
        assert by_layer[name] == pytest.approx(sparsity, abs=1e-9), name
    assert log[-1]["sparsity"] == pytest.approx(masks.sparsity())
    assert weights["prunable_sparsity"] == pytest.approx(masks.sparsity())
