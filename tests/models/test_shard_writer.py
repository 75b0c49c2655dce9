"""ShardWriter streams size-limited safetensors shards that safetensors and transformers read."""

import gc
import json
import weakref

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from llmprune.models.streaming import (
    DEFAULT_MAX_SHARD_BYTES,
    INDEX_FILE,
    SINGLE_FILE,
    ShardWriter,
)
from tests.conftest import build_tiny


def sample_parts() -> list[dict[str, torch.Tensor]]:
    """Three `add` calls' worth of tensors: odd dtypes, a transposed view, empty and 0-dim."""
    g = torch.Generator().manual_seed(0)
    return [
        {"a": torch.randn(16, 8, generator=g), "b": torch.randn(8, 16, generator=g).t()},
        {
            "c": torch.randn(40, generator=g).to(torch.bfloat16),
            "mask": torch.rand(5, 7, generator=g) > 0.5,
            "empty": torch.zeros(0, 4),
        },
        {
            "big": torch.randn(200, generator=g),
            "scalar": torch.tensor(3, dtype=torch.int64),
            "half": torch.randn(3, 3, generator=g).half(),
        },
    ]


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write(directory, parts, **kwargs) -> None:
    writer = ShardWriter(directory, **kwargs)
    for part in parts:
        writer.add(part)
    writer.finish()


def test_small_limit_gives_several_shards_and_an_index(tmp_path):
    limit = 600
    parts = sample_parts()
    write(tmp_path, parts, max_shard_bytes=limit)
    expected = {key: t for part in parts for key, t in part.items()}
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2
    count = len(shards)
    assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*shards, INDEX_FILE])
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(nbytes(t) for t in expected.values())
    loaded = {}
    for name in shards:
        shard = load_file(tmp_path / name)
        assert all(index["weight_map"][key] == name for key in shard)
        size = sum(nbytes(t) for t in shard.values())
        assert size <= limit or len([t for t in shard.values() if nbytes(t)]) == 1
        loaded.update(shard)
    assert loaded.keys() == expected.keys()
    for key, tensor in expected.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_under_the_limit_is_one_file_without_index(tmp_path):
    parts = sample_parts()
    write(tmp_path, parts)
    assert DEFAULT_MAX_SHARD_BYTES == 50 * 10**9
    assert [p.name for p in tmp_path.iterdir()] == [SINGLE_FILE]
    loaded = load_file(tmp_path / SINGLE_FILE)
    for key, tensor in {k: t for part in parts for k, t in part.items()}.items():
        assert torch.equal(loaded[key], tensor), key


def test_empty_checkpoint_and_misuse(tmp_path):
    write(tmp_path, [])
    assert load_file(tmp_path / SINGLE_FILE) == {}
    writer = ShardWriter(tmp_path / "other")
    (tmp_path / "other").mkdir()
    writer.add({"x": torch.ones(2)})
    with pytest.raises(ValueError, match="already written"):
        writer.add({"x": torch.ones(2)})
    writer.finish()
    with pytest.raises(ValueError, match="after finish"):
        writer.add({"y": torch.ones(2)})


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_transformers_loads_a_sharded_checkpoint(family, tmp_path):
    model = build_tiny(family)
    seen, items = set(), []
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:  # a tied head is saved once, as transformers does
            seen.add(tensor.data_ptr())
            items.append((key, tensor))
    third = len(items) // 3 + 1
    parts = [dict(items[i : i + third]) for i in range(0, len(items), third)]
    write(tmp_path, parts, max_shard_bytes=100_000)
    model.config.save_pretrained(tmp_path)
    assert (tmp_path / INDEX_FILE).is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 500, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_added_tensors_are_not_kept_in_memory(tmp_path):
    writer = ShardWriter(tmp_path)
    tensor = torch.randn(1000)
    ref = weakref.ref(tensor)
    writer.add({"w": tensor})
    del tensor
    gc.collect()
    assert ref() is None  # the bytes live only on disk until the shard closes
    assert (tmp_path / ".shard-data.partial").stat().st_size == 4000
    writer.finish()
    assert [p.name for p in tmp_path.iterdir()] == [SINGLE_FILE]
