"""The lean decode loop: the same greedy tokens as transformers' generate, dense or sparse."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.evaluate.speed import HFDecoder
from llmprune.pruning import prune
from llmprune.runtime.decode import LeanDecoder, interleaved
from llmprune.runtime.kernel import library
from llmprune.runtime.sparse_linear import SparseLinear
from tests.conftest import build_tiny


def hf_greedy(model, ids, new_tokens):
    return HFDecoder(model).generate(ids, new_tokens)  # plain transformers generate


def prompt(batch=1, length=7, seed=0):
    return torch.randint(0, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("batch", [1, 3])
def test_lean_greedy_tokens_equal_generate(family, batch):
    model = build_tiny(family)
    ids = prompt(batch)
    assert torch.equal(LeanDecoder(model).generate(ids, 12), hf_greedy(model, ids, 12))


def test_lean_logits_match_the_model_forward():
    model = build_tiny("qwen2")  # q/k/v biases
    ids = prompt(2, 9)
    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, -1]
    got = LeanDecoder(model).prefill(ids)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.skipif(library() is None, reason="no C compiler")
@pytest.mark.parametrize("layout", ["bitmask", "indexed"])
@pytest.mark.parametrize("values", [None, torch.bfloat16])
def test_sparse_lean_matches_dense_lean_on_a_pruned_model(values, layout):
    model = build_tiny("llama", hidden_size=128, intermediate_size=384)
    prune(model, method="magnitude", sparsity=0.7, progress=False)
    dense = LeanDecoder(model)
    sparse = LeanDecoder(model, sparse=True, values_dtype=values, layout=layout)
    blocks = model.config.num_hidden_layers
    assert set(sparse.sparse_projections().values()) == {layout}
    assert len(sparse.sparse_projections()) == 4 * blocks  # every block projection, not the head
    ids = prompt(1, 5)
    if values is None:
        assert torch.equal(sparse.generate(ids, 10), hf_greedy(model, ids, 10))
    # logits on the same prompt: fp32 values equal up to summation order; bf16 rounds them
    tolerance = 1e-4 if values is None else 5e-2
    assert torch.allclose(sparse.prefill(ids), dense.prefill(ids), atol=tolerance)
    logits = (dense.step, sparse.step)
    caches = [decoder.caches(1, 6) for decoder in (dense, sparse)]
    steps = [step(ids[:, :1], 0, cache) for step, cache in zip(logits, caches, strict=True)]
    assert torch.allclose(steps[0], steps[1], atol=tolerance)


def test_eos_stops_generation():
    model = build_tiny("llama")
    ids = prompt()
    first = int(LeanDecoder(model).generate(ids, 1)[0, -1])
    out = LeanDecoder(model).generate(ids, 20, eos_token_id=[first])
    assert out.shape[1] == ids.shape[1] + 1


def test_rows_that_reach_eos_are_padded_as_generate_pads_them():
    model = build_tiny("llama")
    ids = prompt(3, 6, seed=1)
    free = LeanDecoder(model).generate(ids, 8)
    eos = int(free[0, 8])  # row 0's third new token: the other rows go on past it
    with torch.no_grad():
        expected = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
    got = LeanDecoder(model).generate(ids, 8, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, expected)


def test_interleaving_keeps_every_q_k_product():
    g = torch.Generator().manual_seed(0)
    w_q, w_k, x, z = (torch.randn(*shape, generator=g) for shape in [(16, 5), (16, 5), (5,), (5,)])
    q, k = (w_q @ x).view(2, 8), (w_k @ z).view(2, 8)  # two heads of dimension 8
    q2, k2 = (interleaved(w_q, 8) @ x).view(2, 8), (interleaved(w_k, 8) @ z).view(2, 8)
    assert torch.allclose((q * k).sum(-1), (q2 * k2).sum(-1))
    assert torch.equal(q2[:, 0::2], q[:, :4]) and torch.equal(q2[:, 1::2], q[:, 4:])


def test_other_families_devices_and_long_sliding_windows_are_refused():
    with pytest.raises(LLMPruneError, match="lean decoding takes"):
        LeanDecoder(build_tiny("gpt2"))
    with pytest.raises(LLMPruneError, match="runs on the CPU"):
        LeanDecoder(build_tiny("llama").to("meta"))
    model = build_tiny("mistral", sliding_window=8)
    with pytest.raises(LLMPruneError, match="window of 8"):
        LeanDecoder(model).generate(prompt(1, 5), 10)


def test_sparse_projections_name_their_layout():
    model = build_tiny("llama", hidden_size=128, intermediate_size=384)
    prune(model, method="magnitude", sparsity=0.9, progress=False)
    decoder = LeanDecoder(model, sparse=True, layout="indexed")
    chosen = decoder.sparse_projections()
    assert len(chosen) == 4 * model.config.num_hidden_layers
    for name, layout in chosen.items():
        assert layout in ("bitmask", "indexed")
        block, part = name.split(".")
        assert isinstance(getattr(decoder.blocks[int(block)], part).linear, SparseLinear)


def test_without_the_compiled_kernels_the_lean_loop_gives_the_same(monkeypatch):
    import llmprune.runtime.decode as decode
    import llmprune.runtime.sparse_linear as sparse_linear

    model = build_tiny("llama")
    ids = prompt(2, 6)
    compiled = LeanDecoder(model).prefill(ids)
    monkeypatch.setattr(decode, "library", lambda: None)
    monkeypatch.setattr(sparse_linear, "library", lambda: None)
    plain = LeanDecoder(model)
    assert torch.allclose(plain.prefill(ids), compiled, atol=1e-5)
    assert torch.equal(plain.generate(ids, 6), hf_greedy(model, ids, 6))
