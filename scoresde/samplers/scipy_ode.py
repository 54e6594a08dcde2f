r"""The probability-flow ODE (Song et al. 2021, eq. 13) through ``scipy.integrate.solve_ivp``.

.. math::  \frac{dx}{dt} = f(t)\, x - \tfrac12 g(t)^2 s(x, t), \qquad \text{from } T \text{ down to } t_{min}.

Option ``solver``: a solve_ivp method (RK23, RK45, DOP853, LSODA, Radau, BDF). The whole batch is one flat float64 system of size B*D; the model is called on x's own shape, dtype
and device, and the drift returned to scipy as float64. Samples are independent, so the Jacobian is
block diagonal with (D, D) blocks: the implicit methods get that sparsity (Radau/BDF ``jac_sparsity``,
LSODA's band ``D - 1``), so a finite-difference Jacobian costs about D model calls instead of B*D.
Adaptive: ``expected_nfe`` is None; the stats carry the OdeResult's ``nfev``, ``njev``, ``nlu``,
``status`` and ``message``. The state at each grid time comes from ``t_eval`` (dense output), asked
for only when a trajectory or progress bar looks at it (the steps do not depend on it; DOP853 pays
extra drift evaluations for its dense output).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .._tensor import check_finite_number
from .base import Sampler, register
from .ode import _Flow

METHODS = ("RK23", "RK45", "DOP853", "LSODA", "Radau", "BDF")


@register
class ScipyODE(Sampler):
    name = "scipy_ode"
    adaptive = True
    calls_per_step = 1
    conformance_options = [{"solver": s} for s in ("RK45", "DOP853", "LSODA")]

    def __init__(self, solver: str = "RK45", rtol: float = 1e-5, atol: float = 1e-5):
        if solver not in METHODS:
            raise ValueError(f"solver: unknown scipy solve_ivp method {solver!r}; known methods: {', '.join(METHODS)}")
        self.method = solver
        self.rtol = check_finite_number("rtol", rtol, positive=True)
        self.atol = check_finite_number("atol", atol, positive=True)
        self.convergence_order = {"RK23": 3, "RK45": 5, "DOP853": 8}.get(solver)  # variable-order methods: None

    def expected_nfe(self, steps: int) -> None:
        return None

    def run(self, model, x, times, ctx):
        from scipy.integrate import solve_ivp
        from scipy.sparse import block_diag

        shape, dtype, device = x.shape, x.dtype, x.device
        # a non-finite drift raises: solve_ivp would only shrink its step until it gives up
        flow = _Flow(model, times, x, check=f"scipy_ode ({self.method})")

        def fun(t, y):
            xt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
            with torch.no_grad():
                d = flow(t, xt)
            return d.reshape(-1).to(device="cpu", dtype=torch.float64).numpy()

        B, D = shape[0], math.prod(shape[1:])
        extra = {}
        if self.method in ("Radau", "BDF"):
            extra["jac_sparsity"] = block_diag([np.ones((D, D))] * B, format="csc")
        elif self.method == "LSODA":
            extra.update(lband=D - 1, uband=D - 1)
        y0 = x.detach().reshape(-1).to(torch.float64).cpu().numpy()
        t_eval = times.to(torch.float64).cpu().numpy()
        # the interior grid times are only dense-output times (costly at B*D unknowns: evaluation, then
        # solve_ivp's hstack): asked for when someone looks at them; the steps do not depend on them
        out = t_eval if ctx.observed else t_eval[[0, -1]]
        sol = solve_ivp(fun, (float(t_eval[0]), float(t_eval[-1])), y0, method=self.method, t_eval=out,
                        rtol=self.rtol, atol=self.atol, **extra)
        ctx.stats.update(method=self.method, nfev=int(sol.nfev), njev=int(sol.njev), nlu=int(sol.nlu),
                         status=int(sol.status), message=str(sol.message))
        if sol.status != 0:
            raise RuntimeError(f"scipy_ode: solve_ivp({self.method}) failed at t = {float(sol.t[-1]) if sol.t.size else t_eval[0]:.6g}: "
                               f"{sol.message}")
        first = len(t_eval) - len(out)
        for k in range(1, len(out)):
            x = torch.from_numpy(np.ascontiguousarray(sol.y[:, k])).to(device=device, dtype=dtype).reshape(shape)
            ctx.step(first + k - 1, x)
        return x
