"""The sparse folder: bit-identical round trips, sizes that fall, and loud failures."""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmprune.errors import LLMPruneError
from llmprune.export.sparse import (
    DENSE_FILE,
    INDEX_FILE,
    SPARSE_FILE,
    decode,
    encode_bitmask,
    encode_nm,
    export_sparse,
    load_sparse,
)
from llmprune.models import LoadedModel, find_layout, weight_matrix
from llmprune.pruning import prune
from llmprune.pruning.amounts import NM
from tests.conftest import build_tiny
from tests.pruning.cases import windows


def pruned(family="llama", **amount):
    amount = amount or {"sparsity": 0.5}
    model = build_tiny(family)
    prune(model, method="wanda", calibration=windows(4), progress=False, **amount)
    return LoadedModel(model, None, family)


def weights(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def folder_bytes(path):
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@pytest.mark.parametrize(
    "family, amount",
    [
        ("llama", {"sparsity": 0.5}),
        ("gpt2", {"sparsity": 0.7}),
        ("llama", {"pattern": "2:4"}),
        ("opt", {"pattern": "4:8"}),
    ],
)
def test_export_then_load_gives_bit_identical_weights(family, amount, tmp_path, tiny_tokenizer):
    loaded = pruned(family, **amount)
    loaded.tokenizer = tiny_tokenizer
    report = export_sparse(loaded, tmp_path / "sparse")
    assert report["layers"] == len(find_layout(loaded.model).linears())
    index = json.loads((tmp_path / "sparse" / INDEX_FILE).read_text())
    expected = "nm" if "pattern" in amount else "bitmask"
    assert {spec["encoding"] for spec in index["layers"].values()} == {expected}
    back = load_sparse(tmp_path / "sparse")
    before, after = weights(loaded.model), weights(back.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), family
    ids = windows(2, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, back.model(input_ids=ids).logits)


def test_a_pruned_folder_is_smaller_than_dense(tmp_path):
    dense = LoadedModel(build_tiny("llama"), None, "dense")
    export_sparse(dense, tmp_path / "dense")  # nothing pruned: stored as it is
    half = pruned("llama", sparsity=0.5)
    export_sparse(half, tmp_path / "half")
    matrices = [weight_matrix(m) for m in find_layout(half.model).linears().values()]
    numel, rows = sum(m.numel() for m in matrices), sum(m.shape[0] for m in matrices)
    sparse = load_file(str(tmp_path / "half" / SPARSE_FILE))
    stored = sum(t.numel() * t.element_size() for t in sparse.values())
    # bitmask + fp32 values: 0.125 + 4 x 0.5 bytes a weight, plus an int64 offset a row
    assert stored <= (0.125 + 4 * 0.5) * numel + 8 * rows + 16 * len(matrices)
    assert stored < 0.6 * numel * 4
    assert folder_bytes(tmp_path / "half") < folder_bytes(tmp_path / "dense")


def test_plain_transformers_refuses_the_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    export_sparse(pruned(), tmp_path / "sparse")
    with pytest.raises((OSError, ValueError), match="config.json"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "sparse")


def test_a_layer_that_is_not_nm_is_refused_for_the_nm_encoding(tmp_path):
    with pytest.raises(LLMPruneError, match="is not 2:4"):
        export_sparse(pruned(sparsity=0.5), tmp_path / "sparse", pattern=NM(2, 4))
    assert not (tmp_path / "sparse").exists()


def test_encodings_on_odd_shapes_empty_and_full_rows():
    matrix = torch.randn(5, 13)
    matrix[1] = 0.0  # an empty row
    matrix[2:4, ::2] = 0.0
    parts = encode_bitmask(matrix)
    assert parts["bitmask"].shape == (5, 2)
    assert torch.equal(decode(parts, "L"), matrix)
    grouped = torch.randn(3, 8)
    grouped[:, 1::4] = 0.0
    grouped[:, 2::4] = 0.0
    grouped[0, :4] = 0.0  # a group with fewer than N non-zeros
    parts = encode_nm(grouped, NM(2, 4), "L")
    assert parts["compressed"].shape == (3, 4)
    assert torch.equal(decode(parts, "L"), grouped)


def test_bf16_values_round_and_say_by_how_much(tmp_path):
    loaded = pruned(sparsity=0.5)
    report = export_sparse(loaded, tmp_path / "bf16", values="bf16")
    assert 0 < report["max_rounding"] < 0.01
    back = load_sparse(tmp_path / "bf16")
    for name, module in find_layout(back.model).linears().items():
        original = weight_matrix(find_layout(loaded.model).linears()[name])
        assert torch.equal(weight_matrix(module) == 0, original == 0), name


@pytest.mark.parametrize(
    "damage, message",
    [
        ("drop", "has no tensor"),
        ("popcount", "marks"),
        ("shape", "in its config"),
    ],
)
def test_damaged_folders_are_one_line_errors(damage, message, tmp_path):
    export_sparse(pruned(), tmp_path / "s")
    path = tmp_path / "s" / SPARSE_FILE
    tensors = load_file(str(path))
    key = "model.layers.0.mlp.up_proj.weight"
    if damage == "drop":
        del tensors[f"{key}.compressed"]
    elif damage == "popcount":
        tensors[f"{key}.compressed"] = tensors[f"{key}.compressed"][:-1].clone()
        tensors.pop(f"{key}.row_offsets")
    else:
        index = json.loads((tmp_path / "s" / INDEX_FILE).read_text())
        index["config"]["intermediate_size"] = 256
        (tmp_path / "s" / INDEX_FILE).write_text(json.dumps(index))
    save_file(tensors, str(path))
    with pytest.raises(LLMPruneError, match=message):
        load_sparse(tmp_path / "s")


def test_a_pickle_is_never_opened(tmp_path, monkeypatch):
    export_sparse(pruned(), tmp_path / "s")
    (tmp_path / "s" / DENSE_FILE).unlink()
    (tmp_path / "s" / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    monkeypatch.setitem(sys.modules, "pickle", None)  # any unpickling would fail loudly
    with pytest.raises(LLMPruneError, match="has no dense.safetensors"):
        load_sparse(tmp_path / "s")
