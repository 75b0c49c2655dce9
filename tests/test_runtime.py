"""The sparse linear layer equals the dense masked matmul, kernel or no kernel."""

import pytest
import torch

from llmprune.runtime.kernel import library
from llmprune.runtime.sparse_linear import SparseLinear, sparsify
from tests.conftest import build_tiny

pytestmark = pytest.mark.skipif(library() is None, reason="no C compiler")


def masked_matrix(rows, cols, sparsity, seed=0):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(rows, cols, generator=g)
    matrix[torch.rand(rows, cols, generator=g) < sparsity] = 0.0
    return matrix


LAYOUT_PATHS = [("bitmask", True), ("bitmask", False), ("indexed", True)]


@pytest.mark.parametrize("layout, simd", LAYOUT_PATHS)
@pytest.mark.parametrize("rows, cols", [(7, 37), (64, 128), (33, 8), (5, 1), (300, 333)])
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_sparse_linear_matches_the_dense_masked_matmul(rows, cols, tokens, layout, simd):
    matrix = masked_matrix(rows, cols, 0.6)
    matrix[0] = 0.0  # an empty row
    if rows > 2:
        matrix[1] = torch.randn(cols)  # a fully dense row
    bias = torch.randn(rows)
    layer = SparseLinear(matrix, bias, simd=simd, layout=layout)
    assert torch.equal(layer.dense_weight(), matrix)
    x = torch.randn(tokens, cols)  # exactly `tokens` rows reach the kernel
    expected = x @ matrix.t() + bias
    got = layer(x)
    assert got.shape == expected.shape
    error = float((got - expected).norm() / expected.norm())
    assert error <= 1e-5, error


@pytest.mark.parametrize("layout", ["bitmask", "indexed"])
@pytest.mark.parametrize("cols", [75, 1000])
def test_bf16_values_match_the_rounded_weights(layout, cols):
    matrix = masked_matrix(40, cols, 0.7)
    layer = SparseLinear(matrix, None, values_dtype=torch.bfloat16, layout=layout)
    rounded = matrix.bfloat16().float()
    x = torch.randn(3, cols)
    for tokens in (1, 3):
        expected = x[:tokens] @ rounded.t()
        error = float((layer(x[:tokens]) - expected).norm() / expected.norm())
        assert error <= 1e-5, error
    assert torch.equal(layer.dense_weight(), rounded)


def test_sparsify_keeps_the_model_output(tiny_model_dirs):
    from llmprune.models import load_model
    from llmprune.pruning import prune

    model = build_tiny("llama")
    prune(model, method="magnitude", sparsity=0.7, progress=False)
    ids = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        chosen = sparsify(model, min_sparsity=0.3, layout="bitmask")
        swapped = [m for m in model.modules() if isinstance(m, SparseLinear)]
        assert len(swapped) == len(chosen) == 7 * model.config.num_hidden_layers
        assert all(m.max_sparse_tokens == 8 for m in swapped)
        after = model(input_ids=ids).logits
        step = model(input_ids=ids[:, :1]).logits
    assert torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(before[:, :1], step, atol=1e-4)
    del load_model, tiny_model_dirs


def test_the_indexed_layout_reads_column_indices_past_int16():
    matrix = torch.zeros(2, 40000)
    matrix[0, 39999] = 2.0  # column index above 32767: stored as uint16
    matrix[1, 5] = 3.0
    layer = SparseLinear(matrix, None, layout="indexed")
    x = torch.randn(1, 40000)
    assert torch.allclose(layer(x), x @ matrix.t())
    assert torch.equal(layer.dense_weight(), matrix)


def test_without_the_compiled_kernel_the_dense_path_gives_the_same(monkeypatch):
    import llmprune.runtime.sparse_linear as sparse_linear

    monkeypatch.setattr(sparse_linear, "library", lambda: None)
    matrix = masked_matrix(9, 21, 0.5)
    layer = SparseLinear(matrix, torch.randn(9))
    assert layer.max_sparse_tokens == 0
    x = torch.randn(1, 21)
    assert torch.allclose(layer(x), x @ matrix.t() + layer.bias, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, cols", [(7, 37), (64, 128), (33, 8), (5, 1), (300, 333)])
def test_the_dense_kernel_matches_torch(rows, cols, dtype):
    from llmprune.runtime.sparse_linear import DenseKernelLinear

    matrix = torch.randn(rows, cols).to(dtype)
    bias = torch.randn(rows)
    layer = DenseKernelLinear(matrix.float(), bias) if dtype == torch.float32 else None
    layer = layer or DenseKernelLinear(matrix, bias.to(dtype))
    for tokens in range(1, 10):
        x = torch.randn(tokens, cols)
        expected = x @ matrix.float().t() + bias.to(dtype).float()
        got = layer(x)
        error = float((got - expected).norm() / expected.norm())
        assert error <= 1e-5, (tokens, error)


def test_fastest_linear_returns_a_module_that_computes_the_layer():
    from llmprune.runtime.sparse_linear import KINDS, fastest_linear

    matrix = masked_matrix(96, 200, 0.8)
    bias = torch.randn(96)
    x = torch.randn(1, 200)
    module = fastest_linear(matrix, bias, sparse=True)
    assert module.__class__.__name__ in ("TorchLinear", "DenseKernelLinear", "SparseLinear")
    assert getattr(module, "layout", "torch") in (*KINDS, "torch")
    assert torch.allclose(module(x), x @ matrix.t() + bias, atol=1e-5)


def test_a_batch_of_sequences_reaches_the_kernel_as_rows():
    matrix = masked_matrix(30, 50, 0.7)
    layer = SparseLinear(matrix, None)
    x = torch.randn(2, 3, 50)  # 6 tokens
    assert torch.allclose(layer(x), x @ matrix.t(), atol=1e-5)
