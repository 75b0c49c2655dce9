"""Sparsity schedules for pruning during training: pure functions of the step.

Re-prunes happen at steps t0, t0 + Δt, …, t0 + nΔt. With p = (t − t0)/(nΔt) in [0, 1]:
- constant: s_f from t0 on (TensorFlow Model Optimization's ConstantSparsity);
- linear: s_i + (s_f − s_i)·p;
- exponential: the density (1 − s) falls geometrically from 1 − s_i to 1 − s_f, i.e. the
  same fraction of the surviving weights goes at every re-prune (a constant pruning rate);
- cubic (Zhu & Gupta 2017): s_f + (s_i − s_f)(1 − p)³, fast early, gentle at the end.
"""

from __future__ import annotations

from typing import Literal

Schedule = Literal["constant", "linear", "exponential", "cubic"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "exponential", "cubic")


def progress(step: int, start: int, every: int, count: int) -> float:
    """How far through the schedule `step` is: 0 at t0 and before, 1 at t0 + nΔt and after."""
    span = every * count
    if span <= 0:
        return 1.0 if step >= start else 0.0
    return min(1.0, max(0.0, (step - start) / span))


def scheduled_sparsity(
    step: int,
    schedule: Schedule,
    initial: float,
    final: float,
    start: int,
    every: int,
    count: int,
) -> float:
    """The sparsity the schedule asks for at `step`."""
    p = progress(step, start, every, count)
    if schedule == "constant" or p >= 1.0:
        return final  # the ends exactly, not up to rounding
    if p <= 0.0:
        return initial
    if schedule == "linear":
        return initial + (final - initial) * p
    if schedule == "exponential":
        return 1.0 - (1.0 - initial) * ((1.0 - final) / (1.0 - initial)) ** p
    if schedule == "cubic":
        return final + (initial - final) * (1.0 - p) ** 3
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def prune_steps(start: int, every: int, count: int) -> list[int]:
    """The optimizer steps after which masks are recomputed."""
    return [start + k * every for k in range(count + 1)]
