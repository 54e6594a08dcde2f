r"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2), for any SDE of the family through alpha and sigma.

Between grid times ``s < t`` the forward process is Gaussian, ``x_t | x_s ~ N(a x_s, G^2 I)`` with
``a = alpha_t/alpha_s`` and ``G^2 = sigma_t^2 - a^2 sigma_s^2 = sigma_t^2 (1 - e^{-2h})``,
``h = lambda_s - lambda_t > 0``. DDPM samples the posterior ``q(x_s | x_t, x_0)`` with x_0 replaced
by the model's data prediction ``x0_hat = x0_theta(x_t, t)`` (Ho et al. 2020, eqs. 6-7):

.. math::  x_s = \frac{\sigma_s}{\sigma_t} e^{-h} x_t + \alpha_s (1 - e^{-2h})\, \hat x_0
                 + \sigma_s \sqrt{1 - e^{-2h}}\, z, \qquad z \sim N(0, I),

i.e. mean ``(a sigma_s^2 x_t + alpha_s G^2 x0_hat) / sigma_t^2`` and the posterior variance
``tilde beta = G^2 sigma_s^2 / sigma_t^2`` (DDPM's "beta tilde" choice; the other choice, variance
G^2, is the ``'ancestral'`` predictor of ``'pc'``). This is exactly DDIM with eta = 1 (Song et al.
2021, eq. 16) step by step, so the two coincide in distribution. One model call per step; weak
order 1. The grid ends at t_min > 0, where sigma_s > 0, so the last step also draws noise; use
``sample(final_denoise=True)`` for DDPM's noise-free final x0.
"""
from __future__ import annotations

import torch

from .base import SamplerState, SteppedSampler, register


@register
class DDPM(SteppedSampler):
    name = "ddpm"
    stochastic = True
    calls_per_step = 1
    convergence_order = 1  # weak order

    def step(self, model, schedule, state, output, ctx):
        i, x = state.i, state.x
        sigma_t = schedule.sigma[i]
        alpha_s, sigma_s, h = schedule.alpha[i + 1], schedule.sigma[i + 1], schedule.h[i]
        x0_hat = model.to_x0(output, x, schedule.t[i])
        one_minus = -torch.expm1(-2 * h)  # 1 - e^{-2h} without cancellation for small h
        mean = (sigma_s / sigma_t) * torch.exp(-h) * x + alpha_s * one_minus * x0_hat
        x_next = mean + sigma_s * torch.sqrt(one_minus) * ctx.normal(i, x)
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[i + 1])
