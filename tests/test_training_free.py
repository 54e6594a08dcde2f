"""The training-free solvers of zju-pi/diff-sampler in our frame: DEIS tAB (samplers/deis.py), iPNDM
(samplers/ipndm.py) and diff-sampler's polynomial-in-time grids (grids.time_polynomial).

Their orders are checked by the registry-wide tests (tests/test_orders.py, from each class's
``conformance_options``); here: identities with DDIM, DPM-Solver and linear_multistep in float64, the weights
against closed forms, the orders the registry's problem cannot show, the grids' ends and monotonicity.
"""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde import grids
from scoresde.samplers import SAMPLERS, sample
from scoresde.samplers.ipndm import AB_WEIGHTS
from scoresde.schedule import Schedule
from scoresde.studies.orders import empirical_order
from scoresde.studies.references import reference_pf_ode

F64 = torch.float64


@pytest.fixture(scope="module")
def problem():
    sde = sd.VPSDE()
    model = sd.toy.gaussian_mixture_2d().model(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    return sde, model, x_T


def _run(problem, name, steps=12, grid="logsnr", **opts):
    sde, model, x_T = problem
    return sample(model, sde, name, steps, x_T=x_T, grid=grid, **opts).samples


# ----- identities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["vp_t", "t", "rho", "lam"])
@pytest.mark.parametrize("prediction", ["noise", "data"])
def test_deis_order_1_is_ddim(problem, variable, prediction):
    # the constant interpolant integrates to e^{-lam_{i+1}} - e^{-lam_i} (or e^{lam}): DDIM's step exactly
    x = _run(problem, "deis", order=1, variable=variable, prediction=prediction, grid="time_rho2")
    assert torch.allclose(x, _run(problem, "ddim", grid="time_rho2"), rtol=0, atol=1e-12)


def test_ipndm_order_1_is_ddim(problem):
    for weights in ("variable", "published"):
        assert torch.allclose(_run(problem, "ipndm", order=1, weights=weights), _run(problem, "ddim"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("prediction, other", [("noise", "dpm_solver"), ("data", "dpm_solver++")])
def test_deis_in_lam_is_dpm_solver_multistep(problem, order, prediction, other):
    # a polynomial in lam integrated exactly against e^{-lam} is sum_k h^{k+1} phi_{k+1} P^(k)(lam_i): DPM-Solver's
    # multistep step with the derivatives of the same polynomial ('taylor' second order, our 3M third order)
    x = _run(problem, "deis", order=order, variable="lam", prediction=prediction, grid="karras")
    y = _run(problem, other, order=order, solver_type="taylor", lower_order_final=False, grid="karras")
    assert torch.allclose(x, y, rtol=0, atol=1e-11)


def test_ipndm_variable_is_deis_rho(problem):
    x = _run(problem, "ipndm", order=4)
    assert torch.allclose(x, _run(problem, "deis", order=4, variable="rho"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, opts", [("deis", {"order": 4}), ("ipndm", {"weights": "published"})])
def test_coefficient_matrix_runs_in_linear_multistep(problem, name, opts):
    sde, model, x_T = problem
    times = grids.make_grid("time_rho2", sde, 10)
    C = SAMPLERS[name](**opts).coefficient_matrix(Schedule.from_times(sde, times))
    x = sample(model, sde, "linear_multistep", x_T=x_T, grid=times, coefficients=C).samples
    assert torch.allclose(x, sample(model, sde, name, x_T=x_T, grid=times, **opts).samples, rtol=0, atol=1e-12)


# ----- the weights against closed forms -----------------------------------------------------------
def _uniform_rho_schedule(sde, steps):
    rho = torch.linspace(float(torch.exp(-sde.lam(torch.tensor(1.0, dtype=F64)))), 0.5, steps + 1, dtype=F64)
    return Schedule.from_times(sde, grids.times_of_lam(sde, -torch.log(rho), float(sde.t_of_lam(-math.log(0.5))), 1.0))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_published_weights_are_adams_bashforth_on_uniform_rho_steps(order):
    sde = sd.VPSDE()
    schedule = _uniform_rho_schedule(sde, 9)
    published = SAMPLERS["ipndm"](order=order, weights="published").weight_table(schedule)
    variable = SAMPLERS["ipndm"](order=order).weight_table(schedule)
    d_rho = torch.diff(torch.exp(-schedule.lam))
    for i in range(schedule.steps):
        b = torch.tensor(AB_WEIGHTS[min(order, i + 1)], dtype=F64)
        assert torch.allclose(published[i, :len(b)], d_rho[i] * b, rtol=1e-13, atol=0)
    # equal steps in rho: the variable-step weights are the classical ones (quadrature to ~1e-13 relative)
    assert torch.allclose(variable, published, rtol=1e-9, atol=1e-15)
    # on a grid uniform in log-SNR they are not
    other = Schedule.from_times(sde, grids.make_grid("logsnr", sde, 9))
    diff = SAMPLERS["ipndm"](order=order).weight_table(other) - SAMPLERS["ipndm"](order=order, weights="published").weight_table(other)
    assert float(diff[order - 1:].abs().max()) > 1e-3 * float(torch.diff(torch.exp(-other.lam)).abs().min())


def test_deis_weights_integrate_polynomials_exactly():
    # sum_j W_ij p(v_{i-j}) = int p(v) d(e^{-lam}) for a polynomial p of degree < order (here p(v) = v^3 in rho,
    # where the integral is closed form: int rho^3 drho)
    sde = sd.VPSDE()
    schedule = Schedule.from_times(sde, grids.make_grid("time_rho7", sde, 8))
    W = SAMPLERS["deis"](order=4, variable="rho").weight_table(schedule)
    rho = torch.exp(-schedule.lam)
    for i in range(3, schedule.steps):
        lhs = sum(W[i, j] * rho[i - j] ** 3 for j in range(4))
        assert math.isclose(float(lhs), float((rho[i + 1] ** 4 - rho[i] ** 4) / 4), rel_tol=1e-11)


# ----- orders the registry's problem cannot show ---------------------------------------------------
def _fitted_order(sde, name, steps, T=1.0, t_min=0.25, **opts):
    mix = sd.toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.6**2, 0.4**2])
    model = mix.model(sde)
    gen = torch.Generator().manual_seed(0)
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(torch.tensor(T, dtype=F64)))
    x_T = alpha_T * mix.sample(8, generator=gen, dtype=F64) + sigma_T * torch.randn(8, 2, generator=gen, dtype=F64)
    ref = reference_pf_ode(model, x_T, T, t_min, tol=1e-12)
    errors = [float((sample(model, sde, name, n, x_T=x_T, T=T, t_min=t_min, **opts).samples - ref.x)
                    .flatten(1).norm(dim=1).mean()) for n in steps]
    assert min(errors) > 100 * ref.error
    return empirical_order(steps, errors)


@pytest.mark.parametrize("order", [5, 6])
def test_deis_orders_above_four(order):
    # alpha_T = 4.4e-5: the Euler warm-up's error alpha_T^2 h^2 stays below h^order (measured 4.78 and 5.80)
    fitted = _fitted_order(sd.VPSDE(beta_max=40.0), "deis", (96, 128, 192, 256), order=order, prediction="data")
    assert abs(fitted - order) <= 0.3, fitted


def test_ipndm_published_weights_converge_at_second_order():
    # order 3 fits 2.44 over 16-48 steps (pre-asymptotic), 1.93 over 96-256; the variable weights keep order 3
    fitted = _fitted_order(sd.VPSDE(), "ipndm", (96, 128, 192, 256), order=3, weights="published")
    assert abs(fitted - 2) <= 0.3, fitted
    assert abs(_fitted_order(sd.VPSDE(), "ipndm", (96, 128, 192, 256), order=3) - 3) <= 0.3


# ----- grids ------------------------------------------------------------------------------------------
SDES = [sd.VPSDE(), sd.VESDE(), sd.SubVPSDE(), sd.DiscreteVPSDE(), sd.VPSDE(T=0.5, t_min=0.01)]


@pytest.mark.parametrize("rho", [1, 2, 3, 7])
@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_time_polynomial_grids_ends_and_monotone(sde, rho):
    for steps in (1, 5, 50):
        t = grids.make_grid(f"time_rho{rho}", sde, steps)
        assert t.numel() == steps + 1 and t.dtype == F64
        assert float(t[0]) == sde.T and float(t[-1]) == sde.t_min
        assert bool((t[1:] < t[:-1]).all())


def test_time_polynomial_is_polynomial_in_t_on_the_default_vpsde():
    # diff-sampler's fitted VP time is our t for VPSDE(0.1, 20) from T = 1 to t_min = 1e-3: rho = 1, 2 are our
    # 'uniform' and 'quadratic' grids, and rho = 7 is (1 + i/N (t_min^(1/7) - 1))^7
    sde = sd.VPSDE()
    assert torch.allclose(grids.make_grid("time_rho1", sde, 10), grids.make_grid("uniform", sde, 10), rtol=1e-12, atol=0)
    assert torch.allclose(grids.make_grid("time_rho2", sde, 10), grids.make_grid("quadratic", sde, 10), rtol=1e-12, atol=0)
    ramp = torch.linspace(0, 1, 11, dtype=F64)
    assert torch.allclose(grids.make_grid("time_rho7", sde, 10), (1 + ramp * (1e-3 ** (1 / 7) - 1)) ** 7, rtol=1e-11, atol=0)


@pytest.mark.parametrize("sde", SDES, ids=repr)
def test_vp_time_round_trip(sde):
    lam = sde.lam(torch.tensor([sde.T, sde.t_min], dtype=F64))
    lam_T, lam_min = float(lam[0]), float(lam[1])
    tau = grids.vp_time_of_lam(torch.tensor([lam_T, lam_min], dtype=F64), lam_T, lam_min)
    assert torch.allclose(tau, torch.tensor([1.0, grids.VP_TIME_END], dtype=F64), rtol=1e-12, atol=0)
    mid = torch.linspace(lam_T, lam_min, 7, dtype=F64)
    back = grids.lam_of_vp_time(grids.vp_time_of_lam(mid, lam_T, lam_min), lam_T, lam_min)
    assert torch.allclose(back, mid, rtol=0, atol=1e-9)


# ----- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts, arg", [
    ("deis", {"order": 0}, "order"), ("deis", {"order": 7}, "order"), ("deis", {"order": 2.0}, "order"),
    ("deis", {"variable": "sigma"}, "variable"), ("deis", {"prediction": "eps"}, "prediction"),
    ("ipndm", {"order": 5}, "order"), ("ipndm", {"weights": "fixed"}, "weights"),
])
def test_bad_options_name_the_argument(name, opts, arg):
    with pytest.raises(ValueError, match=f"^{arg}: .*{list(opts.values())[0]!r}"):
        SAMPLERS[name](**opts)


# ----- the analytical first step (diff-sampler's AFS) -------------------------------------------------
@pytest.mark.parametrize("name, opts", [("deis", {"order": 3}), ("deis", {"order": 4, "prediction": "data"}),
                                        ("ipndm", {"weights": "published"})])
def test_afs_is_the_first_step_with_an_analytic_eps(name, opts):
    # afs=True equals the run without it whose model returns x / sqrt(alpha^2 + sigma^2) at its first call, one call fewer
    sde, mix = sd.VPSDE(), sd.toy.gaussian_mixture_2d()
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    calls = []

    def eps(x, t):
        calls.append(t)
        if len(calls) == 1:
            alpha, sigma = sde.alpha_sigma(t)
            return x / torch.sqrt(alpha**2 + sigma**2)[:, None]
        return -sde.sigma(t)[:, None] * mix.score(x, t, sde)

    plain = sample(sd.ScoreModel(eps, sde, "eps"), sde, name, 8, x_T=x_T, **opts)
    res = sample(mix.model(sde), sde, name, 8, x_T=x_T, afs=True, **opts)
    assert res.nfe == 7 and plain.nfe == 8 and SAMPLERS[name](afs=True, **opts).expected_nfe(8) == 7
    assert res.convergence_order is None
    assert torch.allclose(res.samples, plain.samples, rtol=0, atol=1e-12)


def test_afs_must_be_a_bool():
    with pytest.raises(TypeError, match="^afs: "):
        SAMPLERS["deis"](afs="yes")
