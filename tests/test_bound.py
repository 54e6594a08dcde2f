"""The variational bounds against closed forms (float64): Gaussian KL, the decoders, the DDPM chain,
every term of the discrete bound and the continuous bound for Gaussian data, and the bounds of the
exact mixture oracle against its exact negative log-likelihood."""
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

import scoresde as sd
from scoresde import toy
from scoresde.bounds import (
    chain_coefficients,
    continuous_bound,
    discretized_gaussian_log_likelihood,
    normal_kl,
    variational_bound,
)
from scoresde.bounds.gaussian import level_values

VP_FAMILY = {"vp": sd.VPSDE, "cosine": sd.CosineVPSDE,
             "discrete": lambda: sd.DiscreteVPSDE(betas=torch.linspace(1e-3, 0.3, 8, dtype=torch.float64))}
ALL = {**VP_FAMILY, "subvp": sd.SubVPSDE, "ve": sd.VESDE, "flow": sd.FlowMatchingSDE}
MU, S = [0.3, -0.2, 0.5], 0.5  # Gaussian data N(MU, S^2 I) in D = 3


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gaussian_data(n, seed=0):
    g = toy.GaussianMixture([1.0], [MU], [S**2])
    return g, g.sample(n, generator=gen(seed), dtype=torch.float64)


# ----- Gaussian KL and decoders ---------------------------------------------------------------
def test_normal_kl_is_zero_on_itself_and_matches_torch_distributions():
    g = gen(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    v1 = torch.rand(50, generator=g, dtype=torch.float64) * 3 + 1e-3
    v2 = torch.rand(50, generator=g, dtype=torch.float64) * 3 + 1e-3
    assert normal_kl(m1, v1, m1, v1).abs().max() == 0
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()),
                                                 torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(normal_kl(m1, v1, m2, v2), expected, rtol=1e-12, atol=1e-14)
    # nearly equal variances (the terms of a fine grid): the r - 1 - log r part is ~ (r - 1)^2 / 2
    eps = 1e-7
    torch.testing.assert_close(normal_kl(m1, v1 * (1 + eps), m1, v1), torch.full_like(v1, 0.25 * eps**2),
                               rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="positive"):
        normal_kl(m1, -v1, m2, v2)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_decoder_bin_probabilities_sum_to_one(levels):
    x = level_values(levels)[:, None]                     # every level against every (mean, std)
    means = torch.tensor([-3.0, -1.0, -0.37, 0.0, 0.5, 1.0, 2.5], dtype=torch.float64)
    for std in (1e-4, 1e-2, 0.3, 5.0):
        logp = discretized_gaussian_log_likelihood(x, means[None], torch.tensor(std, dtype=torch.float64), levels)
        assert torch.isfinite(logp).all()
        torch.testing.assert_close(logp.exp().sum(0), torch.ones_like(means), rtol=0, atol=1e-12)


def test_decoder_bins_are_normal_cdf_differences_and_accurate_in_the_tails():
    levels, delta = 17, 1 / 16
    x = level_values(levels)
    mean, std = 0.21, 0.05
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64),
                                               torch.tensor(std, dtype=torch.float64), levels).numpy()
    xs = x.numpy()
    hi = np.where(xs > 1 - delta / 2, np.inf, (xs + delta - mean) / std)
    lo = np.where(xs < -1 + delta / 2, -np.inf, (xs - delta - mean) / std)
    # scipy's survival function keeps the right tail, its cdf the left: the reference picks the accurate one
    with np.errstate(divide="ignore"):  # the branch not taken may underflow to log(0)
        ref = np.where(lo > 0, np.log(stats.norm.sf(lo) - stats.norm.sf(hi)),
                       np.log(stats.norm.cdf(hi) - stats.norm.cdf(lo)))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(logp[finite], ref[finite], rtol=1e-9)
    # bins 20 standard deviations away: probabilities ~ 1e-90 where 1 - cdf would round to 0
    assert (logp > -1e4).all() and logp.min() < -150
    np.testing.assert_allclose(logp[0], special.log_ndtr((-1 + delta - mean) / std), rtol=1e-12)


# ----- the chain --------------------------------------------------------------------------------
def test_chain_on_discrete_vp_knots_is_ddpms_chain():
    # Ho et al. 2020, eqs. 6-7: beta_t, beta-tilde_t = (1 - abar_{t-1})/(1 - abar_t) beta_t and the posterior
    # mean coefficients sqrt(abar_{t-1}) beta_t / (1 - abar_t), sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t).
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    sde = sd.DiscreteVPSDE(betas=betas)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000               # the knots t_i = i/N
    alpha, sigma = sde.alpha_sigma(t)
    lam = sde.lam(t)
    c = chain_coefficients(alpha[:-1], sigma[:-1], lam[:-1], alpha[1:], sigma[1:], lam[1:])
    b, a_prev, a_t = betas[1:], abar[:-1], abar[1:]
    torch.testing.assert_close(c.forward_var, b, rtol=1e-10, atol=0)
    torch.testing.assert_close(c.posterior_var, (1 - a_prev) / (1 - a_t) * b, rtol=1e-10, atol=0)
    torch.testing.assert_close(c.coef_x0, a_prev.sqrt() * b / (1 - a_t), rtol=1e-10, atol=0)
    torch.testing.assert_close(c.coef_xt, (1 - b).sqrt() * (1 - a_prev) / (1 - a_t), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(ALL))
def test_posterior_variance_kl_is_the_snr_difference_times_the_x0_error(name):
    # VDM eq. 13: with the posterior reverse variance, L_t = (SNR_s - SNR_t)/2 ||x0 - x0_hat||^2: a second
    # path through the chain's coefficients. The eps form (SNR_s/SNR_t - 1)/2 ||eps - eps_hat||^2 is the same.
    from scoresde.bounds.discrete import _Chain, chain_grid, kl_term

    sde = ALL[name]()
    _, x0 = gaussian_data(6)
    chain = _Chain(sde, chain_grid(sde, 7))
    model = toy.anisotropic_mixture(3).model(sde)   # any denoiser, not the one of the data
    for k in range(1, 7):
        ks = torch.full((6,), k, dtype=torch.long)
        t, c = chain.step(ks, x0)
        eps = torch.randn(x0.shape, generator=gen(k), dtype=torch.float64)
        x_t = chain.alpha[k] * x0 + chain.sigma[k] * eps
        x0_hat = model.x0(x_t, t.flatten())
        snr = torch.exp(2 * chain.lam)
        expected = 0.5 * (snr[k - 1] - snr[k]) * (x0 - x0_hat).pow(2).sum(1)
        torch.testing.assert_close(kl_term(x0, x0_hat, x_t, c, "posterior"), expected, rtol=1e-9, atol=1e-12)
        eps_hat = model.eps(x_t, t.flatten())
        expected_eps = 0.5 * (snr[k - 1] / snr[k] - 1) * (eps - eps_hat).pow(2).sum(1)
        torch.testing.assert_close(kl_term(x0, x0_hat, x_t, c, "posterior"), expected_eps, rtol=1e-8, atol=1e-10)


# ----- Gaussian data: every term against its closed form ----------------------------------------
def closed_form_terms(sde, steps, reverse_variance):
    """E[L_0], E[L_1..L_{N-1}], E[L_N] for N(MU, S^2 I) data, the exact (linear) denoiser and the continuous
    decoder, written in DDPM's notation for the VP family (abar_i = alpha_i^2, beta_i = 1 - abar_i/abar_{i-1})."""
    D, m2 = len(MU), sum(m * m for m in MU)
    if steps == 1:
        t = [float(sde.T)]
    else:
        t = np.linspace(sde.t_min, sde.T, steps).tolist()
    abar = [float(sde.alpha(torch.tensor(ti, dtype=torch.float64))) ** 2 for ti in t]
    mmse = [S**2 * (1 - a) / (a * S**2 + 1 - a) for a in abar]          # Var(x0 | x_t) per dimension
    v1 = 1 - abar[0]                                                     # decoder variance beta_1
    terms = [0.5 * D * (math.log(2 * math.pi * v1) + mmse[0] / v1)]
    for i in range(1, steps):
        beta = 1 - abar[i] / abar[i - 1]
        beta_tilde = (1 - abar[i - 1]) / (1 - abar[i]) * beta
        c = math.sqrt(abar[i - 1]) * beta / (1 - abar[i])
        v = beta if reverse_variance == "beta" else beta_tilde
        r = beta_tilde / v
        terms.append(0.5 * D * (r - 1 - math.log(r)) + 0.5 * c * c * D * mmse[i] / v)
    p2, sT2 = sde.prior_std() ** 2, 1 - abar[-1]
    terms.append(0.5 * D * (sT2 / p2 - 1 - math.log(sT2 / p2)) + 0.5 * abar[-1] * (m2 + D * S**2) / p2)
    return torch.tensor(terms, dtype=torch.float64)


@pytest.mark.parametrize("reverse_variance", ["beta", "posterior"])
@pytest.mark.parametrize("name", sorted(VP_FAMILY))
def test_every_term_of_the_gaussian_bound_equals_its_closed_form(name, reverse_variance):
    # 4000 points, one noise draw per term each: every batch mean lies within 4.5 standard errors of its
    # expectation (10 terms x 6 cases: a false alarm has probability ~ 4e-4 for the whole test).
    sde = VP_FAMILY[name]()
    N = 8
    g, x0 = gaussian_data(4000, seed=1)
    res = variational_bound(g.model(sde), x0, steps=N, reverse_variance=reverse_variance, generator=gen(2))
    expected = closed_form_terms(sde, N, reverse_variance)
    assert res.terms.shape == (N + 1,) and res.nfe == N
    assert ((res.terms - expected).abs() <= 4.5 * res.terms_se + 1e-12).all(), (res.terms, expected, res.terms_se)
    # the whole bound: the sum of the parts, and within 4.5 standard errors of the summed closed form
    torch.testing.assert_close(res.nll, res.prior + res.diffusion + res.reconstruction)
    assert abs(res.mean - float(expected.sum())) < 4.5 * res.se
    if name == "discrete":  # its knots are the grid: the chain is the 8-step DDPM chain
        torch.testing.assert_close(res.times, torch.arange(1, 9, dtype=torch.float64) / 8)


def test_one_step_bound_is_prior_plus_decoder():
    sde = sd.VPSDE()
    g, x0 = gaussian_data(4000, seed=3)
    res = variational_bound(g.model(sde), x0, steps=1, generator=gen(4))
    expected = closed_form_terms(sde, 1, "beta")
    assert res.nfe == 1 and (res.diffusion == 0).all() and float(res.times[0]) == sde.T
    assert abs(res.mean - float(expected.sum())) < 4.5 * res.se


@pytest.mark.parametrize("name", sorted(ALL))
def test_continuous_bound_of_gaussian_data_equals_its_closed_form(name):
    # For N(MU, S^2 I) data and the exact denoiser E||eps - eps_hat||^2 = D SNR S^2 / (1 + SNR S^2), and
    # the diffusion term integrates in lam to (D/2) log((1 + S^2 SNR(t_min)) / (1 + S^2 SNR(T))) for every
    # SDE of the family; prior and decoder as in the discrete bound with t_1 = t_min.
    sde = ALL[name]()
    g, x0 = gaussian_data(4000, seed=5)
    res = continuous_bound(g.model(sde), x0, n_t=2, generator=gen(6))
    D, m2 = len(MU), sum(m * m for m in MU)
    a0, s0 = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.t_min, dtype=torch.float64)))
    aT, sT = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.T, dtype=torch.float64)))
    snr0, snrT = (a0 / s0) ** 2, (aT / sT) ** 2
    mmse0 = S**2 * s0**2 / (a0**2 * S**2 + s0**2)
    p2 = sde.prior_std() ** 2
    expected = {
        "diffusion": 0.5 * D * math.log((1 + S**2 * snr0) / (1 + S**2 * snrT)),
        "reconstruction": 0.5 * D * (math.log(2 * math.pi * s0**2) + mmse0 / s0**2),
        "prior": 0.5 * D * (sT**2 / p2 - 1 - math.log(sT**2 / p2)) + 0.5 * aT**2 * (m2 + D * S**2) / p2,
    }
    for part, value in expected.items():
        v = getattr(res, part)
        se = float(v.std()) / math.sqrt(v.numel())
        assert abs(float(v.mean()) - value) < 4.5 * se + 1e-12, (part, float(v.mean()), value, se)
    assert res.nfe == 3 and res.kind == "continuous"


# ----- the exact mixture oracle: bounds above the exact NLL, gaps shrinking with N ------------------
def paired(diff):
    return float(diff.mean()), float(diff.std()) / math.sqrt(diff.numel())


@pytest.mark.parametrize("name", ["vp", "cosine"])
def test_discrete_bound_lies_above_the_exact_nll_and_tightens_with_n(name):
    # E_data[bound] >= E_data[-log p_theta(x0)] >= E_data[-log p_data(x0)]: the first by Jensen (the bound is
    # an ELBO), the second by Gibbs' inequality (cross-entropy >= entropy). Per point neither need hold, so the
    # test compares batch means of the paired difference bound - exact with its standard error.
    sde, mix = sd.make_sde(name), toy.mixture("eight_gaussians")
    x0 = mix.sample(400, generator=gen(0), dtype=torch.float64)
    exact = -mix.log_prob(x0)
    gaps = []
    for N in (4, 16, 64):
        gap, se = paired(variational_bound(mix.model(sde), x0, steps=N, generator=gen(N)).nll - exact)
        assert gap > -3 * se
        gaps.append((gap, se))
    # measured: VP 3.3, 1.7, 0.6 nats (s.e. <= 0.1): each refinement lowers the gap by many standard errors
    for (g1, s1), (g2, s2) in zip(gaps[:-1], gaps[1:], strict=True):
        assert g2 < g1 - 3 * math.hypot(s1, s2)


def binned_mixture():
    """A diagonal two-component mixture inside [-1, 1]^2: its mass on each bin is a product of normal CDFs."""
    return toy.GaussianMixture([0.4, 0.6], [[-0.4, 0.3], [0.35, -0.2]], [[0.04, 0.09], [0.0625, 0.0225]])


def exact_bin_log_mass(mix, x, levels):
    delta = 1 / (levels - 1)
    lo = torch.where(x < -1 + delta / 2, -math.inf, x - delta)
    hi = torch.where(x > 1 - delta / 2, math.inf, x + delta)
    mass = 0
    for k in range(mix.n_components):
        sd_k = torch.diagonal(mix.covs[k]).sqrt()
        p = torch.special.ndtr((hi - mix.means[k]) / sd_k) - torch.special.ndtr((lo - mix.means[k]) / sd_k)
        mass = mass + mix.weights[k] * p.prod(1)
    return mass.log()


def test_discretised_bound_lies_above_the_exact_nll_of_the_binned_data():
    # Data: the mixture rounded to 17 levels (the extreme bins open). Gibbs and Jensen as above, now for
    # probabilities: E[bound] >= E[-log P_theta(x)] >= E[-log P_data(x)], P_data = the exact bin mass.
    levels = 17
    mix = binned_mixture()
    grid = level_values(levels)
    y = mix.sample(600, generator=gen(1), dtype=torch.float64)
    x0 = grid[((y.clamp(-1, 1) + 1) * (levels - 1) / 2).round().long()]
    exact = -exact_bin_log_mass(mix, x0, levels)
    sde = sd.VPSDE()
    gaps = []
    for N in (4, 32):
        res = variational_bound(mix.model(sde), x0, steps=N, levels=levels, generator=gen(N))
        assert res.levels == levels
        gap, se = paired(res.nll - exact)
        assert gap > -3 * se
        gaps.append((gap, se))
    assert gaps[1][0] < gaps[0][0] - 3 * math.hypot(gaps[0][1], gaps[1][1])


@pytest.mark.parametrize("estimator", ["uniform", "importance"])
def test_monte_carlo_estimators_agree_with_the_exact_sum(estimator):
    # Given x0, the sampled estimate is unbiased for the exact sum; the paired difference per point is
    # independent across points, so its batch mean lies within 3 of its standard errors of 0.
    sde, mix = sd.VPSDE(), toy.mixture("eight_gaussians")
    x0 = mix.sample(1000, generator=gen(0), dtype=torch.float64)
    model = mix.model(sde)
    exact = variational_bound(model, x0, steps=40, generator=gen(1))
    mc = variational_bound(model, x0, steps=40, estimator=estimator, n_t=2, generator=gen(2))
    gap, se = paired(mc.nll - exact.nll)
    assert abs(gap) < 3 * se
    assert mc.nfe == 1 + 2 and mc.terms is None and mc.n_t == 2


def test_importance_sampling_reduces_the_variance():
    # Proposal from the Gaussian-data expectation of each term: measured ~4x smaller standard error.
    sde, mix = sd.VPSDE(), toy.mixture("eight_gaussians")
    x0 = mix.sample(1000, generator=gen(0), dtype=torch.float64)
    se = {e: variational_bound(mix.model(sde), x0, steps=64, estimator=e, generator=gen(3)).se
          for e in ("uniform", "importance")}
    assert se["importance"] < 0.5 * se["uniform"]


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_continuous_bound_lies_above_the_exact_nll_and_the_pf_ode_value(name):
    # Theory: E[continuous bound] >= E[-log p_theta(x0)] >= E[-log p_data(x0)] (ELBO, then Gibbs); it bounds the
    # reverse-SDE model, not the PF-ODE density, so per point there is no ordering with the ODE value. With the
    # exact score the PF-ODE gives -log p_{t_min} to solver accuracy (tests/test_likelihood.py), which lies within
    # 0.05 nats of -log p_0 here; so the bound's batch mean must sit above the ODE's up to that and its s.e.
    from scoresde.likelihood import log_likelihood

    sde, mix = sd.make_sde(name), toy.mixture("eight_gaussians")
    x0 = mix.sample(300, generator=gen(0), dtype=torch.float64)
    model = mix.model(sde)
    exact = -mix.log_prob(x0)
    res = continuous_bound(model, x0, n_t=8, generator=gen(1))
    gap, se = paired(res.nll - exact)
    assert gap > -3 * se
    ode = log_likelihood(model, x0[:16], rtol=1e-6, atol=1e-6).nll
    assert abs(float((ode - exact[:16]).mean())) < 0.05
    assert gap > float((ode - exact[:16]).mean()) - 0.05 - 3 * se


def test_bits_per_dim_and_images_shape():
    # (B, C, H, W) data: the bound of images equals the bound of the same pixels flattened (same noise).
    g = toy.GaussianMixture([1.0], [[0.1, -0.3, 0.2, 0.0]], [0.3])
    x = g.sample(50, generator=gen(0), dtype=torch.float64)
    flat = g.model(sd.VPSDE())
    image = sd.ScoreModel(lambda z, t: g.score(z.reshape(z.shape[0], -1), t, flat.sde).reshape(z.shape),
                          flat.sde, "score")
    a = variational_bound(flat, x, steps=10, generator=gen(1))
    b = variational_bound(image, x.reshape(50, 1, 2, 2), steps=10, generator=gen(1))
    torch.testing.assert_close(a.nll, b.nll)
    torch.testing.assert_close(b.bits_per_dim(), b.nll / (4 * math.log(2)))
    assert b.dim == 4 and math.isclose(b.bpd, b.mean / (4 * math.log(2)))


# ----- bad input -------------------------------------------------------------------------------------
def _mix_model():
    return toy.mixture("eight_gaussians").model(sd.VPSDE())


X = torch.zeros(4, 2, dtype=torch.float64)
BAD = [
    (dict(x0=torch.zeros(4, 2, dtype=torch.long)), ValueError, "levels"),
    (dict(x0=torch.zeros(4, 2, dtype=torch.long), levels=256), ValueError, "levels=256"),
    (dict(x0=X + 0.3, levels=17), ValueError, "17-level lattice"),
    (dict(x0=X + 3.0, levels=17), ValueError, r"\[-1, 1\]"),
    (dict(levels=1), ValueError, "levels: .*got 1"),
    (dict(levels=2.5), ValueError, "levels: .*2.5"),
    (dict(steps=0), ValueError, "steps: .*got 0"),
    (dict(steps=2.5), TypeError, "steps: .*2.5"),  # one policy (scoresde.checks): a non-integer count is a type
    (dict(steps=True), TypeError, "steps: .*True"),
    (dict(n_t=0), ValueError, "n_t"),
    (dict(estimator="mc"), ValueError, "estimator: unknown 'mc'; allowed: exact, uniform, importance"),
    (dict(reverse_variance="large"), ValueError, "reverse_variance: unknown 'large'; allowed: beta, posterior"),
    (dict(generator=np.random.default_rng(0)), TypeError, "generator: expected a torch.Generator"),
    (dict(x0=X.half()), ValueError, "x0: expected float32 or float64"),
    (dict(x0=X + math.nan), ValueError, "x0: contains 8 non-finite"),
    (dict(x0=X[0]), ValueError, r"x0: expected shape \(B, \*event_shape\)"),
    (dict(t_min=2.0), ValueError, "t_min"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_input_is_refused_with_a_named_error(kwargs, exc, match):
    kwargs = {"x0": X, **kwargs}
    model = _mix_model()
    x0 = kwargs.pop("x0")
    with pytest.raises(exc, match=match):
        variational_bound(model, x0, **kwargs)
    assert model.nfe == 0  # refused before any work
    if "steps" not in kwargs and "estimator" not in kwargs and "reverse_variance" not in kwargs:
        with pytest.raises(exc, match=match):
            continuous_bound(model, x0, **kwargs)


@pytest.mark.parametrize("bound", [variational_bound, continuous_bound])
def test_a_nan_model_is_named(bound):
    model = sd.ScoreModel(lambda x, t: torch.full_like(x, math.nan), sd.VPSDE(), "eps")
    # the model wrapper checks every output where it is produced, naming the network and the time
    with pytest.raises(FloatingPointError, match="returned NaN/inf at t = "):
        bound(model, X)


def test_model_must_be_a_score_model():
    with pytest.raises(TypeError, match="model: expected a scoresde.ScoreModel"):
        variational_bound(lambda x, t: x, X)


def test_bound_gap_study_rows_and_figure(tmp_path):
    # the figure's study at toy size: the discrete gap shrinks with N, the PF-ODE (a density, not a bound)
    # sits near the exact value, and the job writes the PNG with its CSV
    from scoresde.studies.bound_gap import job_bound_gap

    paths, study = job_bound_gap(tmp_path, toy.mixture("eight_gaussians"), sdes={"vp": sd.VPSDE()}, steps=(4, 32),
                                 n=200, reverse_variances=("beta",), continuous_n_t=4)
    assert [p.name for p in paths] == ["bound_gap.png", "bound_gap.csv"] and all(p.stat().st_size > 0 for p in paths)
    coarse, fine = study.select(method="discrete")
    assert fine["gap"] < coarse["gap"] - 3 * math.hypot(coarse["se"], fine["se"])
    (ode,) = study.select(method="pf_ode")
    assert abs(ode["gap"]) < 0.01
    assert len(paths[1].read_text().splitlines()) == 1 + len(study.rows)
