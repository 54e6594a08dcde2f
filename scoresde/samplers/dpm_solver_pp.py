r"""DPM-Solver++ (Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"): DPM-Solver's exponential integrator with the data prediction ``F = x0_theta``.

.. math::  x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i
           + \alpha_{i+1} \sum_{k<p} h_i^{k+1}\varphi_{k+1}(-h_i)\, \hat x_0^{(k)}(\lam_i),
           \qquad h_i = \lam_{i+1} - \lam_i,

i.e. ``sigma_{i+1}/sigma_i x_i + alpha_{i+1} [(1 - e^{-h}) x0 + (h - 1 + e^{-h}) x0'
+ (h^2/2 - h + 1 - e^{-h}) x0'']``. 2M (Algorithm 2): ``r_i = h_{i-1}/h_i``,
``D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}``, ``x_{i+1} = sigma_{i+1}/sigma_i x_i
+ alpha_{i+1} (1 - e^{-h_i}) D_i``; 2S (Algorithm 1) the same with ``x0`` at the midpoint in log-SNR.
The derivatives, 3M (third order here; the published one is second order), 3S, the stages and the
options are those of :mod:`.dpm_solver`. Order 1 is DDIM(eta=0).

**Dynamic thresholding** (Saharia et al. 2022, sec. 2.3) of every data prediction, see
:mod:`._thresholding`. It is meant for data scaled to ``[-1, 1]`` (images) and changes the ODE
being solved, so the order claims hold without it.
"""
from __future__ import annotations

import math

from torch import Tensor

from ._phi import phi
from ._thresholding import check_threshold_options, dynamic_threshold
from .base import register
from .dpm_solver import DPMSolverSteps, Point

__all__ = ["DPMSolverPP", "dynamic_threshold"]


@register
class DPMSolverPP(DPMSolverSteps):
    r"""DPM-Solver++ with the data prediction (Lu et al. 2022b).

    Options: ``order`` 1-3, ``variant`` ``'multistep'`` (2M/3M) or ``'singlestep'`` (2S/3S),
    ``lower_order_final`` (None: below 15 steps; True/False force it), ``solver_type``, and
    ``thresholding`` with ``percentile`` in (0, 1] and ``max_value`` > 0 (may be inf).
    """

    name = "dpm_solver++"

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool | None = None,
                 solver_type: str = "dpmsolver", thresholding: bool = False, percentile: float = 0.995,
                 max_value: float = math.inf):
        super().__init__(order, variant, lower_order_final, solver_type)
        if not isinstance(thresholding, bool):
            raise TypeError(f"thresholding: expected True or False, got {thresholding!r}")
        self.thresholding = thresholding
        self.percentile, self.max_value = check_threshold_options(percentile, max_value)

    def prediction(self, model, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        x0 = model.to_x0(output, x, t)
        return dynamic_threshold(x0, self.percentile, self.max_value) if self.thresholding else x0

    def exponential_step(self, x: Tensor, p: Point, q: Point, derivatives: list[Tensor]) -> Tensor:
        """``x_q = sigma_q/sigma_p x_p + alpha_q sum_k h^{k+1} phi_{k+1}(-h) x0^(k)``, ``h = lam_q - lam_p``."""
        h = q.lam - p.lam
        return q.sigma / p.sigma * x + q.alpha * sum(h ** (k + 1) * phi(k + 1, -h) * d for k, d in enumerate(derivatives))
