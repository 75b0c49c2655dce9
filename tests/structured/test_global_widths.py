"""Per-layer (global) widths: ranked model-wide, saved with per-layer shapes, rebuilt by
llmprune natively and by plain transformers through the shipped modeling file."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmprune.errors import LLMPruneError
from llmprune.export.checkpoint import save_pruned
from llmprune.models import load_model
from llmprune.models.layer_shapes import MODELING_FILE, SHAPES_KEY
from llmprune.models.layout import find_layout
from llmprune.models.units import find_ffn
from llmprune.structured import structured_prune
from llmprune.structured.scores import global_keep_counts
from tests.conftest import VOCAB, build_tiny

CALIBRATION = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
INPUT = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(2))


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def uneven_llama():
    """Four blocks whose FFN channel scores differ in shape: in block 2 a few channels
    carry almost everything, so a model-wide ranking takes more from it."""
    model = build_tiny("llama", num_hidden_layers=4)
    with torch.no_grad():
        down = model.model.layers[2].mlp.down_proj.weight
        down[:, 8:] *= 0.01
    return model


def test_global_counts_standardise_within_layers_then_rank_model_wide():
    flat = torch.tensor([0.0] * 7 + [10.0])  # z = -0.35 for the seven zeros
    spread = torch.arange(1.0, 9.0)  # z from -1.53 upwards
    # 8 of 16 go: three of `spread` (z < -0.35), then five of the tied zeros
    assert global_keep_counts([flat, spread], 0.5) == [3, 5]
    assert global_keep_counts([flat, spread], 0.5, multiple=2, minimum=2) == [4, 6]
    assert global_keep_counts([flat * 1000, spread], 0.5) == [3, 5]  # scale does not matter
    # equal scores everywhere: shared out evenly, as a uniform cut would
    assert global_keep_counts([torch.ones(4), torch.ones(4)], 0.5) == [2, 2]


def test_global_ffn_widths_differ_per_block_and_reload_three_ways(tmp_path, tiny_tokenizer):
    model = uneven_llama()
    result = structured_prune(
        model, None, calibration=CALIBRATION, remove="ffn=0.5", widths="global", multiple=8
    )
    widths = [find_ffn(b, "llama").width for b in find_layout(model).blocks]
    assert widths == result.manifest["achieved"]["intermediate_size"]
    assert len(set(widths)) > 1 and widths[2] == min(widths)  # block 2 gives up the most
    assert all(w % 8 == 0 for w in widths)
    assert result.manifest["achieved"]["ffn"] == pytest.approx(0.5, abs=8 / 128)
    assert model.config.intermediate_size == 128  # the config keeps the family's width
    shapes = getattr(model.config, SHAPES_KEY)
    assert shapes["model.layers.2.mlp.down_proj"] == [64, widths[2]]
    expected = logits(model)
    loaded = type("Loaded", (), {"model": model, "tokenizer": tiny_tokenizer})
    out = save_pruned(loaded, tmp_path / "global", manifest=result.manifest)
    assert (out / MODELING_FILE).is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_llmprune.PrunedForCausalLM"
    native = load_model(out).model  # llmprune: no file from the folder runs
    assert type(native).__name__ == "LlamaForCausalLM"
    assert torch.allclose(logits(native), expected, atol=1e-6)
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert torch.allclose(logits(remote), expected, atol=1e-6)
    with pytest.raises(RuntimeError, match="mismatch"):  # plain transformers fails loudly
        AutoModelForCausalLM.from_pretrained(out)


def test_global_heads_in_both_head_units_keep_shapes_consistent(tmp_path, tiny_tokenizer):
    # kv-group: 8 heads in 4 groups of 2; query: 16 heads in 2 groups of 8 (head_dim 4)
    for unit, heads, groups in (("kv-group", 8, 4), ("query", 16, 2)):
        model = build_tiny("qwen2", num_attention_heads=heads, num_key_value_heads=groups)
        dim = 64 // heads
        with torch.no_grad():  # block 1: only its first two heads matter
            model.model.layers[1].self_attn.o_proj.weight[:, 2 * dim :] *= 0.01
        result = structured_prune(
            model,
            None,
            calibration=CALIBRATION,
            remove="heads=0.5",
            widths="global",
            head_unit=unit,
        )
        kept = result.manifest["achieved"]["num_attention_heads"]
        kv = result.manifest["achieved"]["num_key_value_heads"]
        assert kept[1] < kept[0]
        assert abs(sum(kept) - heads) <= (groups if unit == "query" else 2)
        for block, (query, kv_heads) in enumerate(zip(kept, kv, strict=True)):
            attention = model.model.layers[block].self_attn
            assert attention.q_proj.out_features == query * dim
            assert attention.k_proj.out_features == kv_heads * dim
            assert attention.num_key_value_groups == query // kv_heads
            if unit == "query":
                assert kv_heads == groups and query % groups == 0
        expected = logits(model)
        loaded = type("Loaded", (), {"model": model, "tokenizer": tiny_tokenizer})
        out = save_pruned(loaded, tmp_path / unit, manifest=result.manifest)
        assert torch.allclose(logits(load_model(out).model), expected, atol=1e-6)


def test_a_per_layer_model_streams_exports_and_prunes_again(tmp_path, tiny_tokenizer):
    from llmprune.export.sparse import export_sparse
    from llmprune.plans import prune_and_save
    from llmprune.pruning import make_config

    model = uneven_llama()
    result = structured_prune(
        model, None, calibration=CALIBRATION, remove="ffn=0.5", widths="global", multiple=8
    )
    loaded = type("Loaded", (), {"model": model, "tokenizer": tiny_tokenizer})
    first = save_pruned(loaded, tmp_path / "global", manifest=result.manifest)
    config = make_config(method="wanda", sparsity=0.5, nsamples=4, seqlen=32)
    records = prune_and_save(
        str(first), tmp_path / "sparse", config, evaluate=False, progress=False, echo=print
    )
    assert records[0]["streamed"]
    again = load_model(tmp_path / "sparse").model
    assert (tmp_path / "sparse" / MODELING_FILE).is_file()
    widths = [find_ffn(b, "llama").width for b in find_layout(again).blocks]
    assert widths == result.manifest["achieved"]["intermediate_size"]
    down = again.model.layers[2].mlp.down_proj.weight
    assert float((down == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    export_sparse(load_model(tmp_path / "sparse"), tmp_path / "exported")
    rebuilt = load_model(tmp_path / "exported").model
    assert torch.equal(logits(rebuilt), logits(again))
    # a uniform cut of blocks that now differ in width is refused, a global one is not
    with pytest.raises(LLMPruneError, match="--widths global"):
        structured_prune(again, None, calibration=CALIBRATION, remove="ffn=0.25", multiple=8)


def test_a_global_prune_without_width_changes_saves_a_plain_loadable_model(
    tmp_path, tiny_tokenizer
):
    model = build_tiny("llama", num_hidden_layers=4)
    result = structured_prune(
        model, None, calibration=CALIBRATION, remove="blocks=1", widths="global"
    )
    assert not hasattr(model.config, SHAPES_KEY)
    loaded = type("Loaded", (), {"model": model, "tokenizer": tiny_tokenizer})
    out = save_pruned(loaded, tmp_path / "blocks", manifest=result.manifest)
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and not (out / MODELING_FILE).exists()
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(out)), logits(model))


def test_shape_records_from_a_stranger_are_checked_and_never_become_code(tmp_path, tiny_tokenizer):
    model = uneven_llama()
    structured_prune(
        model, None, calibration=CALIBRATION, remove="ffn=0.5", widths="global", multiple=8
    )
    model.config.architectures = ["X as Base\nimport os\nfrom transformers import Y"]
    model.config.auto_map = {"AutoModelForCausalLM": "someone/else--code.Model"}
    loaded = type("Loaded", (), {"model": model, "tokenizer": tiny_tokenizer})
    out = save_pruned(loaded, tmp_path / "saved")
    source = (out / MODELING_FILE).read_text()
    assert "import os" not in source
    assert "from transformers import LlamaForCausalLM as Base" in source
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["auto_map"] == {"AutoModelForCausalLM": "modeling_llmprune.PrunedForCausalLM"}
    assert torch.allclose(logits(load_model(out).model), logits(model), atol=1e-6)
    for bad in (
        {"model.layers.0.mlp.down_proj": [64, -1]},
        {"model.layers.0.mlp.__class__": [64, 8]},
        {"model.layers.0.mlp.down_proj; import os": [64, 8]},
    ):
        config[SHAPES_KEY] = bad
        (out / "config.json").write_text(json.dumps(config))
        with pytest.raises(LLMPruneError, match="llmprune_layer_shapes"):
            load_model(out)
    config[SHAPES_KEY] = {"model.layers.0.mlp.down_proj": [64, 8]}
    config["llmprune_layer_attributes"] = {"model.layers.0.self_attn": {"forward": 1}}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(LLMPruneError, match="bad attribute 'forward'"):
        load_model(out)


def test_a_per_layer_model_refuses_learned_gates_and_a_second_heads_cut():
    from llmprune.structured.learned import learn_structure, make_learned_config

    model = build_tiny("qwen2", num_attention_heads=8, num_key_value_heads=4)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[:, 16:] *= 0.01
    structured_prune(model, None, calibration=CALIBRATION, remove="heads=0.5", widths="global")
    with pytest.raises(LLMPruneError, match="differ in head counts"):
        structured_prune(model, None, calibration=CALIBRATION, remove="heads=0.25")
    config = make_learned_config(sparsity=0.3, steps=1, seqlen=32, batch_size=2)
    with pytest.raises(LLMPruneError, match="learned gates need blocks of one shape"):
        learn_structure(model, None, config, windows=CALIBRATION)
