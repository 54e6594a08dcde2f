"""The adaptive probability-flow ODE solvers on the 1000-step DiscreteVPSDE: cheap, accurate, and
dependent on the schedule only through the half log-SNR.

DiscreteVPSDE's log alpha is piecewise linear in t, so f jumps at each of its 999 interior knots; an
error-controlled solver in t stops at every knot (6994 model calls for dopri5 at every tolerance from
1e-2 to 1e-5 on eight Gaussians). In lam, for y = x / alpha, the field depends on the schedule only through lam
(every VP schedule has alpha^2 = sigmoid(2 lam), and the exact score depends on alpha and sigma only), so
it is as smooth as for a continuous schedule.
"""
from __future__ import annotations

import pytest
import torch
import torchdiffeq

import scoresde as sd
from scoresde.dynamics import ProbabilityFlowODE
from scoresde.samplers import sample

F64 = torch.float64
MIX = sd.toy.mixture("eight_gaussians")


@pytest.fixture(scope="module")
def problem():
    """DiscreteVPSDE, a smooth VP SDE with the same lam at two times, x_T, and a tight reference.

    The reference is independent of the lam formulation: dopri8 at rtol = atol = 1e-12 in t on the
    smooth VP SDE (between the times with the discrete schedule's two values of lam)."""
    discrete = sd.DiscreteVPSDE()
    smooth = sd.VPSDE(beta_min=0.1, beta_max=40.0)
    lam = discrete.lam(torch.tensor([discrete.T, discrete.t_min], dtype=F64))
    T, t_min = (float(v) for v in smooth.t_of_lam(lam))
    x_T = discrete.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    flow = ProbabilityFlowODE(smooth, MIX.model(smooth).score, t_range=(T, t_min))
    with torch.no_grad():
        ref = torchdiffeq.odeint(flow, x_T, torch.tensor([T, t_min], dtype=F64), method="dopri8",
                                 rtol=1e-12, atol=1e-12)[-1]
    return discrete, smooth, (T, t_min), x_T, ref


@pytest.mark.parametrize("method, solver", [("ode", "dopri5"), ("ode", "bosh3"), ("scipy_ode", "RK45")])
def test_adaptive_solve_depends_on_the_schedule_only_through_lambda(problem, method, solver):
    # the same ODE in lam on both schedules: the same steps (NFE) and the same endpoint, up to the
    # rounding of t(lam) -> alpha, sigma (measured differences ~1e-14)
    discrete, smooth, (T, t_min), x_T, _ = problem
    a = sample(MIX.model(discrete), discrete, method, x_T=x_T, solver=solver, rtol=1e-4, atol=1e-4)
    b = sample(MIX.model(smooth), smooth, method, x_T=x_T, solver=solver, rtol=1e-4, atol=1e-4, T=T, t_min=t_min)
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.samples, b.samples, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method, solver", [("ode", "dopri5"), ("scipy_ode", "RK45")])
def test_adaptive_ode_on_the_discrete_schedule_is_cheap_and_within_tolerance(problem, method, solver):
    """At rtol = atol = 1e-5: fewer than 300 model calls (measured 128 for dopri5, 134 for RK45), and
    the endpoint within a few tolerances of the reference in the solver's own error norm,
    rms((x - ref) / (atol + rtol |ref|)) (measured 2.9 and 1.7; the controller bounds the local
    error per step, and the global error of such a solve is a small multiple of it: 2.6 and 1.8 for
    the same solvers on the continuous VPSDE). Tightening the tolerance 100x shrinks the error
    about as much (measured ~60-100x), so it is the solver's error that is measured, not the
    reference's."""
    discrete, _, _, x_T, ref = problem
    model = MIX.model(discrete)
    errors = {}
    for tol in (1e-3, 1e-5):
        r = sample(model, discrete, method, x_T=x_T, solver=solver, rtol=tol, atol=tol)
        errors[tol] = float(((r.samples - ref) / (tol + tol * ref.abs())).pow(2).mean().sqrt()) * tol
        normed = errors[tol] / tol
        assert normed < 5, f"{method}({solver}) at tol {tol}: error {normed:.2f} tolerances"
    assert r.nfe < 300, r.nfe
    assert errors[1e-5] < errors[1e-3] / 20, errors

