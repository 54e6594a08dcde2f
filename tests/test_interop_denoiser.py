"""The k-diffusion / EDM denoiser convention and score_sde's time labels, on the exact mixture oracle.

EDM's exact denoiser of a Gaussian mixture is written here in its own frame: the SDE ``_EDMFrame``
has alpha = 1 and sigma(t) = t, so ``D(y, s) = y + s^2 score(y, s)`` with the mixture's closed-form
score, independently of scoresde's VE or VP SDEs. EDM's Algorithms 1 and 2 (Karras et al. 2022) are
written out below in their notation; scoresde's ``heun`` on ``from_denoiser(D)`` must reproduce them
on the VE SDE, and on the VP SDE through the change of variables y = x / alpha, s = sigma / alpha.
All in float64: agreement is to rounding (1e-10 relative; t(s) is a closed-form inversion).
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.interop import from_denoiser, score_sde_model, score_sde_time_input, to_denoiser
from scoresde.sde import SDE

RTOL = 1e-10


class _EDMFrame(SDE):
    """x_s = x0 + s eps: alpha = 1, sigma(t) = t (EDM's own parameterisation of the noise level)."""

    T = 80.0
    t_min = 0.002

    def log_alpha(self, t):
        return torch.zeros_like(torch.as_tensor(t))

    def sigma(self, t):
        return torch.as_tensor(t)


@pytest.fixture(scope="module")
def mix():
    return toy.gaussian_mixture_2d()


@pytest.fixture(scope="module")
def D(mix):
    frame = _EDMFrame()

    def denoise(y, s):
        s = s.to(torch.float64)
        return y + (s**2)[:, None] * mix.score(y, s, frame)
    return denoise


def karras_sigmas(n, s_min=0.002, s_max=80.0, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    return (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho


def edm_sampler(D, x0, sigmas, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0, generator=None):
    """EDM Algorithm 2 (Algorithm 1 when S_churn = 0): t_N = 0 appended, Euler on the last step."""
    t = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    n = len(sigmas)
    x = x0 * t[0]
    for i in range(n):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= float(t[i]) <= S_tmax else 0.0
        t_hat = t[i] * (1 + gamma)
        if gamma > 0:
            eps = S_noise * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = x + (t_hat**2 - t[i] ** 2).sqrt() * eps
        d = (x - D(x, t_hat.expand(x.shape[0]))) / t_hat
        x_next = x + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d2 = (x_next - D(x_next, t[i + 1].expand(x.shape[0]))) / t[i + 1]
            x_next = x + (t[i + 1] - t_hat) * (d + d2) / 2
        x = x_next
    return x


def our_heun(D, sde, z, sigmas, **churn):
    """scoresde's heun on from_denoiser(D): the grid where sigma/alpha = EDM's sigmas, Heun on every step
    (EDM's last step, to sigma = 0, is the Euler step that final_denoise takes)."""
    model = from_denoiser(D, sde)
    times = sde.t_of_lam(-torch.log(sigmas))
    x_T = z * sigmas[0] * sde.alpha(times[0])  # x = alpha y
    return sd.sample(model, sde, "heun", grid=times, x_T=x_T, final_denoise=True, euler_last=False,
                     T=float(times[0]), **churn)


def sdes():
    return [sd.VESDE(sigma_min=0.002, sigma_max=80.0), sd.VPSDE(beta_min=0.1, beta_max=20.0, t_min=1e-5)]


@pytest.mark.parametrize("sde", sdes(), ids=["ve", "vp"])
def test_heun_is_edm_algorithm_1(D, sde):
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s_max = min(80.0, float(torch.exp(-sde.lam(torch.tensor(sde.T, dtype=torch.float64)))))
    sigmas = karras_sigmas(12, s_max=s_max)
    ref = edm_sampler(D, z, sigmas)
    res = our_heun(D, sde, z, sigmas)
    assert float((res.samples - ref).norm() / ref.norm()) < RTOL
    assert res.nfe == 2 * (len(sigmas) - 1) + 1  # EDM's 2N - 1 calls


@pytest.mark.parametrize("sde", sdes(), ids=["ve", "vp"])
def test_heun_with_churn_is_edm_algorithm_2(D, sde):
    """Churn on the steps whose level lies in [S_tmin, S_tmax], with the noise drawn in the same order.

    S_churn is large enough that gamma is capped at sqrt(2) - 1 on both sides (EDM divides by its N
    steps, scoresde by the N - 1 grid steps before the final denoising); the window excludes the
    first level (scoresde caps the raised level at the SDE's largest) and the last (EDM would churn
    before its Euler step to 0, scoresde's final denoising does not)."""
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s_max = min(80.0, float(torch.exp(-sde.lam(torch.tensor(sde.T, dtype=torch.float64)))))
    sigmas = karras_sigmas(12, s_max=s_max)
    churn = dict(S_churn=40.0, S_tmin=float(sigmas[-2]) * 0.99, S_tmax=float(sigmas[1]) * 1.01, S_noise=1.003)
    ref = edm_sampler(D, z, sigmas, generator=torch.Generator().manual_seed(7), **churn)
    res = our_heun(D, sde, z, sigmas, generator=torch.Generator().manual_seed(7), **churn)
    plain = edm_sampler(D, z, sigmas)
    assert float((res.samples - ref).norm() / ref.norm()) < RTOL
    assert float((plain - ref).norm() / ref.norm()) > 1e-3  # the churn did something


@pytest.mark.parametrize("sde", [sd.VESDE(), sd.VPSDE(), sd.SubVPSDE(), sd.CosineVPSDE()], ids=repr)
def test_round_trip(mix, sde):
    """to_denoiser then from_denoiser gives the model back, and from_denoiser's x0 is D at (x/alpha, sigma/alpha)."""
    model = mix.model(sde)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    t = torch.rand(32, generator=g, dtype=torch.float64) * (sde.T - sde.t_min) * 0.98 + sde.t_min * 1.01
    back = from_denoiser(to_denoiser(model), sde)
    torch.testing.assert_close(back.x0(x, t), model.x0(x, t), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(back.eps(x, t), model.eps(x, t), rtol=1e-8, atol=1e-10)
    D = to_denoiser(model)
    alpha, sigma = sde.alpha_sigma(t)
    y = x / alpha[:, None]
    torch.testing.assert_close(D(y, sigma / alpha), model.x0(x, t), rtol=1e-9, atol=1e-11)
    # the other way round, from a denoiser: D -> ScoreModel -> D
    D2 = to_denoiser(from_denoiser(D, sde))
    torch.testing.assert_close(D2(y, sigma / alpha), D(y, sigma / alpha), rtol=1e-9, atol=1e-11)


def test_to_denoiser_is_the_exact_denoiser(mix, D):
    """On the VE SDE, to_denoiser(oracle) is EDM's exact denoiser written in its own frame."""
    sde = sd.VESDE(sigma_min=0.002, sigma_max=80.0)
    y = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    s = torch.logspace(-2, 1.5, 16, dtype=torch.float64)
    torch.testing.assert_close(to_denoiser(mix.model(sde))(y, s), D(y, s), rtol=1e-9, atol=1e-11)


def test_denoiser_bad_input(mix):
    sde = sd.VESDE()
    D = to_denoiser(mix.model(sde))
    y = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sigma: noise levels must lie in the SDE's range \[0.01"):
        D(y, 100.0)
    with pytest.raises(ValueError, match=r"sigma: expected a number or a \(2,\) tensor"):
        D(y, torch.ones(3))
    with pytest.raises(TypeError, match="D: expected a callable"):
        from_denoiser(3)
    with pytest.raises(TypeError, match="model: expected a scoresde.ScoreModel"):
        to_denoiser(lambda x, s: x)
    bad = from_denoiser(lambda y, s: (y,), sde)
    with pytest.raises(TypeError, match="D: returned tuple"):
        bad.x0(y, 0.5)


# ----- score_sde -------------------------------------------------------------------------------
def test_score_sde_labels():
    """score_sde's labels: 999 t for VP and sub-VP, sigma_min (sigma_max / sigma_min)^t for VE."""
    t = torch.tensor([1e-3, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(score_sde_time_input(sd.VPSDE())(t), 999 * t, rtol=0, atol=0)
    torch.testing.assert_close(score_sde_time_input(sd.SubVPSDE())(t), 999 * t, rtol=0, atol=0)
    torch.testing.assert_close(score_sde_time_input(sd.VESDE())(t), 0.01 * (50 / 0.01) ** t, rtol=1e-14, atol=0)
    with pytest.raises(TypeError, match="sde: score_sde's conventions cover VPSDE, SubVPSDE and VESDE"):
        score_sde_time_input(sd.FlowMatchingSDE())


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()], ids=repr)
def test_score_sde_network_on_the_oracle(mix, sde):
    """A score_sde-style network (the oracle behind score_sde's labels and outputs) wrapped by
    score_sde_model is the oracle: eps for VP / sub-VP (score = -net / sigma), the score for VE."""
    oracle = mix.model(sde)
    is_ve = isinstance(sde, sd.VESDE)

    def net(x, label):
        # invert score_sde's label by its closed form, then answer in score_sde's output convention
        t = torch.log(label / 0.01) / math.log(50 / 0.01) if is_ve else label / 999
        return oracle.score(x, t) if is_ve else oracle.eps(x, t)

    model = score_sde_model(net, sde)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    torch.testing.assert_close(model.score(x, t), oracle.score(x, t), rtol=1e-10, atol=1e-12)
    a = sd.sample(model, sde, "ddim", 20, x_T=x).samples
    b = sd.sample(oracle, sde, "ddim", 20, x_T=x).samples
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
