r"""The probability-flow ODE (Song et al. 2021, eq. 13) through ``torchdiffeq.odeint``.

Option ``solver``: a torchdiffeq Runge-Kutta method (named ``solver`` because ``sample``'s ``method``
names the sampler; the list and the orders are :mod:`scoresde.integrators`).

* Fixed-step solvers (euler 1/1, midpoint 2/2, heun2 2/2, heun3 3/3, rk4 4/4: order / model calls
  per step; rk4 is torchdiffeq's 3/8 rule) take one step per grid interval in the SDE's own time,

  .. math::  \frac{dx}{dt} = f(t)\, x - \tfrac12 g(t)^2 s(x, t), \qquad t: T \to t_{min},

  so their result is the textbook method on the grid the user chose. On DiscreteVPSDE their stages
  cross the schedule's knots, where f jumps, and the higher-order ones lose their order there (rk4's
  error stalls near 1e-4 from 50 to 200 log-SNR steps on eight Gaussians); the adaptive solvers and
  the exponential integrators (ddim, dpm_solver, unipc) do not.
* Adaptive solvers (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) integrate the same ODE in the
  half log-SNR, ``dy/dlam = -e^{-lam} eps(alpha y, t(lam))`` with ``y = x / alpha``
  (:class:`scoresde.dynamics.ProbabilityFlowODE`), where it is smooth for every schedule of the family:
  DiscreteVPSDE's f jumps at each of its N knots in t, which an error-controlled solver in t can
  only cross by stopping at every knot. ``rtol``/``atol`` apply to y (alpha ~ 1 at the data end). They
  report the state at the grid times by interpolation, asked for only when a trajectory or progress
  bar looks at them (the steps do not depend on them), so ``steps`` may be None (only the two ends).
  Their cost is known only afterwards (``expected_nfe`` is None).

Either way the model is only evaluated at times in [t_min, T] of the grid, and ``sample(grad=True)``
differentiates the result with respect to a grid tensor (every point for the fixed-step solvers,
the two ends for the adaptive ones, whose interior points only place outputs).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._tensor import check_finite_number
from ..dynamics import ProbabilityFlowODE, odeint_in_t
from ..integrators import TORCHDIFFEQ_ADAPTIVE, TORCHDIFFEQ_FIXED, TORCHDIFFEQ_METHODS
from ..models import ScoreModel
from ..schedule import Schedule
from .base import Sampler, SamplingContext, _all_finite, register


def finite_score(model: ScoreModel, schedule: Schedule, label: str) -> Callable[[Tensor, Tensor], Tensor]:
    """``model.score`` that raises FloatingPointError on a non-finite value, naming the time and grid
    step: an adaptive solver fed NaN would only shrink its step until it underflows. It reads the score
    on the host at every call, which only the adaptive solvers can afford (they read their error
    estimate at every step anyway)."""
    def score(x, t):
        s = model.score(x, t)
        if not _all_finite(s):
            i = max(int((schedule.t > float(t)).sum()) - 1, 0)
            raise FloatingPointError(f"{label}: the model returned NaN/inf in grid step {i} at t = {float(t):.6g}")
        return s
    return score


@register
class ODE(Sampler):
    name = "ode"
    conformance_options = [{"solver": s} for s in ("euler", "midpoint", "heun3", "rk4", "dopri5", "bosh3")]

    def __init__(self, solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5):
        if solver not in TORCHDIFFEQ_METHODS:
            raise ValueError(f"solver: unknown torchdiffeq method {solver!r}; known methods: "
                             f"{', '.join(TORCHDIFFEQ_METHODS)}")
        self.solver = solver
        self.rtol = check_finite_number("rtol", rtol, positive=True)
        self.atol = check_finite_number("atol", atol, positive=True)
        self.adaptive = solver in TORCHDIFFEQ_ADAPTIVE
        if self.adaptive:
            self.convergence_order, self.calls_per_step = TORCHDIFFEQ_ADAPTIVE[solver], 1
        else:
            self.convergence_order, self.calls_per_step = TORCHDIFFEQ_FIXED[solver]

    def expected_nfe(self, steps: int) -> int | None:
        return None if self.adaptive else self.calls_per_step * steps

    def describe(self):
        return {**super().describe(), "solver": self.solver}

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        nfe0 = model.nfe
        ctx.stats.update(solver=self.solver, rtol=self.rtol, atol=self.atol)
        if self.adaptive:
            flow = model.sde.probability_flow(finite_score(model, schedule, f"ode ({self.solver})"))
            # interior grid times are interpolated outputs: asked for only when someone looks at them
            times = schedule.t if ctx.observed else schedule.t[[0, -1]]
            xs = flow.solve(x, times, method=self.solver, rtol=self.rtol, atol=self.atol)
            first = schedule.steps - (len(times) - 1)
            for k in range(1, len(xs)):
                ctx.step(first + k - 1, xs[k])
            x = xs[-1]
        else:
            # one odeint call per grid interval: one step each, and no stack of every state in memory.
            # The grid goes to x's device once; it keeps its graph, so grad=True differentiates the grid.
            ends = schedule.t[[0, -1]].detach()
            flow = ProbabilityFlowODE(model.sde, model.score, t_range=(float(ends[0]), float(ends[1])))
            times = schedule.t.to(device=x.device, dtype=torch.float64)
            for i in range(schedule.steps):
                x = odeint_in_t(flow, x, times[i:i + 2], method=self.solver)[-1]
                ctx.step(i, x)
        ctx.stats["nfe"] = model.nfe - nfe0
        return x
