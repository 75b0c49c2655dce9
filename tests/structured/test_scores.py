"""The pure scoring math of structured pruning, on hand-made tensors."""

import math

import pytest
import torch

from llmprune.structured import scores as S


def test_wanda_sp_sums_abs_weight_times_input_norm_over_rows():
    weight = torch.tensor([[1.0, -2.0, 0.0], [-3.0, 1.0, 4.0]])
    norms = torch.tensor([2.0, 0.5, 1.0])
    assert S.wanda_sp(weight, norms).tolist() == [8.0, 1.5, 4.0]


def test_fluctuation_is_variance_times_squared_column_norm():
    weight = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    variance = torch.tensor([0.5, 2.0])
    assert S.fluctuation(weight, variance).tolist() == [5.0, 8.0]


def test_taylor_is_abs_weight_times_gradient():
    weight = torch.tensor([[1.0, -2.0]])
    grad = torch.tensor([[3.0, 4.0]])
    assert S.taylor(weight, grad).tolist() == [[3.0, 8.0]]


def test_grouped_sums_consecutive_channels_into_heads():
    assert S.grouped(torch.arange(6.0), 3).tolist() == [3.0, 12.0]


def test_top_units_keeps_the_highest_in_original_order_and_breaks_ties_low():
    assert S.top_units(torch.tensor([0.5, 3.0, 1.0, 3.0]), 2) == [1, 3]
    assert S.top_units(torch.tensor([1.0, 1.0, 1.0]), 2) == [0, 1]


@pytest.mark.parametrize(
    ("width", "fraction", "multiple", "kept"),
    [
        (1536, 0.3, 32, 1088),
        (1536, 0.5, 32, 768),
        (128, 0.5, 8, 64),
        (128, 0.1, 32, 128),
        (100, 0.99, 32, 32),
        (20, 0.5, 32, 20),
    ],
)
def test_kept_width_rounds_to_the_nearest_multiple(width, fraction, multiple, kept):
    assert S.kept_width(width, fraction, multiple) == kept


def test_bias_compensation_adds_the_removed_channels_mean_contribution():
    weight = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]])
    mean = torch.tensor([10.0, 1.0, 2.0])
    assert S.bias_compensation(weight, mean, [1, 2]).tolist() == [8.0, 1.0]
    assert S.bias_compensation(weight, mean, []).tolist() == [0.0, 0.0]


def test_block_influence_and_angular_distance():
    x = torch.randn(2, 5, 8)
    assert S.block_influence([x], [x]) == pytest.approx(0.0, abs=1e-6)
    assert S.angular_distance([x], [2 * x]) == pytest.approx(0.0, abs=2e-3)
    assert S.block_influence([x], [-x]) == pytest.approx(2.0, abs=1e-6)
    assert S.angular_distance([x], [-x]) == pytest.approx(1.0, abs=1e-3)
    orthogonal_a = torch.tensor([[1.0, 0.0]])
    orthogonal_b = torch.tensor([[0.0, 3.0]])
    assert S.angular_distance([orthogonal_a], [orthogonal_b]) == pytest.approx(0.5)
    assert S.block_influence([orthogonal_a], [orthogonal_b]) == pytest.approx(1.0)
    assert math.isfinite(S.angular_distance([x], [torch.zeros_like(x)]))


def test_blocks_to_drop_takes_the_weakest_or_the_weakest_run():
    assert S.blocks_to_drop([0.5, 0.1, 0.9, 0.2], 2, consecutive=False) == [1, 3]
    # run scores: start 0 -> 0.4, start 1 -> 0.3, start 2 -> 0.6 for runs of 2
    assert S.blocks_to_drop([0.4, 0.3, 0.6], 2, consecutive=True) == [1, 2]
