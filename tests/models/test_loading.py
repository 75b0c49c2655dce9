import json

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.models import load_model


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
