"""Probability-flow likelihoods against the exact mixture density, and the divergence estimators."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.likelihood import bits_per_dim, divergence, draw_probes, log_likelihood

SDES = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE, "discrete": sd.DiscreteVPSDE}


def mixture(dim):
    return toy.gaussian_mixture_2d() if dim == 2 else toy.anisotropic_mixture(dim)


def exact_prior(mix, sde):
    return lambda z: mix.log_prob_t(z, sde.T, sde)


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("name", sorted(SDES))
def test_ode_likelihood_equals_exact_density(name, dim):
    # With the exact score and the exact log p_T as prior, the only error left is the ODE solver's:
    # dopri5 at rtol = atol = 1e-7 leaves ~1e-5 nats here (measured), well inside the 1e-3 asked for.
    sde, mix = SDES[name](), mixture(dim)
    x = mix.sample(3, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    model = mix.model(sde)
    res = log_likelihood(model, x, estimator="exact", rtol=1e-7, atol=1e-7, prior_log_prob=exact_prior(mix, sde))
    exact = mix.log_prob_t(x, sde.t_min, sde)
    assert (res.log_likelihood - exact).abs().max() < 1e-3
    assert res.nfe == model.nfe > 0
    assert res.estimator == "exact" and res.latent.shape == x.shape and res.log_likelihood.dtype == torch.float64
    # The default Gaussian prior differs from the exact p_T only by the prior term at the same latent.
    prior_gap = sde.prior_log_prob(res.latent) - res.prior_log_prob
    res_default = log_likelihood(model, x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(res_default.log_likelihood - res.log_likelihood, prior_gap, rtol=0, atol=1e-6)


def test_latent_is_the_closed_form_gaussian_flow():
    # For one Gaussian N(mu, S) the PF-ODE moves x_t - alpha_t mu by C_T^{1/2} C_t^{-1/2} (C_t = alpha^2 S + sigma^2 I).
    sde = sd.VPSDE()
    comp = toy.gaussian_mixture_2d().component(0)
    x = comp.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(comp.model(sde), x, rtol=1e-9, atol=1e-9, prior_log_prob=exact_prior(comp, sde))
    evals, evecs = torch.linalg.eigh(comp.covs[0])

    def sqrt_c(t, power):
        a, s = (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return evecs @ torch.diag((a**2 * evals + s**2) ** power) @ evecs.T, a

    c_T, a_T = sqrt_c(sde.T, 0.5)
    c_t, a_t = sqrt_c(sde.t_min, -0.5)
    mu = comp.means[0]
    expected = a_T * mu + (x - a_t * mu) @ (c_T @ c_t).T
    torch.testing.assert_close(res.latent, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.log_likelihood, comp.log_prob_t(x, sde.t_min, sde), rtol=0, atol=1e-6)


def test_fixed_step_nfe_is_counted_by_the_model():
    # torchdiffeq's rk4 (3/8 rule) calls the drift 4 times per step; the model counter must agree.
    # The independent variable is the half log-SNR, so the step size is in lam.
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    x = mix.sample(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 10
    span = float(sde.lam(sde.t_min) - sde.lam(sde.T))
    res = log_likelihood(mix.model(sde), x, method="rk4", options={"step_size": span / steps})
    assert res.nfe == 4 * steps


def test_scipy_and_torchdiffeq_backends_agree():
    sde, mix = sd.SubVPSDE(), mixture(8)
    x = mix.sample(2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = mix.model(sde)
    a = log_likelihood(model, x, rtol=1e-7, atol=1e-7)
    b = log_likelihood(model, x, backend="scipy", method="RK45", rtol=1e-7, atol=1e-7)
    # Two fifth-order solvers at 1e-7 each (each ~1e-5 nats off the exact value, measured): 1e-4 covers both.
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=0, atol=1e-4)
    torch.testing.assert_close(a.latent, b.latent, rtol=0, atol=1e-4)
    assert b.backend == "scipy" and b.nfe > 0


def _jacobian(fn, x):
    return torch.stack([torch.autograd.functional.jacobian(fn, xi[None])[0, :, 0] for xi in x])


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_with_the_predicted_variance(probe):
    # N copies of one point in a batch give N independent one-probe estimates in one backward pass.
    sde, mix = sd.VPSDE(), mixture(8)
    model = mix.model(sde)
    t = torch.tensor(0.3, dtype=torch.float64)
    flow = sde.probability_flow(model.score)
    x0 = mix.sample(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = 4000
    x = x0.expand(n, -1).clone()
    gen = torch.Generator().manual_seed(1)
    _, exact = divergence(lambda z: flow(t, z), x0)
    _, est = divergence(lambda z: flow(t, z), x, probes=draw_probes(x, 1, probe, gen))
    # Theory: Var[eps^T A eps] = 2 ||sym A||_F^2 (Gaussian), minus 2 sum_i A_ii^2 for Rademacher.
    a = _jacobian(lambda z: flow(t, z), x0)[0]
    sym = 0.5 * (a + a.T)
    var = 2 * (sym**2).sum() - (2 * (torch.diagonal(a) ** 2).sum() if probe == "rademacher" else 0)
    se = math.sqrt(float(var) / n)
    assert torch.allclose(exact, torch.trace(a).reshape(1), rtol=1e-10, atol=1e-10)
    assert abs(float(est.mean() - exact)) < 4 * se  # a 4-sigma bound: fails by chance with p ~ 6e-5
    # Sample variance of n draws: relative spread ~ sqrt((kurtosis - 1) / n) < 10% here; allow 20%.
    assert abs(float(est.var()) / float(var) - 1) < 0.2
    # Averaging k probes divides the variance by k.
    k = 16
    _, est_k = divergence(lambda z: flow(t, z), x[:1000], probes=draw_probes(x[:1000], k, probe, gen))
    assert abs(float(est_k.var()) / (float(var) / k) - 1) < 0.25
    assert abs(float(est_k.mean() - exact)) < 4 * math.sqrt(float(var) / k / 1000)


def test_hutchinson_likelihood_is_unbiased_and_reproducible():
    sde, mix = sd.VESDE(), mixture(8)
    model = mix.model(sde)
    x0 = mix.sample(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = log_likelihood(model, x0, estimator="exact", rtol=1e-7, atol=1e-7).log_likelihood
    x = x0.expand(64, -1).clone()
    kw = dict(estimator="hutchinson", n_probes=2, rtol=1e-7, atol=1e-7)
    res = log_likelihood(model, x, generator=torch.Generator().manual_seed(0), **kw)
    est = res.log_likelihood
    se = float(est.std()) / math.sqrt(len(est))
    assert res.n_probes == 2 and float(est.std()) > 0
    assert abs(float(est.mean() - exact)) < 4 * se + 1e-4  # 4 sigma plus the solver's own error
    again = log_likelihood(model, x, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(again.log_likelihood, est)


def test_likelihood_is_differentiable_through_torchdiffeq():
    # d/dx log p_{t_min}(x) is the exact score at t_min.
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    x = mix.sample(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64).requires_grad_(True)
    res = log_likelihood(mix.model(sde), x, rtol=1e-7, atol=1e-7, differentiable=True,
                         prior_log_prob=exact_prior(mix, sde))
    (grad,) = torch.autograd.grad(res.log_likelihood.sum(), x)
    torch.testing.assert_close(grad, mix.score(x.detach(), sde.t_min, sde), rtol=1e-4, atol=1e-4)


def test_bits_per_dim_and_dequantisation():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    gen = torch.Generator().manual_seed(0)
    width = 1 / 64
    x = torch.round(mix.sample(4, generator=gen, dtype=torch.float64) / width) * width  # on the lattice
    model = mix.model(sde)
    res = log_likelihood(model, x, bin_width=width, generator=gen, rtol=1e-7, atol=1e-7,
                         prior_log_prob=exact_prior(mix, sde))
    assert res.dequantized and ((res.points - x) >= 0).all() and ((res.points - x) < width).all()
    exact = mix.log_prob_t(res.points, sde.t_min, sde)
    expected_bpd = -(exact + 2 * math.log(width)) / (2 * math.log(2))
    torch.testing.assert_close(res.bits_per_dim(), expected_bpd, rtol=0, atol=1e-3)
    # Continuous data: plain -log p / (D log 2).
    cont = log_likelihood(model, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cont.bits_per_dim(), -cont.log_likelihood / (2 * math.log(2)))
    # Discrete data evaluated at the lattice points: no bits per dimension.
    raw = log_likelihood(model, x, bin_width=width, dequantize=False, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dequantis"):
        raw.bits_per_dim()
    with pytest.raises(ValueError, match="bits_per_dim"):
        bits_per_dim(raw.log_likelihood, 2, bin_width=width, dequantized=False)


def test_float32_inputs_keep_their_dtype():
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    x = mix.sample(4, generator=torch.Generator().manual_seed(0))
    res = log_likelihood(mix.model(sde), x, rtol=1e-4, atol=1e-4)
    exact = mix.log_prob_t(x.double(), sde.t_min, sde)
    assert res.log_likelihood.dtype == torch.float32 and res.latent.dtype == torch.float32
    assert (res.log_likelihood.double() - exact).abs().max() < 0.05  # the prior mismatch (~5e-3) plus float32


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_probes=0), "n_probes"),
    (dict(n_probes=1.5), "n_probes"),
    (dict(estimator="jacobian"), "estimator"),
    (dict(probe="uniform", estimator="hutchinson"), "probe"),
    (dict(backend="jax"), "backend"),
    (dict(backend="scipy", differentiable=True), "differentiable"),
    (dict(t_min=0.5, T=0.2), "t_min"),
    (dict(rtol=-1), "rtol"),
    (dict(bin_width=0.0), "bin_width"),
])
def test_bad_options_raise(kwargs, match):
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        log_likelihood(mix.model(sde), x, **kwargs)


@pytest.mark.parametrize("x", [torch.zeros(2), torch.zeros(2, 3, dtype=torch.float64),
                               torch.tensor([[0.0, float("nan")]]), torch.zeros(2, 2, dtype=torch.long),
                               [[0.0, 0.0]]])
def test_bad_points_raise(x):
    sde, mix = sd.VPSDE(), toy.gaussian_mixture_2d()
    with pytest.raises(ValueError, match="x"):
        log_likelihood(mix.model(sde), x)


# ----- the command line -----------------------------------------------------------------------
def test_nll_command_matches_the_exact_density(tmp_path, capsys):
    from scoresde.cli import main

    csv = tmp_path / "nll.csv"
    assert main(["nll", "--data", "gaussian_mixture_2d", "--n", "8", "--exact-prior", "--bpd", "--rtol", "1e-7",
                 "--atol", "1e-7", "--out", str(csv)]) == 0
    assert "NFE" in capsys.readouterr().out
    lines = csv.read_text().splitlines()
    assert lines[0] == "nll,bpd,exact_nll" and len(lines) == 9
    for row in lines[1:]:
        nll, bpd, exact = (float(v) for v in row.split(","))
        assert abs(nll - exact) < 1e-3 and abs(bpd - nll / (2 * math.log(2))) < 1e-9


def test_nll_command_on_integer_points_and_bad_input(tmp_path, capsys):
    from scoresde.cli import main

    pts = tmp_path / "p.pt"
    torch.save(torch.randint(-2, 3, (4, 2)), pts)
    assert main(["nll", "--data", "gaussian_mixture_2d", "--points", str(pts), "--bpd"]) == 0
    assert "(dequantised)" in capsys.readouterr().out
    assert main(["nll", "--data", "gaussian_mixture_2d", "--points", str(pts), "--bpd", "--no-dequantize"]) == 2
    assert "--bpd" in capsys.readouterr().err
    assert main(["nll", "--data", "checkerboard"]) == 2
    assert main(["nll", "--n-probes", "0", "--estimator", "hutchinson", "--n", "2"]) == 2
    assert "n_probes" in capsys.readouterr().err
    assert main(["nll", "--points", str(tmp_path / "missing.pt")]) == 2


def test_nll_command_on_a_trained_run(tmp_path, capsys):
    from scoresde.cli import main
    from scoresde.config import TrainConfig
    from scoresde.training import Trainer

    cfg = TrainConfig(data="gaussian_mixture_2d", steps=3, batch_size=32, width=16, depth=1, emb_dim=8, ckpt_every=3,
                      warmup=1, progress=False, tensorboard=False)
    Trainer(cfg, out=tmp_path).train()
    assert main(["nll", "--ckpt", str(tmp_path), "--data", "gaussian_mixture_2d", "--n", "4", "--float32"]) == 0
    out = capsys.readouterr().out
    assert "trained run" in out and "exact NLL" in out


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_image_shaped_points(estimator):
    # N(0, s^2 I) on (B, 1, 2, 2): score -x / (alpha^2 s^2 + sigma^2), log p_t Gaussian in closed form.
    sde, s2 = sd.VPSDE(), 0.5

    def var(t):
        a, s = sde.alpha_sigma(t)
        return a**2 * s2 + s**2

    def log_p(z, t):
        v = var(torch.as_tensor(t, dtype=z.dtype))
        return -0.5 * (z.flatten(1).pow(2).sum(1) / v + z[0].numel() * torch.log(2 * math.pi * v))

    model = sd.ScoreModel(lambda x, t: -x / var(t).reshape(-1, 1, 1, 1), sde, "score")
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(model, x, estimator=estimator, n_probes=2, generator=torch.Generator().manual_seed(1),
                         rtol=1e-8, atol=1e-8, prior_log_prob=lambda z: log_p(z, sde.T))
    # The Jacobian is a multiple of I, so eps^T J eps = tr J exactly for Rademacher probes: both are exact.
    torch.testing.assert_close(res.log_likelihood, log_p(x, sde.t_min), rtol=0, atol=1e-5)
    assert res.latent.shape == x.shape and res.dim == 4
