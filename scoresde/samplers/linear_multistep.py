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
calibrated solver: no order is claimed (``order`` is None), and the coefficients only make sense on
the grid they were fitted with.

Memory: a prediction is dropped once no later row of ``C`` uses it, so the default keeps two.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..schedule import Schedule
from .base import Sampler, register

__all__ = ["LinearMultistep", "dpm_solver_2m_coefficients", "ddim_increments"]


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


@register
class LinearMultistep(Sampler):
    r"""``x_{i+1} = alpha_{i+1}/alpha_i x_i + alpha_{i+1} sum_{j<=i} C_ij eps_theta(x_j, t_j)``.

    Option: ``coefficients``, a lower-triangular ``(steps, steps)`` tensor ``C`` for the grid it is
    used with (default: DPM-Solver-2M's for whatever grid is given; order 2). See the module docstring.
    """

    name = "linear_multistep"
    calls_per_step = 1

    def __init__(self, coefficients: Tensor | None = None):
        if coefficients is not None:
            C = torch.as_tensor(coefficients)
            if not (C.is_floating_point() and C.ndim == 2 and C.shape[0] == C.shape[1] and C.shape[0] >= 1):
                raise ValueError(f"coefficients: expected a square floating-point (steps, steps) tensor, got "
                                 f"{getattr(coefficients, 'dtype', type(coefficients).__name__)} of shape "
                                 f"{tuple(C.shape)}")
            C = C.detach().to(device="cpu", dtype=torch.float64)
            if not bool(torch.isfinite(C).all()):
                raise ValueError("coefficients: contains NaN or inf")
            above = torch.triu(C, diagonal=1).nonzero()
            if len(above):
                i, j = (int(v) for v in above[0])
                raise ValueError(f"coefficients: entry ({i}, {j}) is above the diagonal: step {i} cannot use the "
                                 f"prediction of a later step {j}; C must be lower triangular")
            coefficients = C
        self.coefficients = coefficients
        self.convergence_order = 2 if coefficients is None else None

    def __repr__(self) -> str:
        if self.coefficients is None:
            return "LinearMultistep(coefficients=None)  # DPM-Solver-2M"
        return f"LinearMultistep(coefficients=<{self.coefficients.shape[0]} steps>)"

    def coefficient_matrix(self, model, times: Tensor) -> Tensor:
        lam = model.sde.lam(times.to(torch.float64))
        if self.coefficients is None:
            return dpm_solver_2m_coefficients(lam)
        steps = len(times) - 1
        if self.coefficients.shape[0] != steps:
            raise ValueError(f"coefficients: fitted for {self.coefficients.shape[0]} steps, but the grid has {steps} "
                             "(pass the grid the coefficients were fitted with)")
        return self.coefficients

    def run(self, model, x, times, ctx):
        times = times.t if isinstance(times, Schedule) else times  # sample() hands every sampler its Schedule
        C = self.coefficient_matrix(model, times)
        steps = C.shape[0]
        # the non-zero terms of each row, and the last step that uses each prediction (freed after it);
        # from C's non-zeros, so a banded C (the default) costs O(steps), not O(steps^2), in Python
        nz = C.nonzero().tolist()
        values = C[C != 0].tolist()  # row-major, the order of nonzero()
        terms: list[list[tuple[int, float]]] = [[] for _ in range(steps)]
        last_use = [-1] * steps
        for (i, j), c in zip(nz, values, strict=True):
            terms[i].append((j, c))
            last_use[j] = max(last_use[j], i)
        t_grid = times.tolist()
        alpha = model.sde.alpha_sigma(times)[0].tolist()
        eps: dict[int, Tensor] = {}
        for i in range(steps):
            eps[i] = model.eps(x, t_grid[i])
            x = x.mul(alpha[i + 1] / alpha[i])  # a fresh tensor: the in-place adds below touch nothing else
            for j, c in terms[i]:
                x.add_(eps[j], alpha=alpha[i + 1] * c)
            for j in [j for j in eps if last_use[j] <= i]:
                del eps[j]
            ctx.step(i, x)
        return x
