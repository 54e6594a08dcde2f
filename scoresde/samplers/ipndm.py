r"""iPNDM, the improved pseudo numerical method (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
Exponential Integrator", sec. 4 and app. "iPNDM"; as run by zju-pi/diff-sampler, Zhou et al. 2024): an
Adams-Bashforth method for the probability-flow ODE in EDM's variables ``y = x / alpha``,
``rho = sigma / alpha = e^{-lam}``, where the ODE is exactly ``dy/drho = eps_theta``:

.. math::  y_{i+1} = y_i + (\rho_{i+1} - \rho_i) \sum_{j<k} b_{kj}\, \epsilon_{i-j},\qquad
           x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1} (\rho_{i+1} - \rho_i) \sum_j b_{kj}\, \epsilon_{i-j}.

One model call per step; ``k = min(order, i + 1)`` (warm-up from Euler = DDIM). Two sets of weights:

* ``weights='published'``: the classical constant-step Adams-Bashforth weights of PNDM/iPNDM,
  ``b_1 = (1)``, ``b_2 = (3, -1)/2``, ``b_3 = (23, -16, 5)/12``, ``b_4 = (55, -59, 37, -9)/24``, used on
  any grid. They are the exact weights only where the steps in ``rho`` are equal; on a grid whose
  ``rho``-steps vary smoothly their first-moment condition fails by ``O(h)`` (step ratios ``1 + O(h)``),
  a local error ``O(h^3)``: global order 2 for every ``order >= 2`` (:data:`PUBLISHED_ORDER`). Measured on
  the registry's order problem (log-SNR grid, where the ``rho``-steps shrink geometrically): order 3 fits
  2.44 over 16-48 steps, 1.93 over 96-256 and 1.98 over 256-768; order 4 fits 2.16, 2.01, 2.00.
* ``weights='variable'`` (default): the variable-step Adams-Bashforth weights, the Lagrange polynomial in
  ``rho`` through the last ``k`` points integrated exactly over the step (diff-sampler's ``ipndm_v``; equal
  to DEIS rhoAB, :mod:`.deis` with ``variable='rho'``); order ``k`` on any grid, and equal to the published
  weights on grids uniform in ``rho`` (the tests check both).
"""
from __future__ import annotations

import torch

from .._tensor import check_bool
from ._adams import ExponentialAdams, adams_weights
from .base import register
from .deis import check_order

__all__ = ["IPNDM", "AB_WEIGHTS", "WEIGHTS", "PUBLISHED_ORDER"]

WEIGHTS = ("variable", "published")
AB_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
# The global order of the published weights on grids that are not uniform in rho (module docstring).
PUBLISHED_ORDER = {1: 1, 2: 2, 3: 2, 4: 2}


@register
class IPNDM(ExponentialAdams):
    """iPNDM of order 1-4 (default 4, diff-sampler's) with ``weights`` 'variable' (default) or 'published'."""

    name = "ipndm"
    # published order 3 is still pre-asymptotic over the order test's 16-48 steps (2.44): tests/test_training_free.py
    conformance_options = [{}, {"order": 2}, {"order": 3}, {"weights": "published", "order": 2}, {"weights": "published"}]

    def __init__(self, order: int = 4, weights: str = "variable", afs: bool = False):
        self.order = check_order(order, max(AB_WEIGHTS))
        if weights not in WEIGHTS:
            raise ValueError(f"weights: expected one of {', '.join(map(repr, WEIGHTS))}, got {weights!r}")
        self.weights = weights
        self.afs = check_bool("afs", afs)  # diff-sampler's analytical first step: one call fewer (see ._adams)
        order = self.order if weights == "variable" else PUBLISHED_ORDER[self.order]
        self.convergence_order = None if afs else order

    def weight_table(self, schedule, start=0):
        if self.weights == "variable":
            return adams_weights(schedule.lam, self.order, "noise", lambda lam: torch.exp(-lam), start)
        d_rho = torch.exp(-schedule.lam[1:]) - torch.exp(-schedule.lam[:-1])
        W = torch.zeros(schedule.steps, self.order, dtype=torch.float64)
        for i in range(start, schedule.steps):  # a run begun at ``start`` warms up from there
            b = AB_WEIGHTS[min(self.order, i - start + 1)]
            W[i, :len(b)] = d_rho[i] * torch.tensor(b, dtype=torch.float64)  # keeps lam's graph, if any
        return W
