r"""DDIM (Song, Meng & Ermon 2021, eq. 12), written for any SDE of the family through alpha and sigma.

With the data prediction ``x0 = x0_theta(x_t, t)`` and ``eps = (x_t - alpha_t x0) / sigma_t``, a step
from t to s < t is

.. math::  x_s = \alpha_s x_0 + \sqrt{\sigma_s^2 - c^2}\, \varepsilon + c\, z,
           \qquad c = \eta\, \sigma_s \sqrt{1 - e^{-2h}}, \quad h = \lambda_s - \lambda_t,

where ``c^2`` is eta^2 times the variance of the DDPM posterior q(x_s | x_t, x_0). eta = 0 is the
deterministic DDIM, the exponential-Euler (first-order) step of the probability-flow ODE in lambda;
eta = 1 has exactly DDPM's ancestral transition. One model call per step; order 1 (eta = 0).

``clip_sample=True`` clamps the data prediction to ``[-clip_range, clip_range]`` before the update
while ``eps`` stays the model's (diffusers' ``DDIMScheduler(clip_sample=True)`` with its default
``use_clipped_model_output=False``), for pixel data known to lie in that range.
"""
from __future__ import annotations

import torch

from .._tensor import check_finite_number
from .base import SamplerState, SteppedSampler, register


@register
class DDIM(SteppedSampler):
    name = "ddim"
    calls_per_step = 1
    convergence_order = 1
    conformance_options = [{}, {"eta": 1.0}]

    def __init__(self, eta: float = 0.0, clip_sample: bool = False, clip_range: float = 1.0):
        eta = check_finite_number("eta", eta)
        if eta < 0:
            raise ValueError(f"eta: expected a number >= 0 (0: deterministic DDIM, 1: DDPM), got {eta}")
        if not isinstance(clip_sample, bool):
            raise TypeError(f"clip_sample: expected True or False, got {clip_sample!r}")
        self.eta = eta
        self.clip_sample = clip_sample
        self.clip_range = check_finite_number("clip_range", clip_range, positive=True)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, model, schedule, state, output, ctx):
        i, x = state.i, state.x
        alpha_t, sigma_t = schedule.alpha[i], schedule.sigma[i]
        alpha_s, sigma_s = schedule.alpha[i + 1], schedule.sigma[i + 1]
        x0 = model.to_x0(output, x, schedule.t[i])
        eps = (x - alpha_t * x0) / sigma_t
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        if self.eta == 0:
            x_next = alpha_s * x0 + sigma_s * eps
        else:
            c = self.eta * sigma_s * torch.sqrt(-torch.expm1(-2 * schedule.h[i]))
            if c > sigma_s:
                raise ValueError(f"eta: {self.eta} is too large; the step's noise exceeds sigma_s (eta <= 1 is safe)")
            x_next = alpha_s * x0 + torch.sqrt(sigma_s**2 - c**2) * eps + c * ctx.normal(i, x)
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[i + 1])
