r"""Heun's second-order sampler of Karras et al. 2022 (EDM, Alg. 1; Alg. 2 with churn), on any SDE.

In the EDM variables ``y = x / alpha`` and noise level ``s = sigma / alpha = e^{-lambda}`` the
probability-flow ODE of every SDE of the family is

.. math::  \frac{dy}{ds} = \frac{y - D(y, s)}{s} = \hat\varepsilon(\alpha y, t(s)),

with D the denoiser (x0 prediction) and eps the noise prediction (Karras et al. 2022, eq. 4 with
their s(t) = alpha, sigma(t) = s). A step from ``s_i`` to ``s_{i+1}``:

.. math::  d_i = \hat\varepsilon(x_i, t_i), \quad \tilde y = y_i + (s_{i+1} - s_i) d_i, \quad
           y_{i+1} = y_i + (s_{i+1} - s_i) \tfrac12 \big(d_i + \hat\varepsilon(\alpha_{i+1} \tilde y, t_{i+1})\big).

Global order 2. As in EDM the last step is Euler (``euler_last=True``, EDM's s_N = 0 makes the
correction impossible there); an Euler last step has a local error O(h^2), of the size of the
global error, so the order stays 2. Model calls: 2 per step, 1 on the last when ``euler_last``,
hence ``expected_nfe(N) = 2N - 1`` (``2N`` with ``euler_last=False``).

Churn (Alg. 2, stochastic): with ``S_churn > 0``, at steps whose ``s_i`` lies in ``[S_tmin, S_tmax]``
the noise level is first raised to ``s_hat = s_i (1 + gamma)``, ``gamma = min(S_churn/N, sqrt2 - 1)``
(capped at the SDE's largest level s(T)), by adding ``sqrt(s_hat^2 - s_i^2) S_noise z`` to y; the step
then starts from ``s_hat``. The standard normal z is the grid step's Brownian increment / sqrt(|dt|).

As a :class:`~.base.SteppedSampler` a step has two stages: stage 0 evaluates ``d_i`` at the (churned)
``(alpha_hat y_hat, t_hat)``, stage 1 ``d_{i+1}'`` at the Euler point ``(alpha_{i+1} y~, t_{i+1})``; the
churn of step ``i + 1`` is drawn when step ``i`` finishes (of step 0, by :meth:`Heun.begin`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._tensor import check_finite_number
from .base import SamplerState, SteppedSampler, register


@dataclass(frozen=True)
class HeunState(SamplerState):
    """Adds the step's start in EDM variables (``y_hat``, ``s_hat``) and the stage-0 slope ``d``."""

    y_hat: Tensor | None = None
    s_hat: Tensor | None = None
    d: Tensor | None = None


@register
class Heun(SteppedSampler):
    name = "heun"
    calls_per_step = 2
    convergence_order = 2
    conformance_options = [{}, {"euler_last": False}, {"S_churn": 10.0}]

    def __init__(self, euler_last: bool = True, S_churn: float = 0.0, S_tmin: float = 0.0,
                 S_tmax: float = math.inf, S_noise: float = 1.0):
        if not isinstance(euler_last, bool):
            raise TypeError(f"euler_last: expected True or False, got {euler_last!r}")
        self.euler_last = euler_last
        self.S_churn = check_finite_number("S_churn", S_churn)
        if self.S_churn < 0:
            raise ValueError(f"S_churn: expected a number >= 0 (0: deterministic), got {S_churn!r}")
        self.S_noise = check_finite_number("S_noise", S_noise, positive=True)
        self.S_tmin = check_finite_number("S_tmin", S_tmin)
        try:
            self.S_tmax = float(S_tmax)
        except (TypeError, ValueError):
            raise ValueError(f"S_tmax: expected a real number or inf, got {S_tmax!r}") from None
        if not (0 <= self.S_tmin < self.S_tmax) or math.isnan(self.S_tmax):
            raise ValueError(f"S_tmin, S_tmax: expected 0 <= S_tmin < S_tmax (noise levels s = sigma/alpha), "
                             f"got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")

    @property
    def stochastic(self) -> bool:
        return self.S_churn > 0

    def expected_nfe(self, steps: int) -> int:
        return 2 * steps - (1 if self.euler_last else 0)

    def init(self, schedule, x, start=0):
        """The state at ``t[start]`` without the churn of that step (:meth:`begin` draws it)."""
        return self._start(schedule, start, x, None)

    def begin(self, schedule, x, ctx, start=0):
        return self._start(schedule, start, x, ctx)

    def call_times(self, schedule, start=0):
        """The (churned) ``t_hat_i`` of every step, and ``t_{i+1}`` but after an Euler last step."""
        times = []
        for i in range(start, schedule.steps):
            times.append(self._churn(schedule, i)[2])
            if i < schedule.steps - 1 or not self.euler_last:
                times.append(schedule.t[i + 1])
        return torch.stack(times)

    def _churn(self, schedule, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(s_i, s_hat, t_hat)`` of step ``i``: the noise level raised (Alg. 2, lines 4-6) when churning."""
        sde, s_i = schedule.sde, schedule.sigma[i] / schedule.alpha[i]
        gamma = min(self.S_churn / schedule.steps, math.sqrt(2) - 1) if self.S_tmin <= s_i <= self.S_tmax else 0.0
        if gamma > 0:
            s_up = torch.minimum(s_i * (1 + gamma), torch.exp(-sde.lam(torch.tensor(float(sde.T), dtype=torch.float64))))
            if s_up > s_i:
                return s_i, s_up, torch.clamp(sde.t_of_lam(-torch.log(s_up)), max=float(sde.T))
        return s_i, s_i, schedule.t[i]

    def _start(self, schedule, i: int, x: Tensor, ctx) -> HeunState:
        """Step ``i`` from ``x`` at ``t_i``, churned when ``ctx`` is given (it draws the noise)."""
        y = x / schedule.alpha[i]
        s_i, s_hat, t_hat = self._churn(schedule, i)
        if ctx is None or not s_hat > s_i:
            return HeunState(x=x, i=i, x_eval=x, t_eval=schedule.t[i], y_hat=y, s_hat=s_i)
        y = y + torch.sqrt(s_hat**2 - s_i**2) * self.S_noise * ctx.normal(i, y)
        return HeunState(x=x, i=i, x_eval=schedule.sde.alpha(t_hat) * y, t_eval=t_hat, y_hat=y, s_hat=s_hat)

    def step(self, model, schedule, state, output, ctx):
        i = state.i
        ds = schedule.sigma[i + 1] / schedule.alpha[i + 1] - state.s_hat
        if state.stage == 0:
            d = model.to_eps(output, state.x_eval, state.t_eval)
            y_euler = state.y_hat + ds * d
            if i == schedule.steps - 1 and self.euler_last:
                return self._finish(schedule, i, y_euler, ctx)
            return HeunState(x=state.x, i=i, x_eval=schedule.alpha[i + 1] * y_euler, t_eval=schedule.t[i + 1],
                             stage=1, y_hat=state.y_hat, s_hat=state.s_hat, d=d)
        d_next = model.to_eps(output, state.x_eval, state.t_eval)
        return self._finish(schedule, i, state.y_hat + ds * (state.d + d_next) / 2, ctx)

    def _finish(self, schedule, i: int, y_next: Tensor, ctx) -> HeunState:
        x_next = schedule.alpha[i + 1] * y_next
        if i + 1 < schedule.steps:
            return self._start(schedule, i + 1, x_next, ctx)
        return HeunState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[i + 1])
