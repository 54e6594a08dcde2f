"""The SDE family against its own closed forms: derivatives, inverses, simulation, precision, bad input."""
import math

import pytest
import torch
import torchsde

import scoresde as sd
from scoresde.sde import SDE


def interior_times(sde, n=41):
    """Times in [t_min, T] avoiding the DiscreteVPSDE knots, where its f jumps."""
    t = torch.linspace(sde.t_min, sde.T, n, dtype=torch.float64)[1:-1]
    if isinstance(sde, sd.DiscreteVPSDE):
        t = (torch.floor(t * sde.N) + 0.5) / sde.N
    return t


def central_difference(fn, t, h=1e-6):
    return (fn(t + h) - fn(t - h)) / (2 * h)


class MinimalVP(SDE):
    """A new SDE given only log alpha and sigma: everything else must come from the base class."""

    T, t_min = 1.0, 1e-3

    def log_alpha(self, t):
        return -0.25 * t**2 * 19.9 - 0.05 * t

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))


def test_f_is_derivative_of_log_alpha(any_sde):
    # Central differences with h = 1e-6 in float64: truncation ~h^2 |f''| and rounding ~1e-16/h,
    # both far below the 1e-6 relative tolerance; a wrong sign or factor 2 fails by O(1).
    t = interior_times(any_sde)
    fd = central_difference(any_sde.log_alpha, t)
    torch.testing.assert_close(any_sde.f(t), fd, rtol=1e-6, atol=1e-8)


def test_g2_matches_variance_equation(any_sde):
    # g^2 = d sigma^2/dt - 2 f sigma^2: the variance ODE of the linear SDE.
    t = interior_times(any_sde)
    dvar = central_difference(lambda s: any_sde.sigma(s) ** 2, t)
    expected = dvar - 2 * any_sde.f(t) * any_sde.sigma(t) ** 2
    torch.testing.assert_close(any_sde.g2(t), expected, rtol=1e-6, atol=1e-8)
    assert (any_sde.g2(t) > 0).all()


def test_dsigma_dt(any_sde):
    t = interior_times(any_sde)
    torch.testing.assert_close(any_sde.dsigma_dt(t), central_difference(any_sde.sigma, t), rtol=1e-6, atol=1e-8)


def test_lambda_inverse_round_trip(any_sde):
    t = torch.linspace(any_sde.t_min, any_sde.T, 101, dtype=torch.float64)
    lam = any_sde.lam(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda must decrease strictly with t"
    torch.testing.assert_close(any_sde.t_of_lam(lam), t, rtol=1e-9, atol=1e-12)


def test_closed_form_inverse_agrees_with_bisection(any_sde):
    t = torch.linspace(any_sde.t_min, any_sde.T, 17, dtype=torch.float64)
    lam = any_sde.lam(t)
    torch.testing.assert_close(SDE.t_of_lam(any_sde, lam), any_sde.t_of_lam(lam), rtol=1e-9, atol=1e-12)


def test_base_class_derives_everything_from_alpha_and_sigma():
    # A subclass that gives only log alpha and sigma gets f, g^2, and lambda^-1 equal to VPSDE's closed forms.
    mini, vp = MinimalVP(), sd.VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.linspace(1e-3, 1, 50, dtype=torch.float64)
    torch.testing.assert_close(mini.f(t), vp.f(t), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mini.g2(t), vp.g2(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(mini.t_of_lam(vp.lam(t)), t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["vp", "subvp", "cosine"])
def test_vp_type_closed_forms(name):
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64)
    sde = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "cosine": sd.CosineVPSDE()}[name]
    alpha, sigma = sde.alpha_sigma(t)
    if name == "subvp":
        torch.testing.assert_close(sigma, 1 - alpha**2)
        # sub-VP variance stays below VP's
        assert (sigma**2 < sd.VPSDE().sigma(t) ** 2).all()
    else:
        torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))


def test_ve_and_flow_closed_forms():
    ve, fm = sd.VESDE(0.01, 50.0), sd.FlowMatchingSDE()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ve.sigma(t), torch.tensor([0.01, math.sqrt(0.01 * 50.0), 50.0], dtype=torch.float64))
    torch.testing.assert_close(ve.alpha(t), torch.ones_like(t))
    t = torch.tensor([0.25, 0.5], dtype=torch.float64)
    torch.testing.assert_close(fm.alpha(t), 1 - t)
    torch.testing.assert_close(fm.sigma(t), t)


def test_discrete_schedule_hits_alphas_cumprod_at_knots():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    for sde in (sd.DiscreteVPSDE(betas=betas), sd.DiscreteVPSDE(alphas_cumprod=ac)):
        knots = torch.arange(1, 1001, dtype=torch.float64) / 1000
        torch.testing.assert_close(sde.alpha(knots) ** 2, ac, rtol=1e-12, atol=0)
        torch.testing.assert_close(sde.discrete_time(knots), torch.arange(1000, dtype=torch.float64))
    assert sde.t_min == pytest.approx(1e-3)
    # between knots log alpha is linear in t
    mid = torch.tensor([0.5005], dtype=torch.float64)
    expected = 0.5 * (sde.log_alpha(f := torch.tensor([0.500], dtype=torch.float64)) + sde.log_alpha(f + 1e-3))
    torch.testing.assert_close(sde.log_alpha(mid), expected)


def test_sigma_float32_matches_float64_near_zero(any_sde):
    # Cancellation in 1 - alpha^2 would lose all digits here without expm1.
    t64 = torch.logspace(-5, -3, 30, dtype=torch.float64)
    s64 = any_sde.sigma(t64)
    s32 = any_sde.sigma(t64.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-5, atol=0)


def test_dtype_and_device_follow_t(any_sde):
    t = torch.tensor([0.3, 0.6], dtype=torch.float32)
    for fn in (any_sde.alpha, any_sde.sigma, any_sde.f, any_sde.g2, any_sde.lam):
        assert fn(t).dtype == torch.float32
    assert any_sde.alpha(0.5).dtype == torch.float64  # Python numbers become float64


def test_forward_sde_simulation_matches_marginals(any_sde):
    # Start at x_{t0} ~ N(alpha(t0) x0, sigma(t0)^2), simulate the forward SDE with torchsde,
    # compare the mean and std at t1 with alpha(t1) x0 and sigma(t1).
    gen = torch.Generator().manual_seed(0)
    n, x0 = 20000, 1.5
    t0, t1 = 0.0, min(0.9, any_sde.T)
    a0, s0 = (float(v) for v in any_sde.alpha_sigma(torch.tensor(t0, dtype=torch.float64)))
    y0 = a0 * x0 + s0 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    bm = torchsde.BrownianInterval(t0=t0, t1=t1, size=(n, 1), dtype=torch.float64, entropy=1)
    ys = torchsde.sdeint(any_sde.forward_sde(), y0, torch.tensor([t0, t1], dtype=torch.float64), bm=bm,
                         method="euler", dt=1e-3)
    y1 = ys[-1, :, 0]
    a1, s1 = (float(v) for v in any_sde.alpha_sigma(torch.tensor(t1, dtype=torch.float64)))
    # Monte Carlo: the mean's std error is s1/sqrt(n) (0.7% of s1), the std's is s1/sqrt(2n) (0.5%).
    # Euler with dt=1e-3 adds a weak bias of O(dt * |d log g^2/dt|) <= ~1% for these schedules.
    assert abs(float(y1.mean()) - a1 * x0) < 4 * s1 / math.sqrt(n) + 0.01 * s1
    assert float(y1.std()) == pytest.approx(s1, rel=0.03)


def gaussian_score(sde, mu, s2):
    """Exact score of p_t when x0 ~ N(mu, s2 I)."""
    def score(x, t):
        alpha, sigma = sde.alpha_sigma(torch.as_tensor(t, dtype=x.dtype))
        var = alpha**2 * s2 + sigma**2
        return -(x - alpha * mu) / (var if var.ndim == 0 else var[:, None])
    return score


def test_drifts_against_the_gaussian_flow(any_sde):
    # For Gaussian data N(mu, s2) the PF ODE moves x along x_t = alpha_t mu + (std_t/std_T)(x_T - alpha_T mu),
    # std_t^2 = alpha_t^2 s2 + sigma_t^2, so its drift is alpha' mu + (std'/std)(x - alpha mu), with
    # alpha' = f alpha and std' = (alpha alpha' s2 + sigma sigma')/std. The reverse-SDE drift has twice
    # the score term: 2 (PF drift) - f x.
    sde, mu, s2 = any_sde, 0.7, 0.3
    t = interior_times(sde, 9)
    x = torch.linspace(-2, 2, t.numel(), dtype=torch.float64)[:, None]
    alpha, sigma = sde.alpha_sigma(t)
    dalpha, dsigma = sde.f(t) * alpha, sde.dsigma_dt(t)
    std = torch.sqrt(alpha**2 * s2 + sigma**2)
    score = (-(x[:, 0] - alpha * mu) / std**2)[:, None]
    dstd = (alpha * dalpha * s2 + sigma * dsigma) / std
    flow = (dalpha * mu + dstd / std * (x[:, 0] - alpha * mu))[:, None]
    torch.testing.assert_close(sde.probability_flow_drift(x, t, score), flow, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sde.reverse_drift(x, t, score), 2 * flow - sde.f(t)[:, None] * x, rtol=1e-9, atol=1e-9)


def test_probability_flow_in_lambda_is_the_t_form_changed_variables(any_sde):
    # y = x / alpha: dy/dlam = (dx/dt / alpha - f y) / (dlam/dt), with dlam/dt = -g^2 / (2 sigma^2)
    sde = any_sde
    flow = sde.probability_flow(gaussian_score(sde, 0.7, 0.3))
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)[:, None]
    for t in interior_times(sde, 7):
        alpha, sigma = sde.alpha_sigma(t)
        dlam_dt = -sde.g2(t) / (2 * sigma**2)
        expected = (flow(t, x) / alpha - sde.f(t) * x / alpha) / dlam_dt
        torch.testing.assert_close(flow.lambda_drift(sde.lam(t), x / alpha), expected, rtol=1e-8, atol=1e-10)


def test_probability_flow_holds_the_score_inside_t_range():
    # asked outside its range (as an adaptive solver's first-step probe does), the flow evaluates the
    # score at the nearest end
    sde, seen = sd.VPSDE(), []
    flow = sd.ProbabilityFlowODE(sde, lambda x, t: (seen.append(float(t)), -x)[1], t_range=(0.2, 0.6))
    x = torch.ones(3, 2, dtype=torch.float64)
    flow(torch.tensor(-22.0, dtype=torch.float64), x)
    flow.lambda_drift(torch.tensor(50.0, dtype=torch.float64), x)
    flow.lambda_drift(sde.lam(torch.tensor(0.4, dtype=torch.float64)), x)
    assert seen[:2] == [0.2, 0.2] and seen[2] == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve", "flow", "discrete"])
def test_probability_flow_ode_transports_gaussian_exactly(name):
    # For Gaussian data the PF ODE is the linear map x_t = alpha_t mu + (std_t/std_T)(x_T - alpha_T mu).
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE(), "flow": sd.FlowMatchingSDE(), "discrete": sd.DiscreteVPSDE()}[name]
    mu, s2 = 0.7, 0.3
    x_T = torch.linspace(-2, 2, 7, dtype=torch.float64)[:, None] * sde.prior_std()
    ts = torch.tensor([sde.T, 0.3, sde.t_min], dtype=torch.float64)
    xs = sde.probability_flow(gaussian_score(sde, mu, s2)).solve(x_T, ts, rtol=1e-10, atol=1e-10)
    aT, sT = sde.alpha_sigma(ts[0])
    for k in (1, 2):
        a, s = sde.alpha_sigma(ts[k])
        expected = a * mu + torch.sqrt(a**2 * s2 + s**2) / torch.sqrt(aT**2 * s2 + sT**2) * (x_T - aT * mu)
        torch.testing.assert_close(xs[k], expected, rtol=1e-7, atol=1e-7)


def test_reverse_sde_through_torchsde_reaches_data_marginal():
    # Reverse SDE with the exact Gaussian score, started from the exact p_T: the samples at t_min have
    # the exact marginal moments (Euler-Maruyama bias O(dt) and Monte Carlo error bound the tolerance).
    sde = sd.VPSDE()
    mu, s2, n = 0.7, 0.3, 20000
    gen = torch.Generator().manual_seed(3)
    aT, sT = (float(v) for v in sde.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    x_T = aT * mu + math.sqrt(aT**2 * s2 + sT**2) * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    rsde = sde.reverse_sde(gaussian_score(sde, mu, s2))
    s_end = sde.T - sde.t_min
    bm = torchsde.BrownianInterval(t0=0.0, t1=s_end, size=(n, 1), dtype=torch.float64, entropy=5)
    ys = torchsde.sdeint(rsde, x_T, torch.tensor([0.0, s_end], dtype=torch.float64), bm=bm, method="euler", dt=1e-3)
    a, s = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.t_min, dtype=torch.float64)))
    std = math.sqrt(a**2 * s2 + s**2)
    assert float(ys[-1].mean()) == pytest.approx(a * mu, abs=4 * std / math.sqrt(n) + 0.01)
    assert float(ys[-1].std()) == pytest.approx(std, rel=0.03)


def test_reverse_sde_flattens_images():
    sde = sd.VPSDE()
    rsde = sde.reverse_sde(lambda x, t: -x, event_shape=(3, 4, 4))
    y = torch.randn(2, 48)
    assert rsde.f(torch.tensor(0.1), y).shape == (2, 48)
    assert rsde.g(torch.tensor(0.1), y).shape == (2, 48)


def test_perturb_and_marginal(any_sde):
    x0 = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0.1, 0.2, 0.5, 0.7], dtype=torch.float64)
    xt = any_sde.perturb(x0, t, noise)
    a, s = any_sde.alpha_sigma(t)
    torch.testing.assert_close(xt, a[:, None, None, None] * x0 + s[:, None, None, None] * noise)
    mean, std = any_sde.marginal(x0, 0.5)
    assert mean.shape == std.shape == x0.shape


def test_prior(any_sde):
    gen = torch.Generator().manual_seed(0)
    x = any_sde.prior_sample((4000, 3, 2), generator=gen, dtype=torch.float64)
    assert x.shape == (4000, 3, 2) and x.dtype == torch.float64
    assert float(x.std()) == pytest.approx(any_sde.prior_std(), rel=0.03)
    # prior_log_prob sums over every non-batch dimension
    lp = any_sde.prior_log_prob(x[:5])
    s = any_sde.prior_std()
    expected = torch.distributions.Normal(0.0, s).log_prob(x[:5]).sum((1, 2))
    torch.testing.assert_close(lp, expected)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 1.5])
def test_bad_times_raise(bad):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="t"):
        sde.perturb(torch.zeros(2, 2), torch.tensor([0.5, bad]), torch.zeros(2, 2))


@pytest.mark.parametrize("make, match", [
    (lambda: sd.VPSDE(beta_min=20.0, beta_max=0.1), "beta_min"),
    (lambda: sd.VPSDE(beta_min=-1.0), "beta_min"),
    (lambda: sd.SubVPSDE(beta_max=float("nan")), "beta_max"),
    (lambda: sd.VESDE(sigma_min=50.0, sigma_max=0.01), "sigma_min"),
    (lambda: sd.VESDE(sigma_min=0.0), "sigma_min"),
    (lambda: sd.DiscreteVPSDE(betas=[0.1, 1.2]), "betas"),
    (lambda: sd.DiscreteVPSDE(betas=[0.0, 0.1]), "betas"),
    (lambda: sd.DiscreteVPSDE(alphas_cumprod=[0.5, 0.9]), "alphas_cumprod"),
    (lambda: sd.CosineVPSDE(T=1.0), "T"),
    (lambda: sd.FlowMatchingSDE(T=1.0), "T"),
    (lambda: sd.VPSDE(t_min=2.0), "t_min"),
])
def test_bad_schedule_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_noise_shape_mismatch_raises():
    with pytest.raises(ValueError, match="noise"):
        sd.VPSDE().perturb(torch.zeros(2, 2), 0.5, torch.zeros(2, 3))


def test_make_sde_lists_known_names():
    assert isinstance(sd.make_sde("ve"), sd.VESDE)
    with pytest.raises(ValueError, match="vp"):
        sd.make_sde("nope")
