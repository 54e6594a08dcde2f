"""EDM preconditioning as a wrapper around any network: consistency, boundedness, the Wiener-filter start."""
import pytest
import torch
from _mlp_output import randomise_output
from torch import nn

import scoresde as sd
from scoresde.nets import ScoreMLP
from scoresde.nets.precondition import EDMPrecondition, precondition
from scoresde.toy import GaussianMixture


@pytest.mark.parametrize("sde_name", ["vp", "ve", "flow", "subvp"])
@pytest.mark.parametrize("param", ["score", "x0", "v", "velocity"])
def test_every_parameterisation_reports_the_same_function(sde_name, param):
    # One preconditioned F; under the wrapper each parameterisation only changes how it is reported.
    # Through the ScoreModel conversions every one must give the eps wrapper's prediction (float64 round trip).
    sde = sd.make_sde(sde_name)
    torch.manual_seed(1)
    inner = randomise_output(ScoreMLP(2, sde, "eps", width=16, depth=1).double())
    eps_net = EDMPrecondition(inner, sde, "eps", sigma_data=0.8)
    other = EDMPrecondition(ScoreMLP(2, sde, "eps", width=16, depth=1).double(), sde, param, sigma_data=0.8)
    other.load_state_dict(eps_net.state_dict())
    x = torch.randn(9, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95 * sde.T, 9, dtype=torch.float64)
    ref = sd.ScoreModel(eps_net, sde, "eps").eps(x, t)
    torch.testing.assert_close(sd.ScoreModel(other, sde, param).eps(x, t), ref, rtol=1e-9, atol=1e-9)
    if param == "score":
        torch.testing.assert_close(other(x, t) * sde.sigma(t)[:, None], -eps_net(x, t))


def test_preconditioned_outputs_stay_bounded_where_alpha_or_sigma_vanish():
    # |F| <= 1 must give |x0_hat| <= c_skip |x| + sigma_data: no 1/alpha near T (flow: alpha(T) = 1e-3)
    sde = sd.FlowMatchingSDE()
    inner = ScoreMLP(2, sde, "x0", width=8, depth=1).double()
    with torch.no_grad():
        inner.out.bias.fill_(1.0)
    net = EDMPrecondition(inner, sde, "x0", sigma_data=1.0)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), sde.T, dtype=torch.float64)
    assert net(x, t).abs().max() <= x.abs().max() * 1e-3 + 1.0 + 1e-9


@pytest.mark.parametrize("sde_name", ["vp", "ve", "flow"])
def test_x0_net_starts_at_the_exact_denoiser_of_gaussian_data(sde_name):
    # With the inner net's zero-initialised output the x0 wrapper is c_skip x: the exact posterior mean
    # E[x0 | x_t] when x0 ~ N(0, sigma_data^2 I), for every SDE (Tweedie: x0 = (x + sigma^2 s) / alpha).
    sde, sd2 = sd.make_sde(sde_name), 0.7**2
    net = EDMPrecondition(ScoreMLP(2, sde, "x0", width=16, depth=1).double(), sde, "x0", sigma_data=0.7)
    gauss = GaussianMixture([1.0], [[0.0, 0.0]], sd2)
    x = 3 * torch.randn(11, 2, dtype=torch.float64)
    t = torch.linspace(sde.t_min, sde.T, 11, dtype=torch.float64)
    a, s = (v[:, None] for v in sde.alpha_sigma(t))
    tweedie = (x + s**2 * gauss.score(x, t, sde)) / a
    torch.testing.assert_close(net(x, t), tweedie, rtol=1e-10, atol=1e-10)


class _Echo(nn.Module):
    """A stand-in network returning its (scaled) input and recording the label it was given."""

    null_label = 5

    def forward(self, x, t, y=None):
        self.seen = y
        return x


def test_any_network_can_be_wrapped_and_labels_pass_through():
    sde = sd.VPSDE()
    inner = _Echo()
    net = precondition(inner, "edm", sde=sde, parameterization="eps", sigma_data=0.5)
    assert net.null_label == 5 and precondition(inner, None, sde=sde, parameterization="eps", sigma_data=1.0) is inner
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    out = net(x, t, y)
    assert inner.seen is y
    # F = c_in x: eps_hat = (sigma c_in^2 + alpha sigma_d c_in^2) x
    a, s = sde.alpha_sigma(t[0])
    c_in = (a**2 * 0.25 + s**2) ** -0.5
    torch.testing.assert_close(out, (s + a * 0.5) * c_in**2 * x)


def test_bad_input():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="precondition: unknown 'karras'"):
        precondition(_Echo(), "karras", sde=sde, parameterization="eps", sigma_data=1.0)
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecondition(_Echo(), sde, "eps", sigma_data=0.0)
    with pytest.raises(ValueError, match="parameterization"):
        EDMPrecondition(_Echo(), sde, "noise")
    with pytest.raises(TypeError, match="net"):  # one policy: a wrong type is a TypeError
        EDMPrecondition(lambda x, t: x, sde)
