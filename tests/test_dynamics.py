"""The dynamics module (scoresde.dynamics) and the samplers and likelihood built on it.

* ``log_likelihood`` with ``T < sde.T`` scores the latent under the prior at that T (closed form for
  Gaussian data under VE, where the probability-flow ODE is a scaling);
* ``sample(grad=True)`` through the ``ode`` sampler differentiates the grid (central differences);
* a float32 state stays float32 through ode, scipy_ode and torchsde, and agrees with the float64 run;
* the shared integrators (one torchdiffeq-in-lam helper, one scipy bridge) reproduce each other.
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde import dynamics
from scoresde.likelihood import log_likelihood
from scoresde.samplers import sample

F64 = torch.float64
S0_SQ = 0.25  # the data: N(0, S0_SQ I)


def gaussian_ve_model(sde: sd.VESDE) -> sd.ScoreModel:
    """The exact score of N(0, S0_SQ I) data under VE: p_t = N(0, v(t) I), v = S0_SQ + sigma(t)^2."""
    def score(x, t):
        return -x / (S0_SQ + sde.sigma(t.to(F64)).to(x.dtype)[:, None] ** 2)
    return sd.ScoreModel(score, sde, "score")


def test_log_likelihood_scores_the_prior_at_its_own_T():
    # Under VE (alpha = 1) with v(t) = S0_SQ + sigma(t)^2 the PF-ODE is dx/dt = (g^2 / 2v) x = (v'/2v) x, so
    # x(T) = x sqrt(v_T / v_min) and the integrated divergence is (D/2) log(v_T / v_min); the default prior
    # is N(0, sigma(T)^2 I) at the T of the run: log p = log N(x(T); 0, sigma_T^2 I) + (D/2) log(v_T / v_min).
    sde, T, t_min, D = sd.VESDE(), 0.5, 1e-3, 2
    x = torch.randn(6, D, generator=torch.Generator().manual_seed(0), dtype=F64) * math.sqrt(S0_SQ)
    res = log_likelihood(gaussian_ve_model(sde), x, T=T, t_min=t_min, rtol=1e-9, atol=1e-9)
    v_T, v_min = (S0_SQ + sde.prior_std(s) ** 2 for s in (T, t_min))
    latent = x * math.sqrt(v_T / v_min)
    s_T = sde.prior_std(T)
    prior = -0.5 * (latent**2).sum(1) / s_T**2 - D * math.log(s_T) - 0.5 * D * math.log(2 * math.pi)
    expected = prior + 0.5 * D * math.log(v_T / v_min)
    # dopri5 at 1e-9 leaves ~1e-9 here; the prior taken at sde.T instead would be off by ~7 nats
    torch.testing.assert_close(res.latent, latent, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.log_likelihood, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.prior_log_prob, sde.prior_log_prob(res.latent, T), rtol=0, atol=1e-12)


def test_prior_log_prob_at_T_is_the_gaussian_with_sigma_T():
    sde = sd.VESDE()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    for T in (None, 0.3, 1.0):
        s = sde.prior_std(T)
        dist = torch.distributions.Normal(torch.zeros(3, dtype=F64), s)
        torch.testing.assert_close(sde.prior_log_prob(x, T), dist.log_prob(x).sum(1), rtol=1e-12, atol=1e-12)


# ----- gradients with respect to the grid -------------------------------------------------------------
H = 1e-6


def _tiny_model(sde):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    return sd.ScoreModel(lambda x, t: net(torch.cat([x, t[:, None]], dim=1)), sde, "eps")


@pytest.mark.parametrize("solver, options, rel", [("euler", {}, 1e-6), ("midpoint", {}, 1e-6), ("rk4", {}, 1e-6),
                                                   ("dopri5", {"rtol": 1e-12, "atol": 1e-12}, 1e-5)])
def test_ode_gradient_with_respect_to_the_grid(solver, options, rel):
    # d <w, samples> / d grid along a random direction v against (L(g + h v) - L(g - h v)) / 2h in float64.
    # Fixed steps: h = 1e-6 leaves O(h^2) truncation and O(1e-16/h) rounding, so 1e-6 relative separates
    # a detached grid (exactly 0) or a missing chain rule (O(1) off) from agreement. Adaptive: the ends of
    # the solve carry the gradient; at tolerance 1e-12 the solve is the exact flow to ~1e-10, and its step
    # choices jump between the perturbed runs, so 1e-5 relative.
    sde = sd.VPSDE()
    model = _tiny_model(sde)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(5, 2, generator=g, dtype=F64)
    w = torch.randn(5, 2, generator=g, dtype=F64)
    grid0 = sd.grids.make_grid("logsnr", sde, 3, T=0.9, t_min=0.01)  # room to move both ends
    v = torch.randn(grid0.shape, generator=g, dtype=F64) * 1e-2

    def loss(grid, grad):
        res = sample(model, sde, "ode", x_T=x_T, grid=grid, grad=grad, solver=solver, **options)
        return (w * res.samples).sum()

    grid = grid0.clone().requires_grad_(True)
    loss(grid, True).backward()
    assert grid.grad is not None and float(grid.grad.abs().max()) > 0
    with torch.no_grad():
        fd = (loss(grid0 + H * v, False) - loss(grid0 - H * v, False)) / (2 * H)
    assert float(grid.grad @ v) == pytest.approx(float(fd), rel=rel)


def test_non_differentiable_samplers_refuse_a_gradient_they_cannot_give():
    sde = sd.VPSDE()
    model = sd.toy.mixture("eight_gaussians").model(sde)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = sd.grids.make_grid("logsnr", sde, 4).requires_grad_(True)
    with pytest.raises(ValueError, match="grad: scipy_ode is evaluation-only"):
        sample(model, sde, "scipy_ode", x_T=x_T, grad=True)
    with pytest.raises(ValueError, match="grid: torchsde cannot differentiate with respect to the grid"):
        sample(model, sde, "torchsde", x_T=x_T, grid=grid, grad=True, generator=torch.Generator().manual_seed(0))


# ----- dtypes -------------------------------------------------------------------------------------------
DTYPE_CASES = ([("ode", {"solver": s}) for s in ("euler", "midpoint", "heun2", "heun3", "rk4", "dopri5", "bosh3")]
               + [("scipy_ode", {"solver": s}) for s in ("RK45", "LSODA")]
               + [("torchsde", {"solver": s}) for s in ("euler", "milstein", "srk", "reversible_heun")])


@pytest.mark.parametrize("method, options", DTYPE_CASES, ids=[f"{m}-{o['solver']}" for m, o in DTYPE_CASES])
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_a_float32_state_stays_float32(method, options, sde_name):
    # The schedule is computed in float64 and the state kept in the caller's dtype: float32 in, float32 out
    # (samples and trajectory), and the same answer as the float64 run to float32 precision. 1e-4 relative
    # covers 10 steps of float32 rounding (~1e-7 each, amplified by the drift's Lipschitz constant) and the
    # adaptive solvers' different step choices at 1e-6 tolerance; no case comes close to it.
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE()}[sde_name]
    model = sd.toy.mixture("eight_gaussians").model(sde)
    x64 = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    steps = 100 if options["solver"] == "reversible_heun" else 10
    if method != "torchsde":
        options = {**options, "rtol": 1e-6, "atol": 1e-6} if options["solver"] not in ("euler", "midpoint", "heun2",
                                                                                      "heun3", "rk4") else options
    runs = {}
    for dtype in (torch.float32, F64):
        brownian = None
        if method == "torchsde":  # the same Brownian path for both precisions
            levy = "space-time" if options["solver"] == "srk" else "none"
            brownian = sd.samplers.base.brownian_path(sd.grids.make_grid("logsnr", sde, steps), x64.shape, seed=1,
                                                      levy_area_approximation=levy)
        runs[dtype] = sample(model, sde, method, steps, x_T=x64.to(dtype), return_trajectory=True, brownian=brownian,
                             **options)
    r32, r64 = runs[torch.float32], runs[F64]
    assert r32.samples.dtype == torch.float32 and r32.trajectory.dtype == torch.float32
    scale = float(r64.samples.abs().max())
    # reversible Heun's parasitic mode amplifies rounding (it is only conditionally stable): 1e-3 there
    rel = 1e-3 if options["solver"] == "reversible_heun" else 1e-4
    assert float((r32.samples.double() - r64.samples).abs().max()) < rel * scale


def test_drifts_compute_the_schedule_in_float64_and_return_the_state_dtype():
    sde = sd.VPSDE()
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    score = -x
    for drift, weight in ((dynamics.reverse_drift, 1.0), (dynamics.probability_flow_drift, 0.5)):
        out = drift(sde, x, t, score)
        assert out.dtype == torch.float32
        expected = sde.f(t)[:, None] * x.double() - weight * sde.g2(t)[:, None] * score.double()
        torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    rsde = dynamics.ReverseSDE(sde, lambda x_, t_: -x_)
    assert rsde.g(torch.tensor(0.5), x).dtype == torch.float32
    fsde = dynamics.ForwardSDE(sde)
    assert fsde.f(torch.tensor(0.5), x).dtype == torch.float32 and fsde.g(torch.tensor(0.5), x).dtype == torch.float32


# ----- the shared integrators ---------------------------------------------------------------------------
def test_the_scipy_bridge_and_odeint_in_lam_solve_the_same_flow():
    # One field, two integrators: torchdiffeq's dopri5 and scipy's DOP853 at 1e-10 agree to ~1e-9, and both
    # with the exact Gaussian flow (a single Gaussian's PF-ODE moves x by sqrt(C_t / C_s) about the mean).
    sde = sd.VPSDE()
    mu, s2 = 0.7, 0.3
    model = sd.ScoreModel(
        lambda x, t: -(x - sde.alpha(t.to(F64))[:, None] * mu)
        / (sde.alpha(t.to(F64))[:, None] ** 2 * s2 + sde.sigma(t.to(F64))[:, None] ** 2), sde, "score")
    flow = dynamics.ProbabilityFlowODE(sde, model.score, t_range=(0.01, 1.0))
    ends = torch.tensor([1.0, 0.01], dtype=F64)
    lam, alpha = sde.lam(ends), sde.alpha(ends)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    y_torch = dynamics.odeint_in_lam(flow.lambda_drift, x_T / alpha[0], lam, rtol=1e-10, atol=1e-10)[-1]
    sol, unflatten = dynamics.solve_ivp(lambda s, state: (flow.lambda_drift(s, state[0]),), (x_T / alpha[0],),
                                        (float(lam[0]), float(lam[1])), method="DOP853", rtol=1e-10, atol=1e-10)
    assert sol.success
    (y_scipy,) = unflatten(sol.y[:, -1])
    a, s = sde.alpha_sigma(ends)
    c = a**2 * s2 + s**2
    exact = a[1] * mu + (x_T - a[0] * mu) * torch.sqrt(c[1] / c[0])
    torch.testing.assert_close(alpha[1] * y_torch, exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(alpha[1] * y_scipy, exact, rtol=0, atol=1e-8)


def test_likelihood_names_a_drift_that_overflows():
    # finite network outputs whose drift (sigma^2 / alpha) s overflows once sigma^2 > alpha (lambda < 0):
    # one named error after the solve instead of a check per call
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda x, t: torch.full_like(x, 1e308), sde, "score")
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(FloatingPointError, match=r"drift or its divergence is not finite at lambda = -"):
        log_likelihood(model, x, method="rk4", options={"step_size": 0.5})


# ----- no host reads per model call ----------------------------------------------------------------------
class _CountHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor's value on the host (bool(t), t.item(), float(t): aten._local_scalar_dense)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _host_reads(fn) -> int:
    with _CountHostReads() as counter:
        fn()
    return counter.n


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_the_fixed_step_flow_reads_nothing_on_the_host(method):
    # A fixed-step odeint of the probability-flow ODE makes exactly the host reads torchdiffeq makes for a
    # trivial field (its own checks of the times): none per evaluation of the flow. VPSDE's f and g^2 are
    # closed forms without domain checks, and the score is a plain function, so only this module is measured.
    sde = sd.VPSDE()
    x = torch.randn(4, 2, dtype=F64)
    times = torch.tensor([1.0, 0.6, 0.3], dtype=F64)
    flow = dynamics.ProbabilityFlowODE(sde, lambda x_, t_: -x_, t_range=(0.3, 1.0))
    baseline = _host_reads(lambda: dynamics.odeint_in_t(lambda t, y: -y, x, times, method=method))
    assert _host_reads(lambda: dynamics.odeint_in_t(flow, x, times, method=method)) == baseline
    t = torch.rand(4, dtype=F64)
    rsde = dynamics.ReverseSDE(sde, lambda x_, t_: -x_)
    s = torch.tensor(0.2, dtype=F64)
    for call in (lambda: dynamics.reverse_drift(sde, x, t, -x), lambda: dynamics.probability_flow_drift(sde, x, t, -x),
                 lambda: rsde.f(s, x), lambda: rsde.g(s, x)):
        assert _host_reads(call) == 0


def test_the_likelihood_finite_check_reads_nothing_per_call():
    from scoresde.likelihood import _FiniteDrift

    check = _FiniteDrift(lambda lam, state: (state[0] * lam, state[1]), stop_at_once=False)
    y, l0 = torch.randn(3, 2, dtype=F64), torch.zeros(3, dtype=F64)
    assert _host_reads(lambda: [check(torch.tensor(v, dtype=F64), (y, l0)) for v in (0.1, 0.2, 0.3)]) == 0
    check(torch.tensor(float("inf"), dtype=F64), (y, l0))
    with pytest.raises(FloatingPointError, match="lambda = inf"):
        check.check()
