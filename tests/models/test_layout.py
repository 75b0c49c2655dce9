import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from llmprune.errors import LLMPruneError
from llmprune.models import find_layout, set_weight_matrix, weight_matrix
from tests.conftest import FAMILIES, LINEARS_PER_BLOCK, build_tiny


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_finds_every_linear_in_the_blocks(family):
    model = build_tiny(family)
    layout = find_layout(model)
    assert layout.num_blocks == 2
    linears = layout.linears()
    assert len(linears) == 2 * LINEARS_PER_BLOCK[family]
    # every Linear/Conv1D of the model that is not the head or an embedding is found
    head = model.get_output_embeddings()
    everything = {
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and m is not head
    }
    assert set(linears) == everything
    assert all(name.startswith(layout.blocks_path) for name in linears)


def test_conv1d_weight_matrix_is_out_by_in_and_writes_through():
    layer = Conv1D(nf=6, nx=4)  # in 4, out 6
    matrix = weight_matrix(layer)
    assert matrix.shape == (6, 4)
    x = torch.randn(3, 4)
    expected = x @ matrix.t() + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)
    set_weight_matrix(layer, torch.zeros(6, 4))
    assert torch.count_nonzero(layer.weight) == 0


def test_model_without_blocks_is_unsupported():
    with pytest.raises(LLMPruneError, match="unsupported architecture"):
        find_layout(nn.Sequential(nn.Linear(3, 3)))
