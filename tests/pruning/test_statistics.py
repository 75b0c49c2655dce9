"""Statistics: input norms and the Hessian, NaN refused, dampening."""

import pytest
import torch

from llmprune.errors import LLMPruneError
from llmprune.pruning.statistics import Hessian, InputNorms, inverse_hessian_factor


def test_statistics_refuse_nan_activations():
    norms = InputNorms(4, "model.layers.3.mlp.down_proj")
    with pytest.raises(LLMPruneError, match="NaN/Inf.*model.layers.3.mlp.down_proj"):
        norms.add_batch(torch.tensor([[1.0, float("nan"), 0.0, 1.0]]))


def test_hessian_is_two_x_xt_over_tokens():
    x = torch.randn(100, 5)
    hessian = Hessian(5, "L")
    hessian.add_batch(x[:30])
    hessian.add_batch(x[30:])
    assert torch.allclose(hessian.matrix, 2 * x.t() @ x / 100, atol=1e-5)


def test_dampening_rescues_a_singular_hessian_and_fails_loudly_on_nan():
    singular = torch.zeros(6, 6)
    singular[0, 0] = 1.0
    factor = inverse_hessian_factor(singular, 0.01, "L")
    assert torch.isfinite(factor).all()
    bad = torch.full((6, 6), float("nan"))
    with pytest.raises(LLMPruneError, match="layer blocks.0.q"):
        inverse_hessian_factor(bad, 0.01, "blocks.0.q")
    negative = -torch.eye(6) * 1e6
    with pytest.raises(LLMPruneError, match="layer blocks.0.k is singular"):
        inverse_hessian_factor(negative, 0.01, "blocks.0.k")
