r"""Exponential Adams-Bashforth: the weights and the step that DEIS (:mod:`.deis`) and iPNDM (:mod:`.ipndm`) share.

In ``y = x / alpha`` the probability-flow ODE with the noise prediction is exactly
``dy = eps_theta d(e^{-lam})``; in ``z = x / sigma`` with the data prediction it is ``dz = x0_theta d(e^{lam})``
(Lu et al. 2022, eq. 3.4; 2022b, eq. 8). So between two grid points, exactly,

.. math::  x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1} \int_{\lam_i}^{\lam_{i+1}} \epsilon\, d(e^{-\lam})
           \quad\text{or}\quad
           x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i + \sigma_{i+1} \int_{\lam_i}^{\lam_{i+1}} x_0\, d(e^{\lam}).

An exponential Adams-Bashforth method of order ``k`` replaces the prediction ``F`` on the step by the
Lagrange polynomial through the last ``k`` predictions ``F_i, F_{i-1}, .., F_{i-k+1}`` as a function of an
interpolation variable ``v`` (DEIS: a time ``t``; ``rho = e^{-lam}``: iPNDM and DEIS's rhoAB; ``lam``:
DPM-Solver's multistep methods) and integrates it exactly against the weight:

.. math::  x_{i+1} = a_i x_i + b_{i+1} \sum_{j<k} W_{ij} F_{i-j}, \qquad
           W_{ij} = \int_{\lam_i}^{\lam_{i+1}} \ell_j(v(\lam))\, d(e^{\mp\lam}),
           \quad \ell_j(v) = \prod_{m \ne j} \frac{v - v_{i-m}}{v_{i-j} - v_{i-m}}.

The interpolation error is ``O(h^k)`` on any grid (no step-ratio condition), so the local error is
``O(h^{k+1})`` and the method has global order ``k``. The first ``k - 1`` steps warm up at orders
``1 .. k-1`` (no history yet); near T they carry the small factor explained in :mod:`._phi`.

**The weights** are computed once per schedule, in float64, by composite Gauss-Legendre quadrature in
``lam`` (:data:`PANELS` panels of :data:`NODES` nodes per step). The integrand ``l_j(v(lam)) e^{-+lam}`` is
analytic on the step for the smooth SDEs, and the quadrature error on a panel of width ``w`` is about
``(w/2)^{2n} / (2n)!``: below 1e-30 relative for a whole log-SNR range of 10 in one step.

**AFS**, the analytical first step of zju-pi/diff-sampler (Zhou et al. 2024, sec. 4.2; option ``afs``): the
first step uses ``eps = x_T / sqrt(alpha_T^2 + sigma_T^2)`` (their ``d = x / sqrt(1 + sigma^2)`` in EDM's
variables) in place of a model call, which is nearly exact at high noise, and so saves one call: ``steps``
grid steps cost ``steps - 1`` calls. It replaces the model by an approximation of size ``O(alpha_T)`` in one
step of length ``h_0``, a global error ``O(alpha_T h_0)``: no convergence order is claimed with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..schedule import Schedule
from .base import SamplerState, SteppedSampler

__all__ = ["adams_weights", "PREDICTIONS", "ExponentialAdams", "AdamsState"]

PREDICTIONS = ("noise", "data")
PANELS, NODES = 4, 16


def _quadrature(lam: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes ``(steps, PANELS * NODES)`` in each step's log-SNR interval and their weights (they sum to ``h_i``)."""
    u, w = np.polynomial.legendre.leggauss(NODES)
    u, w = torch.as_tensor((u + 1) / 2), torch.as_tensor(w / 2)
    s = torch.cat([(p + u) / PANELS for p in range(PANELS)])  # composite nodes in [0, 1]
    ws = torch.cat([w / PANELS] * PANELS)
    h = (lam[1:] - lam[:-1])[:, None]
    return lam[:-1, None] + h * s, h * ws


def adams_weights(lam: Tensor, order: int, prediction: str, variable, start: int = 0) -> Tensor:
    """``W`` of shape ``(steps, order)``: ``W[i, j]`` multiplies ``F_{i-j}`` in step ``i`` (zero beyond warm-up).

    A run that begins at step ``start`` (a partial run: img2img, inpainting) has no history before it, so
    its warm-up counts from there: step ``i`` uses ``min(order, i - start + 1)`` points (rows before
    ``start`` are never used).

    ``lam`` is the schedule's log-SNR grid (increasing), ``variable(lam)`` the interpolation variable at any
    log-SNRs (a float64 function, monotone on the run). Differentiable in ``lam`` where ``variable`` is (a fit
    of the grid moves the weights with it, :mod:`scoresde.studies.solver_fit`).
    """
    lam = lam.to(torch.float64)
    nodes, qw = _quadrature(lam)
    # d(e^{-lam}) = -e^{-lam} dlam (noise), d(e^{lam}) = e^{lam} dlam (data)
    qw = qw * (-torch.exp(-nodes) if prediction == "noise" else torch.exp(nodes))
    v_grid, v_nodes = variable(lam), variable(nodes)
    steps = lam.numel() - 1
    W = torch.zeros(steps, order, dtype=torch.float64)
    for i in range(steps):
        k = min(order, max(i - start, 0) + 1)
        v = v_grid[i - torch.arange(k)]  # v_i, v_{i-1}, .. v_{i-k+1}
        for j in range(k):
            basis = torch.ones_like(v_nodes[i])
            for m in range(k):
                if m != j:
                    basis = basis * (v_nodes[i] - v[m]) / (v[j] - v[m])
            W[i, j] = (qw[i] * basis).sum()
    return W


@dataclass(frozen=True)
class AdamsState(SamplerState):
    """Adds the run's weights ``W`` (``(steps, order)``)."""

    weights: Tensor | None = None


class ExponentialAdams(SteppedSampler):
    """The step ``x_{i+1} = a_i x_i + b_{i+1} sum_j W_ij F_{i-j}`` for a subclass that gives ``weight_table(schedule)``
    and sets ``order`` and ``prediction`` ('noise': ``F = eps``, ``a = alpha_{i+1}/alpha_i``, ``b = alpha``;
    'data': ``F = x0``, ``a = sigma_{i+1}/sigma_i``, ``b = sigma``). One model call per step."""

    calls_per_step = 1
    order: int = 1
    prediction: str = "noise"
    afs: bool = False

    def expected_nfe(self, steps: int) -> int | None:
        return steps - 1 if self.afs else steps

    def needs_output(self, state: SamplerState) -> bool:
        return not (self.afs and state.i == 0)

    def weight_table(self, schedule: Schedule, start: int = 0) -> Tensor:  # W for a run begun at ``start``
        raise NotImplementedError

    def call_times(self, schedule: Schedule, start: int = 0) -> Tensor:
        # AFS replaces the first call of a whole run only: a partial run starts from a state far from noise
        return schedule.t[1:-1] if self.afs and start == 0 else schedule.t[start:-1]

    def coefficient_matrix(self, schedule: Schedule) -> Tensor:
        """The lower-triangular ``C`` of :class:`~scoresde.samplers.linear_multistep.LinearMultistep` that runs
        this method (noise prediction only): ``C[i, i - j] = W[i, j]``."""
        if self.prediction != "noise":
            raise ValueError(f"prediction: the linear_multistep form holds the noise prediction, got {self.prediction!r}")
        W = self.weight_table(schedule)
        C = torch.zeros(schedule.steps, schedule.steps, dtype=torch.float64)
        for j in range(self.order):
            idx = torch.arange(j, schedule.steps)
            C[idx, idx - j] = W[j:, j]
        return C

    def init(self, schedule, x, start=0):
        return AdamsState(x=x, i=start, x_eval=x, t_eval=schedule.t[start], weights=self.weight_table(schedule, start))

    def step(self, model, schedule, state, output, ctx):
        i, x, W = state.i, state.x, state.weights
        t = schedule.t[i]
        if output is None:  # AFS: the first step's eps without a model call (module docstring)
            eps = x / torch.sqrt(schedule.alpha[i] ** 2 + schedule.sigma[i] ** 2)
            F = eps if self.prediction == "noise" else (x - schedule.sigma[i] * eps) / schedule.alpha[i]
        else:
            F = model.to_eps(output, x, t) if self.prediction == "noise" else model.to_x0(output, x, t)
        history = (F,) + state.history  # F_i, F_{i-1}, ...
        combination = sum(W[i, j] * F_j for j, F_j in enumerate(history[:min(self.order, i + 1)]))
        b = schedule.alpha if self.prediction == "noise" else schedule.sigma
        x_next = b[i + 1] / b[i] * x + b[i + 1] * combination
        return AdamsState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[min(i + 1, schedule.steps)],
                          history=history[:self.order - 1], weights=W)
