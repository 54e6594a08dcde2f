"""What DPM-Solver and DPM-Solver++ share besides their update rules (:mod:`.dpm_solver`): the options,
the order of each step (warm-up and ``lower_order_final``, see :mod:`._phi`), the cost, the model-call
times, and the points of a step (grid points and singlestep stages, in log-SNR).
"""
from __future__ import annotations

import numbers
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ._phi import LOWER_ORDER_FINAL_BELOW, check_lower_order_final, lowers_final
from .base import SteppedSampler

__all__ = ["ExponentialIntegrator", "Point", "grid_point", "stage_point", "SINGLESTEP_R"]

VARIANTS = ("multistep", "singlestep")
SOLVER_TYPES = ("dpmsolver", "taylor")
SINGLESTEP_R = {2: (1 / 2,), 3: (1 / 3, 2 / 3)}  # the stages of a k-th order singlestep, lam_i + r h_i


class Point(NamedTuple):  # a time with its log-SNR and marginal coefficients (0-d float64 tensors)
    t: Tensor
    lam: Tensor
    alpha: Tensor
    sigma: Tensor


def grid_point(schedule, j: int) -> Point:
    return Point(schedule.t[j], schedule.lam[j], schedule.alpha[j], schedule.sigma[j])


def stage_point(schedule, i: int, r: float) -> Point:
    """The point at ``lam_i + r h_i`` inside grid step ``i``."""
    lam = schedule.lam[i] + r * schedule.h[i]
    t, alpha, sigma = schedule.at_lam(lam)
    return Point(t, lam, alpha, sigma)


class ExponentialIntegrator(SteppedSampler):
    """Options and bookkeeping of DPM-Solver(++); a subclass gives ``prediction``, ``exponential_step``
    (the frame) and ``step`` (the update rules)."""

    orders: ClassVar[tuple[int, ...]] = (1, 2, 3)
    # Not thresholding: it changes the ODE, so the order claims do not hold; tests/test_dpm_solver.py covers it.
    conformance_options: ClassVar[tuple[dict, ...]] = tuple(
        {"order": k, "variant": v, **lof} for k in (1, 2, 3) for v in VARIANTS for lof in ({}, {"lower_order_final": False})
    ) + tuple({"order": 3, "variant": v, "lower_order_final": True} for v in VARIANTS) + (
        {"order": 3, "variant": "singlestep", "solver_type": "taylor", "lower_order_final": False},)

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool | None = None,
                 solver_type: str = "dpmsolver"):
        if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in self.orders:
            raise ValueError(f"order: {self.name!r} has orders {', '.join(map(str, self.orders))}, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type: expected one of {', '.join(map(repr, SOLVER_TYPES))}, got {solver_type!r}")
        self.order, self.variant, self.solver_type = int(order), variant, solver_type
        self.lower_order_final = check_lower_order_final(lower_order_final)

    @property
    def calls_per_step(self) -> int:
        return 1 if self.variant == "multistep" else self.order

    @property
    def convergence_order(self) -> int:
        """The global order from :data:`~._phi.LOWER_ORDER_FINAL_BELOW` steps on."""
        return self.convergence_order_for(LOWER_ORDER_FINAL_BELOW)

    def convergence_order_for(self, steps: int) -> int:
        """The global order of a run of ``steps`` steps: a first-order last step caps it at 2."""
        return min(self.order, 2) if lowers_final(self.lower_order_final, steps) else self.order

    def step_order(self, i: int, steps: int) -> int:
        """The order of grid step ``i`` of ``steps``: warm-up (multistep) and lower_order_final."""
        k = self.order if self.variant == "singlestep" else min(self.order, i + 1)
        return min(k, steps - i) if lowers_final(self.lower_order_final, steps) else k

    def step_orders(self, steps: int) -> list[int]:
        return [self.step_order(i, steps) for i in range(steps)]  # also stats['orders']

    def expected_nfe(self, steps: int) -> int:
        return steps if self.variant == "multistep" else sum(self.step_orders(steps))

    def run_stats(self, steps: int) -> dict:
        return {"orders": self.step_orders(steps)}

    def call_times(self, schedule, start: int = 0) -> Tensor:
        """``t_i`` for every step; a singlestep step of order ``k`` adds its ``k - 1`` stages."""
        times = []
        for i in range(start, schedule.steps):
            times.append(schedule.t[i])
            if self.variant == "singlestep":
                times += [stage_point(schedule, i, r).t for r in SINGLESTEP_R.get(self.step_order(i, schedule.steps), ())]
        return torch.stack(times)
