r"""DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): DPM-Solver's exponential integrator with the data prediction.

.. math::  x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \sum_{k=0}^{p-1} h^{k+1}\varphi_{k+1}(-h)\, \hat x_0^{(k)},
           \qquad h = \lam_s - \lam_t,

i.e. ``x_s = sigma_s/sigma_t x_t + alpha_s [(1 - e^{-h}) x0 + (h - 1 + e^{-h}) x0'
+ (h^2/2 - h + 1 - e^{-h}) x0'' ]``, with the derivatives from past steps (multistep, 2M/3M, one
call per step) or from intermediate points (singlestep, ``order`` calls per step). Order 1 is
DDIM(eta=0). The derivation, the third-order multistep correction (the published 3M halves the
``x0''`` term and is second order; ours is third) and the options are in :mod:`.dpm_solver`.

**Dynamic thresholding** (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models with
Deep Language Understanding", sec. 2.3), applied to every data prediction: per sample,
``s = clamp(quantile(|x0|, percentile), 1, max_value)`` and ``x0 <- clamp(x0, -s, s) / s``, so
``x0`` lands in ``[-1, 1]``. ``max_value = inf`` is the paper's rule; diffusers' default
``sample_max_value = 1`` makes it a static clip to ``[-1, 1]``. It is meant for data scaled to
``[-1, 1]`` (images); it changes the ODE being solved, so the order claims hold without it.
"""
from __future__ import annotations

import math

from ._thresholding import check_threshold_options, dynamic_threshold
from .base import register
from .dpm_solver import ExponentialIntegrator

__all__ = ["DPMSolverPP", "dynamic_threshold"]


@register
class DPMSolverPP(ExponentialIntegrator):
    r"""DPM-Solver++ with the data prediction (Lu et al. 2022b): ``F = x0_theta``, frame
    ``(sigma_s/sigma_t, alpha_s, -1)``.

    Options: ``order`` 1-3, ``variant`` ``'multistep'`` (2M/3M) or ``'singlestep'`` (2S/3S),
    ``lower_order_final`` (caps the global order at 2; see :mod:`.dpm_solver`), ``solver_type``,
    and ``thresholding`` with ``percentile`` in (0, 1] and ``max_value`` >= 1 (may be inf).
    """

    name = "dpm_solver++"

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool = True,
                 solver_type: str = "dpmsolver", thresholding: bool = False, percentile: float = 0.995,
                 max_value: float = math.inf):
        super().__init__(order, variant, lower_order_final, solver_type)
        if not isinstance(thresholding, bool):
            raise ValueError(f"thresholding: expected True or False, got {thresholding!r}")
        percentile, max_value = check_threshold_options(percentile, max_value)
        self.thresholding = thresholding
        self.percentile = percentile
        self.max_value = max_value

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        if not self.thresholding:
            return base + ")"
        return base + f", thresholding=True, percentile={self.percentile}, max_value={self.max_value})"

    def prediction(self, model, x, t):
        x0 = model.to_x0(model.predict(x, t), x, t)
        return dynamic_threshold(x0, self.percentile, self.max_value) if self.thresholding else x0

    def frame(self, p, q):
        return q.sigma / p.sigma, q.alpha, -1
