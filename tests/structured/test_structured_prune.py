"""Structured pruning on tiny models: shapes, parameter counts, reload, zero units,
grouped-query attention, dropped blocks and the KV cache, masks, stages and bad input."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from llmprune.errors import LLMPruneError
from llmprune.models.layout import find_layout, weight_matrix
from llmprune.models.units import find_attention, find_ffn
from llmprune.pruning import prune
from llmprune.structured import structured_prune
from tests.conftest import HIDDEN, VOCAB, build_tiny

CALIBRATION = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
INPUT = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))
SCORES = ["wanda-sp", "flap", "taylor"]


def cut(model, remove, **options):
    options = {"multiple": 8, "progress": False, **options}
    return structured_prune(model, None, calibration=CALIBRATION, remove=remove, **options)


def logits(model, ids=INPUT):
    with torch.no_grad():
        return model(input_ids=ids).logits


def reloaded(model, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()


def test_llama_with_gqa_has_the_expected_shapes_and_parameter_count(tmp_path):
    model = build_tiny("llama")  # 4 query heads in 2 key-value groups, head_dim 16, ffn 128
    before = sum(p.numel() for p in model.parameters())
    result = cut(model, "ffn=0.5,heads=0.5")
    config = model.config
    assert (config.intermediate_size, config.num_attention_heads) == (64, 2)
    assert (config.num_key_value_heads, config.head_dim) == (1, 16)
    for block in find_layout(model).blocks:
        attention = block.self_attn
        assert weight_matrix(attention.q_proj).shape == (32, HIDDEN)
        assert weight_matrix(attention.k_proj).shape == (16, HIDDEN)
        assert weight_matrix(attention.o_proj).shape == (HIDDEN, 32)
        assert weight_matrix(block.mlp.down_proj).shape == (HIDDEN, 64)
        assert attention.num_key_value_groups == 2
    # per block: 64 FFN channels x 3 projections x 64, and one group (2 q + k + v + 2 o
    # heads of 16 channels) x 64
    removed = 2 * (64 * 3 * HIDDEN + 6 * 16 * HIDDEN)
    assert sum(p.numel() for p in model.parameters()) == before - removed
    assert result.manifest["parameters"]["after"]["model"] == before - removed
    assert result.manifest["achieved"]["heads"] == 0.5


@pytest.mark.parametrize(
    ("family", "remove"),
    [
        ("llama", "ffn=0.5,heads=0.5,blocks=1"),
        ("qwen2", "ffn=0.25,heads=0.5,blocks=1"),
        ("opt", "ffn=0.5,blocks=1"),
        ("gpt2", "ffn=0.25,blocks=1"),
        ("gpt_neox", "ffn=0.5"),
        ("mistral", "heads=0.5"),
        ("gemma", "ffn=0.5,heads=0.5"),
        ("phi", "ffn=0.5,heads=0.25"),
    ],
)
@pytest.mark.parametrize("score", SCORES)
def test_the_saved_model_reloads_to_the_same_logits(tmp_path, family, remove, score):
    model = build_tiny(family)
    cut(model, remove, score=score)
    again = reloaded(model, tmp_path)
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.allclose(logits(model), logits(again), atol=1e-5)
    fresh = AutoModelForCausalLM.from_config(model.config)  # the config alone gives the shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def zero_weakest_units(model, ffn_channels, kv_group=None):
    """Silence FFN channels (their output columns) and a key-value group (its heads' o
    columns): such units contribute nothing, so removing them must change nothing."""
    config = model.config
    for block in find_layout(model).blocks:
        ffn = find_ffn(block, config.model_type)
        weight_matrix(ffn.output)[:, ffn_channels] = 0
        if kv_group is not None:
            attention = find_attention(block, config)
            dim, group = attention.head_dim, attention.group_size
            start = kv_group * group * dim
            weight_matrix(attention.o)[:, start : start + group * dim] = 0


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "opt", "gpt2"])
def test_removing_units_whose_weights_are_zero_leaves_the_logits_unchanged(family, score):
    model = build_tiny(family)
    width = find_ffn(find_layout(model).blocks[0], model.config.model_type).width
    silent = list(range(1, width, 2))  # half the channels
    has_heads = family in ("llama", "qwen2")
    with torch.no_grad():
        zero_weakest_units(model, silent, kv_group=1 if has_heads else None)
    expected = logits(model)
    result = cut(model, "ffn=0.5,heads=0.5" if has_heads else "ffn=0.5", score=score, multiple=1)
    for layer in result.manifest["layers"]:
        assert sorted(set(range(width)) - set(layer["ffn"]["kept"])) == silent
        if has_heads:
            assert layer["heads"]["kv_kept"] == [0]
    assert torch.allclose(logits(model), expected, atol=1e-5)


def test_query_mode_keeps_every_key_value_group_and_the_same_count_in_each(tmp_path):
    model = build_tiny("llama", num_attention_heads=8, num_key_value_heads=2)  # groups of 4
    result = cut(model, "heads=0.5", head_unit="query")
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    for layer in result.manifest["layers"]:
        kept = layer["heads"]["kept"]
        assert [h // 4 for h in kept] == [0, 0, 1, 1]  # two heads from each group, in order
        assert layer["heads"]["kv_kept"] == [0, 1]
    attention = find_layout(model).blocks[0].self_attn
    assert attention.num_key_value_groups == 2
    again = reloaded(model, tmp_path)
    assert torch.allclose(logits(model), logits(again), atol=1e-5)


def cached_logits(model, ids):
    """Logits of the last two tokens, decoded one at a time through the KV cache."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids[:, :-2], past_key_values=cache, use_cache=True)
        steps = [
            model(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits
            for i in (ids.shape[1] - 2, ids.shape[1] - 1)
        ]
    return torch.cat(steps, dim=1)


def test_dropping_a_block_renumbers_the_kv_cache_and_layer_types(tmp_path):
    model = build_tiny(
        "qwen2",
        num_hidden_layers=4,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=8,
    )
    result = cut(model, "blocks=2", block_score="angular")
    dropped = result.manifest["dropped_blocks"]
    assert len(dropped) == 2 and dropped[1] == dropped[0] + 1
    kept = [i for i in range(4) if i not in dropped]
    types = ["full_attention", "sliding_attention"] * 2
    assert model.config.layer_types == [types[i] for i in kept]
    assert model.config.num_hidden_layers == 2
    blocks = find_layout(model).blocks
    assert [block.self_attn.layer_idx for block in blocks] == [0, 1]
    full = logits(model)[:, -2:]
    assert torch.allclose(cached_logits(model, INPUT), full, atol=1e-4)
    again = reloaded(model, tmp_path)
    assert again.config.layer_types == model.config.layer_types
    assert torch.allclose(cached_logits(again, INPUT), full, atol=1e-4)


def test_influence_drops_the_blocks_that_change_their_input_least():
    model = build_tiny("llama", num_hidden_layers=4)
    with torch.no_grad():  # block 2 adds nothing to the residual stream: influence 0
        block = find_layout(model).blocks[2]
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    expected = logits(model)
    result = cut(model, "blocks=1")
    assert result.manifest["dropped_blocks"] == [2]
    assert result.manifest["block_scores"][2] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(logits(model), expected, atol=1e-5)


def test_masks_of_an_earlier_prune_are_sliced_and_rekeyed_with_the_weights():
    model = build_tiny("llama", num_hidden_layers=3)
    masks = prune(model, method="magnitude", sparsity=0.5, progress=False).masks
    result = cut(model, "ffn=0.5,heads=0.5,blocks=1", masks=masks)
    layout = find_layout(model)
    assert set(result.masks) == set(layout.linears())
    for name, module in layout.linears().items():
        mask = result.masks[name]
        assert mask.shape == weight_matrix(module).shape
        assert torch.all(weight_matrix(module)[~mask] == 0), name
    assert result.masks.violations(model) == {}


def test_flap_folds_removed_channels_into_the_output_bias():
    model = build_tiny("opt")  # fc2 has a bias
    before = {i: b.fc2.bias.detach().clone() for i, b in enumerate(find_layout(model).blocks)}
    cut(model, "ffn=0.5", score="flap")
    for index, block in enumerate(find_layout(model).blocks):
        assert not torch.allclose(block.fc2.bias, before[index])
    model = build_tiny("opt")
    cut(model, "ffn=0.5", score="wanda-sp")
    for index, block in enumerate(find_layout(model).blocks):
        assert torch.equal(block.fc2.bias, before[index])


@pytest.mark.parametrize(
    ("family", "remove", "options", "message"),
    [
        ("opt", "heads=0.5", {}, "computes the head size from hidden_size"),
        ("gpt2", "heads=0.5", {}, "computes the head size from hidden_size"),
        ("llama", "blocks=2", {}, "would drop every block"),
        ("llama", "heads=0.2", {}, "removes no head"),
        ("llama", "heads=0.9", {"head_unit": "query"}, "would remove every head"),
        ("llama", "ffn=0.1", {"multiple": 32}, "removes no channel"),
    ],
)
def test_bad_removals_are_one_line_errors_before_any_change(family, remove, options, message):
    model = build_tiny(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LLMPruneError, match=message):
        cut(model, remove, **options)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("ffn=1", "would remove every FFN channel"),
        ("heads=1.5", "would remove every head"),
        ("ffn=-0.1", "fraction in"),
        ("blocks=1.5", "whole number"),
        ("ffn=0.1,ffn=0.2", "given twice"),
        ("layers=2", "unknown unit"),
        ("ffn=0", "say what to remove"),
    ],
)
def test_bad_specs_are_refused(remove, message):
    with pytest.raises(LLMPruneError, match=message):
        cut(build_tiny("llama"), remove)


def test_taylor_needs_gradients():
    model = build_tiny("llama")
    with torch.inference_mode(), pytest.raises(LLMPruneError, match="need gradients"):
        cut(model, "ffn=0.5", score="taylor")


def test_a_structured_recipe_saves_its_manifest_and_recovers(tmp_path, tiny_model_dirs):
    import yaml

    from llmprune.recipe import load_recipe
    from llmprune.run import run_recipe

    small = {"nsamples": 4, "seqlen": 32}
    recipe = {
        "model": str(tiny_model_dirs["llama"]),
        "eval": {"seqlen": 32, "max_windows": 2},
        "stages": [
            {
                "structured": {
                    "remove": "ffn=0.5,heads=0.5",
                    "multiple": 8,
                    "score": "flap",
                    **small,
                }
            },
            {
                "finetune": {
                    "trainable": ["norms", "lora"],
                    "steps": 2,
                    "batch_size": 2,
                    "seqlen": 32,
                }
            },
            {"structured": {"remove": {"blocks": 1}, **small}},
            {"save": {"out": str(tmp_path / "small")}},
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    log = run_recipe(load_recipe(path), tmp_path / "run", echo=lambda *_: None)
    assert [line["kind"] for line in log] == ["structured", "finetune", "structured", "save"]
    assert all(line["perplexity"] > 1 for line in log[:3])
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "small")
    assert saved.config.num_hidden_layers == 1 and saved.config.intermediate_size == 64
    manifest = json.loads((tmp_path / "small" / "pruning_manifest.json").read_text())
    assert manifest["base_model"] == str(tiny_model_dirs["llama"])
    assert [p["removal"]["spec"] for p in manifest["passes"]] == ["ffn=0.5,heads=0.5", "blocks=1"]


def test_head_counts_the_config_would_refuse_are_refused_before_any_change():
    model = build_tiny("llama", num_attention_heads=8, num_key_value_heads=8)  # hidden 64
    with pytest.raises(LLMPruneError, match="config refuses"):
        cut(model, "heads=0.25")  # 6 heads: 64 % 6 != 0, LlamaConfig would not save
    cut(model, "heads=0.5")  # 4 heads: fine
    assert model.config.num_attention_heads == 4


def test_phi_with_qk_layernorm_keeps_its_heads():
    model = build_tiny("phi", qk_layernorm=True)
    with pytest.raises(LLMPruneError, match="normalises q and k"):
        cut(model, "heads=0.5")
