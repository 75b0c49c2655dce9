"""Schedules and scores of pruning while training: pure functions."""

import pytest
import torch

from llmprune.gradual import SCHEDULES, prune_steps, scheduled_sparsity
from llmprune.gradual import scores as S


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_hits_its_ends_exactly_and_is_monotone(schedule):
    initial = 0.5 if schedule == "constant" else 0.1
    steps = prune_steps(start=5, every=10, count=8)
    values = [scheduled_sparsity(t, schedule, initial, 0.5, 5, 10, 8) for t in steps]
    assert values[0] == initial and values[-1] == 0.5
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert scheduled_sparsity(0, schedule, initial, 0.5, 5, 10, 8) == initial  # before t0
    assert scheduled_sparsity(500, schedule, initial, 0.5, 5, 10, 8) == 0.5  # after the end


def test_cubic_is_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(nΔt))^3 at t = t0 + nΔt/2
    assert scheduled_sparsity(45, "cubic", 0.0, 0.8, 5, 10, 8) == pytest.approx(0.8 - 0.8 / 8)


def test_exponential_prunes_the_same_share_of_survivors_each_time():
    values = [scheduled_sparsity(t, "exponential", 0.0, 0.75, 0, 1, 2) for t in (0, 1, 2)]
    densities = [1 - v for v in values]
    assert densities == pytest.approx([1.0, 0.5, 0.25])


def test_prune_steps():
    assert prune_steps(1, 10, 3) == [1, 11, 21, 31]


def test_movement_scores_are_minus_the_sum_of_grad_times_weight():
    weight = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    grads = [torch.tensor([[0.1, 0.2], [-0.3, 0.0]]), torch.tensor([[1.0, -1.0], [0.0, 2.0]])]
    score = torch.zeros(2, 2)
    for grad in grads:
        S.movement_update(score, grad, weight)
    expected = -sum(g * weight for g in grads)
    assert torch.allclose(score, expected)


def test_threshold_prunes_exactly_the_weights_below_tau_and_keeps_earlier_zeros():
    weight = torch.tensor([[0.05, -0.2, 0.1], [-0.09, 0.3, 0.0]])
    existing = torch.tensor([[True, True, True], [True, False, True]])
    mask = S.threshold_mask(weight, 0.1, existing)
    assert mask.tolist() == [[False, True, True], [False, False, False]]


def test_l1_is_the_mean_absolute_weight():
    weights = [torch.tensor([[1.0, -3.0]]), torch.tensor([[0.0, 2.0, -2.0]])]
    assert S.l1_penalty(weights).item() == pytest.approx(8.0 / 5)


def test_unit_norms_gather_rows_and_matching_columns():
    gate = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # rows: channels 0 and 1
    down = torch.tensor([[4.0, 1.0], [0.0, 1.0]])  # columns: channels 0 and 1
    norms = S.unit_norms([gate], [down], 1)
    assert norms.tolist() == pytest.approx([5.0, 2.0])
    q = torch.arange(8.0).reshape(4, 2)  # two heads of 2 rows
    o = torch.ones(3, 4)  # two heads of 2 columns
    expected = [(0 + 1 + 4 + 9 + 6) ** 0.5, (16 + 25 + 36 + 49 + 6) ** 0.5]
    assert S.unit_norms([q], [o], 2).tolist() == pytest.approx(expected)
    assert S.group_lasso_penalty([norms]).item() == pytest.approx(3.5)
