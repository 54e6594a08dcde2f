r"""The probability-flow ODE (Song et al. 2021, eq. 13) through ``torchdiffeq.odeint``.

.. math::  \frac{dx}{dt} = f(t)\, x - \tfrac12 g(t)^2 s(x, t), \qquad \text{from } t = T \text{ down to } t_{min}.

Option ``solver``: any explicit torchdiffeq Runge-Kutta method (named ``solver`` because ``sample``'s
``method`` names the sampler). Fixed-step methods take exactly one step per grid
interval (order and model calls per step from the Butcher tableau: euler 1/1, midpoint 2/2, heun2 2/2,
heun3 3/3, rk4 4/4 (torchdiffeq's 3/8-rule variant)). Adaptive methods (dopri5, dopri8, bosh3,
fehlberg2, adaptive_heun) choose their own steps under ``rtol``/``atol``, report the state at the grid
times (so ``steps`` may be None: then only the two ends), and land exactly on the last time (they never
evaluate the drift beyond it); their cost is known only afterwards (``expected_nfe`` is None), and
torchdiffeq does not expose accepted/rejected step counts, so the stats record the NFE only.
The class is ``adaptive`` so that ``steps`` may be None; give ``steps`` with a fixed-step solver
(with None, :func:`sample` builds a one-step grid).
"""
from __future__ import annotations

import torch

from .._tensor import check_finite_number
from .base import Sampler, register

# method -> (order, model calls per step)
FIXED_METHODS = {"euler": (1, 1), "midpoint": (2, 2), "heun2": (2, 2), "heun3": (3, 3), "rk4": (4, 4)}
# method -> order of the propagated solution
ADAPTIVE_METHODS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def _known() -> str:
    return ", ".join(list(FIXED_METHODS) + list(ADAPTIVE_METHODS))


def _finite_score(score, times):
    """The score, checked for non-finite values: an adaptive solver fed NaN only shrinks its step
    until it underflows, so the failure is reported here, at the time it happens."""
    def checked(x, t):
        s = score(x, t)
        if not torch.isfinite(s).all():
            tf = float(t.flatten()[0]) if isinstance(t, torch.Tensor) else float(t)
            i = max(int((times > tf).sum()) - 1, 0)
            raise FloatingPointError(f"ode: non-finite score in grid step {i} at t = {tf:.6g} (adaptive solve); "
                                     "the model returned NaN/inf")
        return s
    return checked


@register
class ODE(Sampler):
    name = "ode"
    conformance_options = [{"solver": s} for s in ("euler", "midpoint", "heun3", "rk4", "dopri5", "bosh3")]

    def __init__(self, solver: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5):
        if solver not in FIXED_METHODS and solver not in ADAPTIVE_METHODS:
            raise ValueError(f"solver: unknown torchdiffeq method {solver!r}; known methods: {_known()}")
        self.method = solver
        self.rtol = check_finite_number("rtol", rtol, positive=True)
        self.atol = check_finite_number("atol", atol, positive=True)
        self.adaptive = self.is_adaptive = solver in ADAPTIVE_METHODS
        if self.is_adaptive:
            self.order, self.calls_per_step = ADAPTIVE_METHODS[solver], 1
        else:
            self.order, self.calls_per_step = FIXED_METHODS[solver]

    def expected_nfe(self, steps: int) -> int | None:
        return None if self.is_adaptive else self.calls_per_step * steps

    def describe(self):
        return {**super().describe(), "adaptive": self.is_adaptive, "method": self.method}

    def run(self, model, x, times, ctx):
        nfe0 = model.nfe
        ctx.stats.update(method=self.method, rtol=self.rtol, atol=self.atol)
        if self.is_adaptive:
            flow = model.sde.probability_flow(_finite_score(model.score, times))
            xs = flow.solve(x, times, method=self.method, rtol=self.rtol, atol=self.atol)
            for i in range(len(times) - 1):
                ctx.step(i, xs[i + 1])
            x = xs[-1]
        else:
            flow = model.sde.probability_flow(model.score)
            # one odeint call per interval: one step each (the grid is the output times) and no
            # (len(times), *x.shape) stack of states held in memory
            for i in range(len(times) - 1):
                x = flow.solve(x, times[i:i + 2], method=self.method)[-1]
                ctx.step(i, x)
        ctx.stats["nfe"] = model.nfe - nfe0
        return x
