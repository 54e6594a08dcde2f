"""ScoreModel: every parameterisation round-trips to the same score, and every call is counted."""
import pytest
import torch

import scoresde as sd
from scoresde import toy


def exact_views(mix, sde, x, t):
    """score, eps, x0, v and velocity of the exact mixture at (x, t), from first principles."""
    alpha, sigma = (v[:, None] for v in sde.alpha_sigma(t))
    score = mix.score(x, t, sde)
    eps = -sigma * score
    x0 = (x - sigma * eps) / alpha
    v = alpha * eps - sigma * x0
    dalpha = alpha * sde.f(t)[:, None]
    dsigma = sde.dsigma_dt(t)[:, None]
    return {"score": score, "eps": eps, "x0": x0, "v": v, "velocity": dalpha * x0 + dsigma * eps}


@pytest.mark.parametrize("param", sd.PARAMETERIZATIONS)
def test_every_parameterisation_gives_every_view(any_sde, param):
    mix = toy.gaussian_mixture_2d()
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(16, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 16, dtype=torch.float64) * any_sde.T
    truth = exact_views(mix, any_sde, x, t)
    model = sd.ScoreModel(lambda x_, t_: exact_views(mix, any_sde, x_, t_)[param], any_sde, param)
    for view, expected in truth.items():
        torch.testing.assert_close(getattr(model, view)(x, t), expected, rtol=1e-9, atol=1e-9, msg=f"{param}->{view}")


def test_velocity_is_probability_flow_drift(any_sde):
    # For Gaussian paths E[alpha' x0 + sigma' eps | x_t] is the PF-ODE drift f x - g^2 s / 2.
    mix = toy.gaussian_mixture_2d()
    model = mix.model(any_sde)
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.4 * any_sde.T, dtype=torch.float64)
    drift = any_sde.probability_flow_drift(x, t, model.score(x, t))
    torch.testing.assert_close(model.velocity(x, t), drift, rtol=1e-9, atol=1e-9)


def test_exact_eps_model_gives_exact_score():
    sde = sd.VPSDE()
    mix = toy.mixture("eight_gaussians")
    eps_fn = lambda x, t: -sde.sigma(t)[:, None] * mix.score(x, t, sde)  # noqa: E731
    model = sd.ScoreModel(eps_fn, sde, "eps")
    x = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(model.score(x, 0.3), mix.score(x, 0.3, sde), rtol=1e-10, atol=1e-10)


def test_nfe_counts_every_call_and_resets():
    sde = sd.VPSDE()
    model = toy.mixture("eight_gaussians").model(sde)
    x = torch.randn(3, 2)
    model.score(x, 0.5), model.eps(x, 0.5), model.x0(x, 0.5), model.v(x, 0.5), model.predict(x, 0.5)
    assert model.nfe == 5
    assert model.reset_nfe() == 5 and model.nfe == 0


def test_scalar_time_is_broadcast_to_batch_with_x_dtype():
    seen = {}

    def fn(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    sd.ScoreModel(fn, sd.VPSDE(), "eps").eps(torch.zeros(4, 3, 2, 2), 0.25)
    assert seen["t"].shape == (4,) and seen["t"].dtype == torch.float32
    assert torch.all(seen["t"] == 0.25)


def test_discrete_time_input():
    sde = sd.DiscreteVPSDE()
    seen = {}

    def fn(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    sd.ScoreModel(fn, sde, "eps", time_input="discrete").eps(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.001, 1.0], dtype=torch.float64))
    torch.testing.assert_close(seen["t"], torch.tensor([0.0, 999.0], dtype=torch.float64))


def test_bad_input():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="parameterization: unknown 'noise'; allowed: .*eps"):
        sd.ScoreModel(lambda x, t: x, sde, "noise")
    with pytest.raises(ValueError, match="time_input"):
        sd.ScoreModel(lambda x, t: x, sd.VPSDE(), "eps", time_input="discrete")
    with pytest.raises(ValueError, match="fn"):
        sd.ScoreModel(3, sde)
    with pytest.raises(ValueError, match="output shape"):
        sd.ScoreModel(lambda x, t: x[:, :1], sde).eps(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="t"):
        sd.ScoreModel(lambda x, t: x, sde).eps(torch.zeros(2, 2), torch.zeros(3))


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_grid_lookup_gives_the_computed_conversions(any_sde, param):
    # inside model.grid(times) scalar-time conversions look alpha, sigma up; the values must be the
    # ones computed outside the block (to float64 rounding), and other times still work
    mix = toy.gaussian_mixture_2d()
    model = sd.ScoreModel(lambda x_, t_: exact_views(mix, any_sde, x_, t_)[param], any_sde, param)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    times = torch.linspace(any_sde.T, any_sde.t_min, 7, dtype=torch.float64)
    outside = [(model.x0(x, t), model.score(x, t)) for t in times.tolist()]
    with model.grid(times):
        assert len(model._table) == 7
        inside = [(model.x0(x, t), model.score(x, t)) for t in times.tolist()]
        off_grid = model.x0(x, 0.5 * any_sde.T)
    assert model._table == {}
    for (a0, a1), (b0, b1) in zip(outside, inside, strict=True):
        torch.testing.assert_close(b0, a0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b1, a1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(off_grid, model.x0(x, 0.5 * any_sde.T), rtol=0, atol=0)
