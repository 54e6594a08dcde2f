r"""Reference solutions: where a sampler started from ``x_T`` should have ended.

* **Deterministic samplers**: the probability-flow ODE from the same ``x_T`` between the same two
  ends, by an adaptive Runge-Kutta method of torchdiffeq at a tight tolerance
  (:func:`reference_pf_ode`). It is integrated in the half log-SNR lambda, where the right side

  .. math::  \frac{dx}{d\lambda} = \frac{dx/dt}{d\lambda/dt}
             = -\frac{2\sigma^2 f}{g^2}\, x + \sigma^2\, \nabla_x \log p_t(x),
             \qquad \frac{d\lambda}{dt} = -\frac{g^2}{2\sigma^2},

  is smooth for every SDE of the family, including piecewise schedules such as
  :class:`~scoresde.sde.DiscreteVPSDE` (for the VP family ``-2 f / g^2 = 1``, so the jumps of ``f`` at
  the knots cancel): an adaptive solver needs no step at every knot. Its own error is estimated by
  solving again at half the tolerance.
* **Stochastic samplers**: the reverse SDE on the *same* torchsde Brownian path by Euler-Maruyama
  on a much finer uniform grid (:func:`reference_reverse_sde`). The noise of these SDEs is additive
  (g depends on t only), so Euler-Maruyama converges strongly with order 1 and a fine grid is an
  honest reference.

This module is the one place that computes references: the studies, the benchmarks and the tests use it.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..dynamics import odeint_in_lam
from ..models import ScoreModel
from .distances import endpoint_error

__all__ = ["Reference", "reference_pf_ode", "reference_reverse_sde", "quiet_brownian"]

# torchdiffeq's adaptive explicit Runge-Kutta pairs that a reference may use
REFERENCE_SOLVERS = ("dopri5", "dopri8")


@dataclass
class Reference:
    """A reference endpoint at ``t_end`` from ``x_T`` and the estimate of its own error."""

    x: Tensor
    t_start: float
    t_end: float
    error: float
    nfe: int
    kind: str


class _FlowInLambda(torch.nn.Module):
    """The probability-flow ODE with the half log-SNR as time (see the module docstring)."""

    def __init__(self, model: ScoreModel, t_lo: float, t_hi: float):
        super().__init__()
        self.model = model
        self.t_lo, self.t_hi = t_lo, t_hi

    def forward(self, lam: Tensor, x: Tensor) -> Tensor:
        sde = self.model.sde
        # the solver's first-step probe may look past the ends; keep t where the coefficients exist
        t = sde.t_of_lam(lam.to(torch.float64)).clamp(self.t_lo, self.t_hi)
        f, g2, sigma = sde.f(t), sde.g2(t), sde.sigma(t)  # 0-d float64: no host read per call
        return (-2 * sigma**2 * f / g2) * x + sigma**2 * self.model.score(x, t.to(x.dtype))


def reference_pf_ode(model: ScoreModel, x_T: Tensor, t_start: float, t_end: float, *, tol: float = 1e-12,
                     solver: str = "dopri5", variable: str = "lambda", estimate_error: bool = True) -> Reference:
    """The probability-flow ODE from ``x_T`` at ``t_start`` to ``t_end`` (rtol = atol = ``tol``).

    ``solver``: ``'dopri5'`` (Dormand-Prince 5(4)) or ``'dopri8'`` (8(5,3)). ``variable='lambda'``
    integrates in the half log-SNR (smooth for every schedule of the family), ``'t'`` in the SDE's
    own time (``ProbabilityFlowODE.solve``). ``error`` is the mean per-sample Euclidean difference from a
    second solve at ``tol / 2`` (the statistic of :func:`~.distances.endpoint_error`): an adaptive
    solution's global error shrinks roughly in proportion to the tolerance, so this is the order of
    magnitude of the reference's own error. ``estimate_error=False`` skips the second solve (``error`` is
    then NaN). ``nfe``: the model calls of the first solve.
    """
    if solver not in REFERENCE_SOLVERS:
        raise ValueError(f"solver: expected one of {', '.join(REFERENCE_SOLVERS)}, got {solver!r}")
    if not (isinstance(tol, float) and 0 < tol < 1):
        raise ValueError(f"tol: expected a float in (0, 1), got {tol!r}")
    sde = model.sde
    if variable == "t":
        flow = sde.probability_flow(model.score)

        def solve(tol_):
            with torch.no_grad():
                return flow.solve(x_T, [t_start, t_end], rtol=tol_, atol=tol_, method=solver)[-1]
    elif variable == "lambda":
        lams = sde.lam(torch.tensor([t_start, t_end], dtype=torch.float64)).to(device=x_T.device, dtype=x_T.dtype)
        flow = _FlowInLambda(model, min(t_start, t_end), max(t_start, t_end))

        def solve(tol_):
            with torch.no_grad():  # landing on the end exactly, where the coefficients are still defined
                return odeint_in_lam(flow, x_T, lams, rtol=tol_, atol=tol_, method=solver)[-1]
    else:
        raise ValueError(f"variable: expected 'lambda' or 't', got {variable!r}")
    nfe0 = model.nfe
    x = solve(tol)
    nfe = model.nfe - nfe0
    error = endpoint_error(x, solve(tol / 2)) if estimate_error else float("nan")
    return Reference(x, float(t_start), float(t_end), error, nfe, f"pf-ode {solver} in {variable} tol={tol:g}")


@contextlib.contextmanager
def quiet_brownian() -> Iterator[None]:
    """Silence torchsde's "Should have tb<=t1" warnings around direct ``torchsde.sdeint`` calls.

    Its own stepping can land a rounding error past the path's end; the increment is still right.
    (Runs through :func:`scoresde.sample` need no silencing: ``BrownianNoise`` clamps its queries.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
        yield


def reference_reverse_sde(model: ScoreModel, x_T: Tensor, t_start: float, t_end: float, brownian,
                          *, steps: int = 2048) -> Reference:
    """The reverse SDE on the Brownian path ``brownian`` by Euler-Maruyama with ``steps`` uniform steps.

    torchsde's ``sdeint`` runs :class:`scoresde.dynamics.ReverseSDE` in flipped time s = t_start - t.
    ``error`` compares with the same scheme at half as many steps (strong order 1 for additive
    noise, so the fine solution's error is about that difference).
    """
    import torchsde

    sde = model.sde
    rev = sde.reverse_sde(model.score, x_T.shape[1:], t_start=t_start)
    y0 = x_T.reshape(x_T.shape[0], -1)
    span = torch.tensor([0.0, t_start - t_end], dtype=x_T.dtype, device=x_T.device)
    nfe0 = model.nfe

    def solve(n):
        return torchsde.sdeint(rev, y0, span, bm=brownian, method="euler", dt=(t_start - t_end) / n)[-1]

    with torch.no_grad(), quiet_brownian():
        x = solve(steps)
        nfe = model.nfe - nfe0
        x_coarse = solve(steps // 2)
    return Reference(x.reshape(x_T.shape), float(t_start), float(t_end), endpoint_error(x, x_coarse), nfe,
                     f"reverse SDE euler-maruyama {steps} steps")
