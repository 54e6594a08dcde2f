"""ScoreModel: every parameterisation round-trips to the same score, and every call is counted."""
import numpy as np
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
    with pytest.raises(TypeError, match="fn"):  # one policy: a wrong type is a TypeError
        sd.ScoreModel(3, sde)
    with pytest.raises(ValueError, match="output shape"):
        sd.ScoreModel(lambda x, t: x[:, :1], sde).eps(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="t"):
        sd.ScoreModel(lambda x, t: x, sde).eps(torch.zeros(2, 2), torch.zeros(3))


@pytest.mark.parametrize("param", ["eps", "x0", "v", "score"])
def test_a_0d_tensor_time_converts_as_a_number(any_sde, param):
    # samplers pass schedule.t[i], a 0-d float64 tensor; the views must equal those at the float time
    mix = toy.gaussian_mixture_2d()
    model = sd.ScoreModel(lambda x_, t_: exact_views(mix, any_sde, x_, t_)[param], any_sde, param)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for t in torch.linspace(any_sde.T, any_sde.t_min, 5, dtype=torch.float64):
        torch.testing.assert_close(model.x0(x, t), model.x0(x, float(t)), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(model.score(x, t), model.score(x, float(t)), rtol=1e-13, atol=1e-13)


def test_time_conventions():
    assert sd.models.TIME_CONVENTIONS == ("continuous", "discrete")
    sde = sd.VPSDE()
    seen = {}

    def fn(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    # score_sde's VP networks take 999 t; a callable gets the (B,) continuous time in x's dtype
    model = sd.ScoreModel(fn, sde, "eps", time_input=lambda t: 999 * t)
    model.eps(torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.5, 0.25, 1e-3], dtype=torch.float64))
    torch.testing.assert_close(seen["t"], torch.tensor([499.5, 249.75, 0.999], dtype=torch.float64))
    # VE networks take sigma(t)
    ve = sd.VESDE()
    sd.ScoreModel(fn, ve, "score", time_input=ve.sigma).score(torch.zeros(2, 2, dtype=torch.float64), 0.5)
    torch.testing.assert_close(seen["t"], ve.sigma(torch.full((2,), 0.5, dtype=torch.float64)))
    # integer snapping on a discrete schedule: round(N t - 1)
    dsde = sd.DiscreteVPSDE()
    snap = sd.ScoreModel(fn, dsde, "eps", time_input=lambda t: (dsde.discrete_time(t)).round())
    snap.eps(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([0.5004, 0.0016], dtype=torch.float64))
    assert seen["t"].tolist() == [499.0, 1.0]
    with pytest.raises(ValueError, match="time_input: unknown 'sigma'.*continuous, discrete or a callable"):
        sd.ScoreModel(fn, sde, "eps", time_input="sigma")


class _Output:
    """Like diffusers' UNet2DOutput: the tensor is in .sample."""

    def __init__(self, sample):
        self.sample = sample


@pytest.mark.parametrize("returned, match", [
    (None, "fn: returned builtins.NoneType; expected a torch.Tensor"),
    (np.zeros((2, 2)), "fn: returned numpy.ndarray"),
    (_Output(torch.zeros(2, 2)), r"_Output with a .sample attribute.*return its .sample.*from_diffusers"),
])
def test_a_network_that_returns_a_non_tensor_is_named(returned, match):
    model = sd.ScoreModel(lambda x, t: returned, sd.VPSDE())
    with pytest.raises(TypeError, match=match):
        model.eps(torch.zeros(2, 2), 0.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_output_names_the_model_and_the_time(bad):
    def my_net(x, t):
        out = torch.zeros_like(x)
        out[1, 0] = bad
        return out

    model = sd.ScoreModel(my_net, sd.VPSDE())
    with pytest.raises(FloatingPointError, match=r"the model .*my_net returned NaN/inf at t = 0.25"):
        model.eps(torch.zeros(3, 2), 0.25)
    with pytest.raises(sd.models.NonFiniteModelOutput, match=r"t = 0.1 \.\. 0.3 \(per sample\)"):
        model.eps(torch.zeros(3, 2), torch.tensor([0.1, 0.2, 0.3]))
    assert model.nfe == 2


def test_data_of_another_dtype_than_the_network_is_named_before_the_call():
    # float64 points into a float32 network (what load_model gives) used to end in "mat1 and mat2 must have
    # the same dtype" inside the first Linear; the wrapper names it, before counting a call
    from scoresde.nets import ScoreMLP

    sde = sd.VPSDE()
    model = sd.ScoreModel(ScoreMLP(2, sde, "eps", width=16, depth=1), sde, "eps")
    with pytest.raises(TypeError, match=r"x: dtype torch.float64 differs from the network's weights \(torch.float32\)"):
        model.eps(torch.zeros(3, 2, dtype=torch.float64), 0.5)
    assert model.nfe == 0
    assert model.eps(torch.zeros(3, 2), 0.5).dtype == torch.float32  # the matching dtype runs
