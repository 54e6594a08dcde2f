r"""A linear multistep exponential integrator with free coefficients: the form that calibrated
("learned", "bespoke") few-step solvers take (Shaul et al. 2023, "Bespoke Solvers for Generative Flow
Models"; Tong et al. 2024, "Learning to Discretize Denoising Diffusion ODEs"; Frankel et al. 2025,
"S4S: Solving for a Diffusion Model Solver").

In ``y = x / alpha`` the probability-flow ODE with the noise prediction is exactly
``dy = eps_theta d(e^{-lam})`` (DPM-Solver eq. 3.4 with ``sigma/alpha = e^{-lam}``), so between two
grid times ``y_{i+1} = y_i + int eps_theta d(e^{-lam})``. A linear multistep rule replaces the
integral by a combination of the predictions already made,

.. math::  x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i + \alpha_{i+1} \sum_{j \le i} C_{ij}\, \epsilon_j,
           \qquad \epsilon_j = \epsilon_\theta(x_j, t_j),

one model call per step. ``C`` is lower triangular: step ``i`` may use every prediction made so far and
none to come. Every multistep exponential integrator in the noise prediction is of this form:

* DDIM / DPM-Solver-1: ``C_ii = d_i = e^{-lam_{i+1}} - e^{-lam_i}``, nothing else;
* DPM-Solver-2M (``'dpm_solver'``, ``order=2, lower_order_final=False``, its default
  ``solver_type='dpmsolver'``): ``C_ii = d_i (1 + 1/(2 r_i))``, ``C_{i,i-1} = -d_i/(2 r_i)``,
  ``r_i = (lam_i - lam_{i-1}) / (lam_{i+1} - lam_i)``, with a DDIM first step.

Without ``coefficients`` the sampler uses DPM-Solver-2M's, for any grid, and has its order 2 (the
tests check both identities). With coefficients fitted to one model, one step count and one pair of
ends (:func:`scoresde.studies.solver_fit.fit_linear_multistep`, which also fits the grid), it is a
calibrated solver: no order is claimed (``convergence_order`` is None), and the coefficients only make
sense on the grid they were fitted with. ``coefficients`` may require grad: ``sample(..., grad=True)``
then differentiates the samples with respect to every entry of its lower triangle (the fit of
:mod:`scoresde.studies.solver_fit` does exactly this).

State: ``state.history`` holds the predictions ``(eps_i, eps_{i-1}, ...)`` newest first, as many as
the band of ``C`` needs (two for the default; all of them for a ``C`` that requires grad).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..schedule import Schedule
from .base import SamplerState, SteppedSampler, register

__all__ = ["LinearMultistep", "MultistepState", "dpm_solver_2m_coefficients", "ddim_increments"]


def ddim_increments(lam: Tensor) -> Tensor:
    """``d_i = e^{-lam_{i+1}} - e^{-lam_i}``: the weight of ``eps_i`` in DDIM's step ``i`` (in y = x / alpha)."""
    return torch.exp(-lam[1:]) - torch.exp(-lam[:-1])


def dpm_solver_2m_coefficients(lam: Tensor) -> Tensor:
    """DPM-Solver-2M's ``C`` (``solver_type='dpmsolver'``, first step DDIM) on a grid with half log-SNRs
    ``lam`` (length ``steps + 1``). Differentiable in ``lam``."""
    d = ddim_increments(lam)
    n = d.shape[0]
    C = torch.diag(d)
    if n > 1:
        # D1 = (eps_i - eps_{i-1}) / r_i, and the step adds (d_i / 2) D1
        half_over_r = 0.5 * (lam[2:] - lam[1:-1]) / (lam[1:-1] - lam[:-2])
        idx = torch.arange(1, n)
        C = C.index_put((idx, idx), d[1:] * (1 + half_over_r)).index_put((idx, idx - 1), -d[1:] * half_over_r)
    return C


@dataclass(frozen=True)
class MultistepState(SamplerState):
    """Adds the run's coefficient matrix ``C`` and how many past predictions its rows use (``width``)."""

    C: Tensor | None = None
    width: int = 1


@register
class LinearMultistep(SteppedSampler):
    r"""``x_{i+1} = alpha_{i+1}/alpha_i x_i + alpha_{i+1} sum_{j<=i} C_ij eps_theta(x_j, t_j)``.

    Option: ``coefficients``, a lower-triangular ``(steps, steps)`` tensor ``C`` for the grid it is
    used with (default: DPM-Solver-2M's for whatever grid is given; order 2). See the module docstring.
    """

    name = "linear_multistep"
    calls_per_step = 1

    def __init__(self, coefficients: Tensor | None = None):
        if coefficients is not None:
            if not isinstance(coefficients, Tensor):
                raise ValueError(f"coefficients: expected a torch.Tensor, got {type(coefficients).__name__}")
            C = coefficients
            if not (C.is_floating_point() and C.ndim == 2 and C.shape[0] == C.shape[1] and C.shape[0] >= 1):
                raise ValueError(f"coefficients: expected a square floating-point (steps, steps) tensor, got "
                                 f"{C.dtype} of shape {tuple(C.shape)}")
            if not bool(torch.isfinite(C.detach()).all()):
                raise ValueError("coefficients: contains NaN or inf")
            above = torch.triu(C.detach(), diagonal=1).nonzero()
            if len(above):
                i, j = (int(v) for v in above[0])
                raise ValueError(f"coefficients: entry ({i}, {j}) is above the diagonal: step {i} cannot use the "
                                 f"prediction of a later step {j}; C must be lower triangular")
            coefficients = C.to(device="cpu", dtype=torch.float64)  # keeps the graph of a C that requires grad
        self.coefficients = coefficients

    @property
    def convergence_order(self) -> int | None:
        return 2 if self.coefficients is None else None  # a fitted C claims no order

    def __repr__(self) -> str:
        if self.coefficients is None:
            return "LinearMultistep(coefficients=None)  # DPM-Solver-2M"
        return f"LinearMultistep(coefficients=<{self.coefficients.shape[0]} steps>)"

    def coefficient_matrix(self, schedule: Schedule) -> Tensor:
        """``C`` for this schedule: the option, or DPM-Solver-2M's on the schedule's log-SNRs."""
        if self.coefficients is None:
            return dpm_solver_2m_coefficients(schedule.lam)
        if self.coefficients.shape[0] != schedule.steps:
            raise ValueError(f"coefficients: fitted for {self.coefficients.shape[0]} steps, but the grid has "
                             f"{schedule.steps} (pass the grid the coefficients were fitted with)")
        return self.coefficients

    def init(self, schedule, x, start=0):
        C = self.coefficient_matrix(schedule)
        if C.requires_grad:
            width = C.shape[0]  # every entry of the lower triangle gets a gradient, zeros included
        else:
            width = 1 + max((i - j for i, j in C.nonzero().tolist()), default=0)
        return MultistepState(x=x, i=start, x_eval=x, t_eval=schedule.t[start], C=C, width=width)

    def step(self, model, schedule, state, output, ctx):
        i, x, C = state.i, state.x, state.C
        history = (model.to_eps(output, x, schedule.t[i]),) + state.history  # eps_i, eps_{i-1}, ...
        combination = sum(C[i, i - k] * eps_j for k, eps_j in enumerate(history[:i + 1]))
        x_next = schedule.alpha[i + 1] / schedule.alpha[i] * x + schedule.alpha[i + 1] * combination
        return MultistepState(x=x_next, i=i + 1, x_eval=x_next, t_eval=schedule.t[min(i + 1, schedule.steps)],
                              history=history[:state.width - 1], C=C, width=state.width)
