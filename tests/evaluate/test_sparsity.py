import torch

from llmprune.evaluate import layer_sparsity, nm_pattern, sparsity_summary
from llmprune.models import find_layout, weight_matrix
from tests.conftest import build_tiny


def test_nm_pattern_detection():
    dense = torch.randn(8, 16)
    assert nm_pattern(dense) is None
    two_four = dense.clone().view(8, 4, 4)
    two_four[..., :2] = 0
    assert nm_pattern(two_four.view(8, 16)) == "2:4"
    one_four = dense.clone().view(8, 4, 4)
    one_four[..., 1:] = 0
    assert nm_pattern(one_four.view(8, 16)) == "1:4"
    # 4 zeros in a row of 8 channels fits 4:8 but not 2:4
    four_eight = dense.clone().view(8, 2, 8)
    four_eight[..., :4] = 0
    assert nm_pattern(four_eight.view(8, 16)) == "4:8"


def test_layer_sparsity_counts_zeros_exactly():
    model = build_tiny("gpt2")
    name, module = next(iter(find_layout(model).linears().items()))
    matrix = weight_matrix(module)
    with torch.no_grad():
        matrix[:, :10] = 0
    report = {layer.name: layer for layer in layer_sparsity(model)}
    assert report[name].zeros == matrix.shape[0] * 10
    assert report[name].shape == tuple(matrix.shape)
    summary = sparsity_summary(model)
    assert summary["prunable_sparsity"] == report[name].zeros / summary["prunable_parameters"]
