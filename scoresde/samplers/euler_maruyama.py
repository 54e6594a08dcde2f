r"""Euler-Maruyama on the reverse-time SDE (Anderson 1982; Song et al. 2021, eq. 6).

The reverse SDE of ``dx = f(t) x dt + g(t) dw`` is

.. math::  dx = [f(t)\, x - g(t)^2 s(x, t)]\, dt + g(t)\, d\bar w,

integrated backwards from T. One step from ``t_i`` to ``t_{i+1} < t_i`` with ``dt = t_{i+1} - t_i < 0``:

.. math::  x_{i+1} = x_i + [f(t_i)\, x_i - g(t_i)^2 s(x_i, t_i)]\, dt + g(t_i)\, \Delta \bar w_i,
           \qquad \Delta \bar w_i \sim N(0, |dt|\, I).

``Delta w`` is the Brownian increment of the sampling context, so runs with different grids on one
shared torchsde path (``sample(..., brownian=...)``) see the same noise realisation. Weak order 1;
strong order 1 here (the diffusion g(t) does not depend on x: additive noise; Kloeden & Platen 1992,
sec. 10.2), 0.5 for general noise. One model call per step; noise is added on every step, including
the last (use ``sample(final_denoise=True)`` for a noise-free Tweedie step at the end).
"""
from __future__ import annotations

import torch

from .base import SamplerState, SteppedSampler, register


@register
class EulerMaruyama(SteppedSampler):
    name = "euler_maruyama"
    stochastic = True
    calls_per_step = 1
    convergence_order = 1  # weak order

    def step(self, model, schedule, state, output, ctx):
        i, x, sde = state.i, state.x, schedule.sde
        t = schedule.t[i]
        dt = schedule.t[i + 1] - t
        drift = sde.reverse_drift(x, t, model.to_score(output, x, t))
        # Delta w = sqrt(|dt|) z with |dt| a tensor of the grid, so that a grid tensor gets its gradient
        x_next = x + drift * dt + sde.g(t) * torch.sqrt(-dt) * ctx.normal(i, x)
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[i + 1])
