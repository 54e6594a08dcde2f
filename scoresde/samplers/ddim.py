r"""DDIM (Song, Meng & Ermon 2021), written for any SDE of the family through alpha and sigma.

With the data prediction ``x0 = x0_theta(x_t, t)`` and ``eps = (x_t - alpha_t x0) / sigma_t``, a step
from t to s < t is

.. math::  x_s = \alpha_s x_0 + \sqrt{\sigma_s^2 - c^2}\, \varepsilon + c\, z,
           \qquad c = \eta\, \sigma_s \sqrt{1 - e^{-2h}}, \quad h = \lambda_s - \lambda_t,

where ``c^2`` is eta^2 times the variance of the DDPM posterior q(x_s | x_t, x_0). eta = 0 is the
deterministic DDIM, the exponential-Euler (first-order) step of the probability-flow ODE in lambda;
eta = 1 has exactly DDPM's ancestral transition. One model call per step; order 1 (eta = 0).
"""
from __future__ import annotations

import math

import torch

from .._tensor import check_finite_number
from .base import Sampler, grid_points, register


@register
class DDIM(Sampler):
    name = "ddim"
    calls_per_step = 1

    def __init__(self, eta: float = 0.0):
        eta = check_finite_number("eta", eta)
        if eta < 0:
            raise ValueError(f"eta: expected a number >= 0 (0: deterministic DDIM, 1: DDPM), got {eta}")
        self.eta = eta
        self.convergence_order = 1
        self.stochastic = eta > 0

    def run(self, model, x, times, ctx):
        pts = grid_points(model.sde, times)
        for i, (p, q) in enumerate(zip(pts[:-1], pts[1:], strict=True)):
            x0 = model.x0(x, p.t)
            h = q.lam - p.lam
            if self.eta == 0:
                # sigma_s/sigma_t x_t - alpha_s expm1(-h) x0: the exact exponential-integrator form
                x = x.mul(q.sigma / p.sigma).add_(x0, alpha=-q.alpha * math.expm1(-h))
            else:
                c = self.eta * q.sigma * math.sqrt(-math.expm1(-2 * h))
                if c > q.sigma:
                    raise ValueError(f"eta: {self.eta} is too large; the step's noise exceeds sigma_s (eta <= 1 is safe)")
                eps = torch.add(x, x0, alpha=-p.alpha).div_(p.sigma)
                x = eps.mul_(math.sqrt(q.sigma**2 - c**2)).add_(x0, alpha=q.alpha).add_(ctx.normal(i, x), alpha=c)
            ctx.step(i, x)
        return x
