"""Tiny models of each family, built from configs, with a small tokenizer trained here.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the offline text,
and each model is a randomly initialised two-block decoder saved with save_pretrained.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 512
HIDDEN = 64


def family_configs() -> dict:
    """Small configs of the families llmprune supports; kept tiny for CPU tests."""
    from transformers import (
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        PhiConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4)
    return {
        "llama": LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "opt": OPTConfig(
            hidden_size=HIDDEN,
            ffn_dim=128,
            word_embed_proj_dim=HIDDEN,
            max_position_embeddings=256,
            **common,
        ),
        "gpt2": GPT2Config(
            vocab_size=VOCAB,
            n_embd=HIDDEN,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "gpt_neox": GPTNeoXConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            max_position_embeddings=256,
            **common,
        ),
        "qwen2": Qwen2Config(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "mistral": MistralConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "phi": PhiConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            max_position_embeddings=256,
            **common,
        ),
        "gemma": GemmaConfig(
            hidden_size=HIDDEN,
            intermediate_size=128,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=256,
            **common,
        ),
    }


FAMILIES = list(family_configs())
# linear layers per block, by family: what block discovery must find
LINEARS_PER_BLOCK = {
    "llama": 7,
    "opt": 6,
    "gpt2": 4,
    "gpt_neox": 4,
    "qwen2": 7,
    "mistral": 7,
    "phi": 6,
    "gemma": 7,
}


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tiny_tokenizer()


def train_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from llmprune.data import get_source

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(get_source("pydoc").documents("train"), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def build_tiny(family: str, **changes) -> torch.nn.Module:
    """A tiny model of `family`, its config changed by `changes` (more layers, heads...)."""
    from transformers import AutoModelForCausalLM

    config = family_configs()[family]
    for key, value in changes.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict:
    """One saved tiny model directory per family (model + tokenizer)."""
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {}
    for family in FAMILIES:
        model = build_tiny(family)
        model.save_pretrained(root / family)
        tiny_tokenizer.save_pretrained(root / family)
        dirs[family] = root / family
    return dirs


def free_port() -> int:
    """A TCP port nobody listens on now (two test runs at once must not collide)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """Run `args` (a script or `-m module ...`) in 2 CPU processes under torchrun."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="session")
def real_model():
    """The real SmolLM2-135M (converted once into the cache)."""
    from llmprune.models import load_model

    return load_model("smollm2")
