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
"""
from __future__ import annotations

import math

import torch

from .._tensor import check_finite_number
from ..schedule import Schedule
from .base import Sampler, register


@register
class Heun(Sampler):
    name = "heun"
    calls_per_step = 2
    convergence_order = 2
    conformance_options = [{}, {"euler_last": False}, {"S_churn": 10.0}]

    def __init__(self, euler_last: bool = True, S_churn: float = 0.0, S_tmin: float = 0.0,
                 S_tmax: float = math.inf, S_noise: float = 1.0):
        if not isinstance(euler_last, bool):
            raise ValueError(f"euler_last: expected True or False, got {euler_last!r}")
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
        self.stochastic = self.S_churn > 0

    def expected_nfe(self, steps: int) -> int:
        return 2 * steps - (1 if self.euler_last else 0)

    def run(self, model, x, times, ctx):
        times = times.t if isinstance(times, Schedule) else times  # sample() hands every sampler its Schedule
        sde = model.sde
        n = len(times) - 1
        alpha, sigma = sde.alpha_sigma(times)
        s = (sigma / alpha).tolist()
        t_grid, alpha = times.tolist(), alpha.tolist()
        s_top = float(torch.exp(-sde.lam(torch.tensor(float(sde.T), dtype=torch.float64))))
        gamma = min(self.S_churn / n, math.sqrt(2) - 1)
        y = x / alpha[0]
        for i in range(n):
            t_i, s_i, a_i = t_grid[i], s[i], alpha[i]
            if gamma > 0 and self.S_tmin <= s_i <= self.S_tmax:
                s_hat = min(s_i * (1 + gamma), s_top)
                if s_hat > s_i:
                    y = torch.add(y, ctx.normal(i, y), alpha=math.sqrt(s_hat**2 - s_i**2) * self.S_noise)
                    t_i = min(float(sde.t_of_lam(torch.tensor(-math.log(s_hat), dtype=torch.float64))), float(sde.T))
                    s_i, a_i = s_hat, float(sde.alpha(torch.tensor(t_i, dtype=torch.float64)))
                    x = None
            if x is None:
                x = a_i * y
            t_next, s_next, a_next = t_grid[i + 1], s[i + 1], alpha[i + 1]
            ds = s_next - s_i
            d = model.eps(x, t_i)
            y_next = torch.add(y, d, alpha=ds)
            if i < n - 1 or not self.euler_last:
                d_next = model.eps(a_next * y_next, t_next)
                y_next = torch.add(y, d, alpha=0.5 * ds).add_(d_next, alpha=0.5 * ds)
            y = y_next
            x = a_next * y  # the state, and the next step's model input unless churn moves y
            ctx.step(i, x)
        return x
