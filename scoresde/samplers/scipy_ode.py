r"""The probability-flow ODE (Song et al. 2021, eq. 13) through ``scipy.integrate.solve_ivp``.

Integrated in the half log-SNR lam for ``y = x / alpha`` (:class:`scoresde.dynamics.ProbabilityFlowODE`),

.. math::  \frac{dy}{d\lambda} = -e^{-\lambda}\, \varepsilon(\alpha y, t(\lambda)),
           \qquad \lambda: \lambda(T) \to \lambda(t_{min}),

where the field is smooth for every schedule of the family (DiscreteVPSDE's f jumps at its knots in
t). ``rtol``/``atol`` apply to y (alpha ~ 1 at the data end). The model is only evaluated at times in
[t_min, T] of the grid.

Option ``solver``: a solve_ivp method (:func:`scoresde.integrators.scipy_methods`: RK23, RK45, DOP853,
Radau, BDF, LSODA). The whole batch is one flat float64 system of size B*D; the model is called on x's
own shape, dtype and device, and the field returned to scipy as float64. Samples are independent, so
the Jacobian is block diagonal with (D, D) blocks: the implicit methods get that sparsity (Radau/BDF
``jac_sparsity``, LSODA's band ``D - 1``), so a finite-difference Jacobian costs about D model calls
instead of B*D. Adaptive: ``expected_nfe`` is None; the stats carry the OdeResult's ``nfev``, ``njev``,
``nlu``, ``status`` and ``message``. The state at each grid time comes from ``t_eval`` (dense output),
asked for only when a trajectory or progress bar looks at it (the steps do not depend on it).
Evaluation only: ``sample(grad=True)`` is refused with a ValueError.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._tensor import check_finite_number
from ..dynamics import ProbabilityFlowODE, solve_ivp
from ..integrators import scipy_methods
from ..models import ScoreModel
from ..schedule import Schedule
from .base import Sampler, SamplingContext, register
from .ode import finite_score


@register
class ScipyODE(Sampler):
    name = "scipy_ode"
    adaptive = True
    calls_per_step = 1
    conformance_options = [{"solver": s} for s in ("RK45", "DOP853", "LSODA")]

    def __init__(self, solver: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5):
        methods = scipy_methods()
        if solver not in methods:
            raise ValueError(f"solver: unknown scipy solve_ivp method {solver!r}; known methods: {', '.join(methods)}")
        self.solver = solver
        self.rtol = check_finite_number("rtol", rtol, positive=True)
        self.atol = check_finite_number("atol", atol, positive=True)
        self.convergence_order = methods[solver]

    def expected_nfe(self, steps: int) -> None:
        return None

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        from scipy.sparse import block_diag

        if torch.is_grad_enabled():
            raise ValueError("grad: scipy_ode is evaluation-only (solve_ivp runs on NumPy arrays, outside autograd), "
                             "got grad=True; use method='ode' for a differentiable solve")
        sde, shape, dtype = model.sde, x.shape, x.dtype
        score = finite_score(model, schedule, f"scipy_ode ({self.solver})")
        flow = ProbabilityFlowODE(sde, score, t_range=(float(schedule.t[0]), float(schedule.t[-1])))

        B, D = shape[0], math.prod(shape[1:])
        extra = {}
        if self.solver in ("Radau", "BDF"):
            extra["jac_sparsity"] = block_diag([np.ones((D, D))] * B, format="csc")
        elif self.solver == "LSODA":
            extra.update(lband=D - 1, uband=D - 1)
        y0 = x.detach().to(torch.float64) / schedule.alpha[0]  # divided in float64, not in x.s dtype
        lam = schedule.lam.numpy()
        # interior grid times are dense-output values: asked for only when someone looks at them
        out = np.arange(len(lam)) if ctx.observed else np.array([0, len(lam) - 1])
        sol, unflatten = solve_ivp(lambda lam_, y: (flow.lambda_drift(lam_, y[0]),), (y0,), (lam[0], lam[-1]),
                                   method=self.solver, rtol=self.rtol, atol=self.atol, dtype=dtype,
                                   t_eval=lam[out], **extra)
        ctx.stats.update(solver=self.solver, nfev=int(sol.nfev), njev=int(sol.njev), nlu=int(sol.nlu),
                         status=int(sol.status), message=str(sol.message))
        if sol.status != 0:
            t_fail = float(sde.t_of_lam(torch.tensor(float(sol.t[-1]) if sol.t.size else lam[0], dtype=torch.float64)))
            raise RuntimeError(f"scipy_ode: solve_ivp({self.solver}) failed at t = {t_fail:.6g}: {sol.message}")
        for k in range(1, len(out)):
            (y,) = unflatten(sol.y[:, k], torch.float64)
            x = (schedule.alpha[out[k]] * y).to(dtype)
            ctx.step(int(out[k]) - 1, x)
        return x
