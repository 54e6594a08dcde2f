r"""The probability-flow ODE (Song et al. 2021, eq. 13) through ``torchdiffeq.odeint``.

.. math::  \frac{dx}{dt} = f(t)\, x - \tfrac12 g(t)^2 s(x, t), \qquad \text{from } t = T \text{ down to } t_{min}.

Option ``solver``: any explicit torchdiffeq Runge-Kutta method (named ``solver`` because ``sample``'s
``method`` names the sampler). Fixed-step methods take exactly one step per grid
interval (order and model calls per step from the Butcher tableau: euler 1/1, midpoint 2/2, heun2 2/2,
heun3 3/3, rk4 4/4 (torchdiffeq's 3/8-rule variant)). Adaptive methods (dopri5, dopri8, bosh3,
fehlberg2, adaptive_heun) choose their own steps under ``rtol``/``atol``, report the state at the grid
times (so ``steps`` may be None: then only the two ends; the interior times, interpolated outputs that
do not change the steps, are asked for only when a trajectory or progress bar looks at them), and land
exactly on the last time (they never evaluate the drift beyond it); their cost is known only afterwards (``expected_nfe`` is None), and
torchdiffeq does not expose accepted/rejected step counts, so the stats record the NFE only.
The class is ``adaptive`` so that ``steps`` may be None; give ``steps`` with a fixed-step solver
(with None, :func:`sample` builds a one-step grid).
"""
from __future__ import annotations

import torch

from .._tensor import check_finite_number
from ..sde import ProbabilityFlowODE
from .base import Sampler, _all_finite, register

# method -> (order, model calls per step)
FIXED_METHODS = {"euler": (1, 1), "midpoint": (2, 2), "heun2": (2, 2), "heun3": (3, 3), "rk4": (4, 4)}
# method -> order of the propagated solution
ADAPTIVE_METHODS = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}


def _known() -> str:
    return ", ".join(list(FIXED_METHODS) + list(ADAPTIVE_METHODS))


def _stage_times(times: torch.Tensor, method: str) -> torch.Tensor:
    """The times at which torchdiffeq's fixed-step ``method`` evaluates the drift inside each interval,
    computed as it computes them (in the grid's dtype; odeint integrates a decreasing grid as ``-t``), so
    that their coefficients can be looked up instead of recomputed per call (~25 us each on a CPU). Only
    a cache key: a time that comes out differently is computed as usual."""
    fractions = {"midpoint": (0.5,), "rk4": (1.0 / 3.0, 2.0 / 3.0), "heun3": (1.0 / 3.0, 2.0 / 3.0)}.get(method, ())
    if not fractions:
        return times[:0]
    flip = bool(times[0] > times[-1])
    s = -times if flip else times
    s0, dt = s[:-1], s[1:] - s[:-1]
    # the same floating-point operations, in the same order, as torchdiffeq's step functions
    stages = [s0 + 0.5 * dt] if method == "midpoint" else [s0 + dt * c for c in fractions]
    out = torch.cat(stages)
    return -out if flip else out


# fixed-step solves: intervals per odeint call (odeint's own set-up costs about a model call on a CPU;
# the states of one call are held together)
_CHUNK = 16


class _Flow(ProbabilityFlowODE):
    """The probability-flow drift ``f x - g^2 s / 2`` with f and g^2 as Python floats: looked up at the
    grid times as odeint passes them (in x's dtype), computed otherwise, and one fused multiply-add.

    With ``check`` (the message's prefix, e.g. the sampler's name), a non-finite drift raises: an
    adaptive solver fed NaN only shrinks its step until it underflows, so the failure is reported
    here, at the time it happens. ``t`` may be a number or a 0-d tensor.
    """

    def __init__(self, model, times: torch.Tensor, like: torch.Tensor, check: str | None = None,
                 stages: torch.Tensor | None = None):
        super().__init__(model.sde, model.score)
        self.times, self.check = times, check
        t = times.to(like.dtype)
        if stages is not None:
            t = torch.cat([t, stages.to(like.dtype)])
        t = t.to(torch.float64)
        self._table = dict(zip(t.tolist(), zip(self.sde.f(t).tolist(), self.sde.g2(t).tolist(), strict=True),
                               strict=True))

    def forward(self, t, x):
        tf = float(t)
        coeffs = self._table.get(tf)
        if coeffs is None:
            t64 = torch.tensor(tf, dtype=torch.float64)
            coeffs = float(self.sde.f(t64)), float(self.sde.g2(t64))
        f, g2 = coeffs
        d = x.mul(f).add_(self.score_fn(x, t), alpha=-0.5 * g2)
        if self.check and not _all_finite(d):
            i = max(int((self.times > tf).sum()) - 1, 0)
            raise FloatingPointError(f"{self.check}: non-finite drift in grid step {i} at t = {tf:.6g}; "
                                     "the model returned NaN/inf")
        return d


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
            self.convergence_order, self.calls_per_step = ADAPTIVE_METHODS[solver], 1
        else:
            self.convergence_order, self.calls_per_step = FIXED_METHODS[solver]

    def expected_nfe(self, steps: int) -> int | None:
        return None if self.is_adaptive else self.calls_per_step * steps

    def describe(self):
        return {**super().describe(), "adaptive": self.is_adaptive, "method": self.method}

    def run(self, model, x, times, ctx):
        nfe0 = model.nfe
        ctx.stats.update(method=self.method, rtol=self.rtol, atol=self.atol)
        # the grid as odeint receives it (ProbabilityFlowODE.solve: float64 for float64 states, else float32)
        grid_t = times.to(x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
        stages = None if self.is_adaptive else _stage_times(grid_t, self.method)
        flow = _Flow(model, times, x, check=f"ode ({self.method}, adaptive solve)" if self.is_adaptive else None,
                     stages=stages)
        # alpha, sigma for the model's conversions at the grid (and stage) times as the drift receives them
        with model.grid(times.to(x.dtype) if stages is None else torch.cat([times.to(x.dtype), stages.cpu()])):
            if self.is_adaptive:
                # the interior grid times are only output times (interpolated, and ~25 us each in
                # torchdiffeq): asked for when someone looks at them; the steps do not depend on them
                out = times if ctx.observed else times[[0, -1]]
                xs = flow.solve(x, out, method=self.method, rtol=self.rtol, atol=self.atol)
                first = len(times) - len(out)
                for k in range(1, len(xs)):
                    ctx.step(first + k - 1, xs[k])
                x = xs[-1]
            else:
                # one step per interval (the grid is the output times), _CHUNK intervals per odeint
                # call: no (len(times), *x.shape) stack of states held in memory
                for i0 in range(0, len(times) - 1, _CHUNK):
                    xs = flow.solve(x, times[i0:i0 + _CHUNK + 1], method=self.method)
                    for k in range(1, len(xs)):
                        ctx.step(i0 + k - 1, xs[k])
                    x = xs[-1]
        ctx.stats["nfe"] = model.nfe - nfe0
        return x
