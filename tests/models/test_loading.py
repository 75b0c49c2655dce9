import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmprune.errors import LLMPruneError
from llmprune.models import load_model, loading
from llmprune.models.loading import cache_dir, default_gguf_path, resolve_source


def test_directory_loads_with_tokenizer_and_dtype(tiny_model_dirs):
    loaded = load_model(tiny_model_dirs["llama"], dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.tokenizer("hello world")["input_ids"]
    assert loaded.context_length == 256
    assert not loaded.model.training


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(LLMPruneError, match="no such model"):
        load_model(str(tmp_path / "nope" / "model"))


def test_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"not a model")
    with pytest.raises(LLMPruneError, match="not a model directory"):
        load_model(str(path))


def test_directory_without_config(tmp_path):
    with pytest.raises(LLMPruneError, match="without config.json"):
        load_model(str(tmp_path))


def test_corrupt_weights_are_reported(tiny_model_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dirs["gpt2"], broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LLMPruneError, match="cannot load model"):
        load_model(str(broken))


def test_non_causal_model_is_refused(tmp_path):
    from transformers import BertConfig

    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
    )
    config.architectures = ["BertForMaskedLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(LLMPruneError, match="not a causal"):
        load_model(str(tmp_path))


def test_unknown_dtype_and_device(tiny_model_dirs):
    with pytest.raises(LLMPruneError, match="unknown dtype"):
        load_model(tiny_model_dirs["opt"], dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(LLMPruneError, match="no CUDA device"):
            load_model(tiny_model_dirs["opt"], device="cuda")


def test_unreachable_hub_id_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LLMPruneError, match="cannot load a model config from nobody/nothing"):
        load_model("nobody/nothing")


def test_gguf_conversion_drops_quantization_config(tiny_model_dirs):
    config = json.loads((tiny_model_dirs["llama"] / "config.json").read_text())
    assert "quantization_config" not in config


@pytest.mark.parametrize("content", [b"not a gguf file " * 256, b"GGUF\x03\x00\x00\x00"])
def test_gguf_that_is_not_a_model_leaves_no_cache_entry(content, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMPRUNE_CACHE", str(cache))
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(content)
    with pytest.raises(LLMPruneError) as error:
        load_model(str(fake))
    message = str(error.value)
    assert message.startswith(f"cannot load a model config from {fake}: ")
    assert "\n" not in message
    assert not cache.exists() or not any(cache.iterdir())


def fake_conversion(monkeypatch, calls: list) -> None:
    """Stand in for the 30 s de-quantization: writes a config and a weights file."""

    def convert(gguf, out):
        calls.append(gguf)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(loading, "check_gguf", lambda gguf: None)
    monkeypatch.setattr(loading, "convert_gguf", convert)


def test_gguf_is_converted_once_per_distinct_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    calls = []
    fake_conversion(monkeypatch, calls)
    first, second = tmp_path / "a.gguf", tmp_path / "b.gguf"
    first.write_bytes(b"GGUF one")
    second.write_bytes(b"GGUF two")
    with caplog.at_level(logging.WARNING, logger=loading.__name__):
        location = resolve_source(str(first))
    assert Path(location).parent == tmp_path / "cache"
    assert "converting a.gguf" in caplog.text
    assert resolve_source(str(first)) == location
    assert len(calls) == 1
    assert resolve_source(str(second)) != location
    first.write_bytes(b"GGUF changed")
    os.utime(first, ns=(1, 1))
    assert resolve_source(str(first)) != location
    assert len(calls) == 3


def test_failed_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMPRUNE_CACHE", str(cache))

    def convert(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("tensor blk.0 has an unknown type\nsecond line")

    monkeypatch.setattr(loading, "check_gguf", lambda gguf: None)
    monkeypatch.setattr(loading, "convert_gguf", convert)
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(LLMPruneError, match=r"^cannot convert .*unknown type$"):
        resolve_source(str(fake))
    assert not any(cache.iterdir())


@pytest.mark.real
def test_real_gguf_path_resolves_to_a_saveable_cached_copy(tmp_path):
    gguf = default_gguf_path()
    location = resolve_source(str(gguf))
    directory = Path(location)
    assert directory.parent == cache_dir()
    assert (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))
    stamp = (directory / "config.json").stat().st_mtime_ns
    assert resolve_source(str(gguf)) == location
    assert (directory / "config.json").stat().st_mtime_ns == stamp
    loaded = load_model(str(gguf), dtype="bfloat16")
    assert "quantization_config" not in loaded.model.config.to_dict()
    loaded.model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "config.json").is_file()


def test_pickled_weights_load_only_when_the_user_opts_in(tmp_path, monkeypatch, tiny_tokenizer):
    from tests.conftest import build_tiny

    model = build_tiny("llama")
    model.save_pretrained(tmp_path / "pickled")  # transformers 5 writes safetensors only
    tiny_tokenizer.save_pretrained(tmp_path / "pickled")
    weights = tmp_path / "pickled" / "model.safetensors"
    torch.save(load_file(str(weights)), tmp_path / "pickled" / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(LLMPruneError, match="only pickled weights"):
        load_model(tmp_path / "pickled")
    monkeypatch.setenv("LLMPRUNE_ALLOW_PICKLE", "1")
    loaded = load_model(tmp_path / "pickled")
    ids = torch.randint(0, 500, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
