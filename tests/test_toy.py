"""The exact Gaussian-mixture oracle and the 2D datasets."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy


def test_score_is_autograd_of_log_prob_t(any_sde):
    mix = toy.gaussian_mixture_2d()
    gen = torch.Generator().manual_seed(1)
    x = (2 * torch.randn(32, 2, generator=gen, dtype=torch.float64)).requires_grad_(True)
    t = torch.rand(32, generator=gen, dtype=torch.float64) * (any_sde.T - any_sde.t_min) + any_sde.t_min
    (grad,) = torch.autograd.grad(mix.log_prob_t(x, t, any_sde).sum(), x)
    torch.testing.assert_close(mix.score(x.detach(), t, any_sde), grad, rtol=1e-10, atol=1e-10)


def test_component_score_is_autograd_of_component():
    mix, sde = toy.gaussian_mixture_2d(), sd.VESDE()
    x = torch.randn(8, 2, dtype=torch.float64, requires_grad=True)
    comp = mix.component(1)
    (grad,) = torch.autograd.grad(comp.log_prob_t(x, 0.2, sde).sum(), x)
    torch.testing.assert_close(mix.component_score(x.detach(), 0.2, sde, 1), grad, rtol=1e-10, atol=1e-10)


def test_log_prob_t_tends_to_data_log_density():
    # As t -> 0, alpha -> 1 and sigma -> 0: p_t -> p_0; the gap shrinks like sigma^2 ~ t.
    mix, sde = toy.gaussian_mixture_2d(), sd.VPSDE()
    x = mix.sample(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gaps = [float((mix.log_prob_t(x, t, sde) - mix.log_prob(x)).abs().max()) for t in (1e-3, 1e-5, 1e-7)]
    assert gaps[2] < 1e-4 and gaps[1] < gaps[0] / 50 and gaps[2] < gaps[1] / 50


def test_log_prob_matches_torch_distributions():
    mix = toy.gaussian_mixture_2d()
    x = torch.randn(20, 2, dtype=torch.float64)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(mix.weights),
        torch.distributions.MultivariateNormal(mix.means, mix.covs))
    torch.testing.assert_close(mix.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)


def test_marginal_at_T_matches_prior(any_sde):
    # KL(p_T || prior) by Monte Carlo: tiny because alpha(T) ~ 0 (or sigma(T) >> data scale for VE).
    mix = toy.mixture("eight_gaussians")
    gen = torch.Generator().manual_seed(0)
    x0 = mix.sample(20000, generator=gen, dtype=torch.float64)
    xT = any_sde.perturb(x0, any_sde.T, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    kl = float((mix.log_prob_t(xT, any_sde.T, any_sde) - any_sde.prior_log_prob(xT)).mean())
    assert abs(kl) < 5e-3


def test_sample_moments_and_posteriors():
    mix = toy.gaussian_mixture_2d()
    gen = torch.Generator().manual_seed(4)
    x, k = mix.sample(40000, generator=gen, dtype=torch.float64, return_labels=True)
    # std error of each mean coordinate <= 1.6/sqrt(40000) = 0.008
    torch.testing.assert_close(x.mean(0), mix.mean(), atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), mix.covariance(), atol=0.06, rtol=0)
    # at small t the posterior recovers the generating component most of the time
    post = mix.posterior(x[:2000], 1e-3, sd.VPSDE())
    torch.testing.assert_close(post.sum(1), torch.ones(2000, dtype=torch.float64))
    assert float((post.argmax(1) == k[:2000]).double().mean()) > 0.9


def test_marginal_moments_match_perturbed_samples():
    mix, sde = toy.gaussian_mixture_2d(), sd.SubVPSDE()
    gen = torch.Generator().manual_seed(5)
    x0 = mix.sample(40000, generator=gen, dtype=torch.float64)
    xt = sde.perturb(x0, 0.3, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    mean, cov = mix.marginal_moments(0.3, sde)
    torch.testing.assert_close(xt.mean(0), mean, atol=0.04, rtol=0)
    torch.testing.assert_close(torch.cov(xt.T), cov, atol=0.06, rtol=0)


def test_float32_is_stable():
    mix, sde = toy.mixture("twenty_five_gaussians"), sd.VPSDE()
    x = torch.tensor([[0.1, -0.2], [30.0, -40.0], [1e3, 1e3]])
    for t in (1e-3, 0.5, 1.0):
        s32 = mix.score(x, t, sde)
        s64 = mix.score(x.double(), t, sde)
        assert torch.isfinite(s32).all() and torch.isfinite(mix.log_prob_t(x, t, sde)).all()
        torch.testing.assert_close(s32.double(), s64, rtol=1e-4, atol=1e-3 * float(s64.abs().max()))


def test_oracle_model_runs_a_sampler():
    sde = sd.VPSDE()
    res = sd.sample(toy.mixture("eight_gaussians").model(sde), sde, "ddim", 30, shape=(500, 2),
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    radius = res.samples.norm(dim=1)
    assert float((radius - 2).abs().median()) < 0.15  # samples land on the ring of means


def test_anisotropic_mixture_is_reproducible_and_valid():
    a, b = toy.anisotropic_mixture(16, seed=3), toy.anisotropic_mixture(16, seed=3)
    assert a.dim == 16 and torch.equal(a.means, b.means)
    evals = torch.linalg.eigvalsh(a.covs)
    assert evals.min() > 0.009 and evals.max() < 1.01


@pytest.mark.parametrize("name", toy.available())
def test_datasets(name):
    a = toy.sample(name, 500, torch.Generator().manual_seed(0))
    b = toy.sample(name, 500, torch.Generator().manual_seed(0))
    c = toy.sample(name, 500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 0.3 < float(a.std()) < 5  # a spread of a few units


def test_mixture_datasets_follow_their_mixture():
    x = toy.eight_gaussians(4000, torch.Generator().manual_seed(0)).double()
    mix = toy.mixture("eight_gaussians")
    # the empirical mean log-density is close to minus the entropy estimate from fresh samples
    ref = mix.sample(4000, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert float(mix.log_prob(x).mean()) == pytest.approx(float(mix.log_prob(ref).mean()), abs=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(weights=[0.5, 0.6], means=[[0.0], [1.0]], covs=[1.0, 1.0]), "weights"),
    (dict(weights=[0.5, 0.5], means=[[0.0], [1.0]], covs=[1.0, -1.0]), "positive definite"),
    (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
    (dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
    (dict(weights=[0.5, 0.5], means=[[0.0, 1.0]], covs=[1.0]), "weights"),
    (dict(weights=[1.0], means=[0.0, 1.0], covs=[1.0]), "means"),
])
def test_bad_mixtures(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.GaussianMixture(**kwargs)


def test_bad_points_and_names():
    mix = toy.gaussian_mixture_2d()
    with pytest.raises(ValueError, match="x"):
        mix.score(torch.zeros(3, 5), 0.5, sd.VPSDE())
    with pytest.raises(ValueError, match="eight_gaussians"):
        toy.sample("nine_gaussians", 10)
    with pytest.raises(ValueError, match="n"):
        toy.sample("rings", 0)
    with pytest.raises(ValueError, match="k"):
        mix.component_score(torch.zeros(1, 2), 0.5, sd.VPSDE(), 7)
    assert math.isclose(float(mix.weights.sum()), 1.0)
