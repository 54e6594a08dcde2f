"""The time-conditioned MLP: interface, per-SDE output scaling, label conditioning."""
import pytest
import torch

import scoresde as sd
from scoresde.nets import NETS, ScoreMLP, build_net
from scoresde.toy import GaussianMixture


def _randomise_output(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net.out.weight.copy_(torch.randn(net.out.weight.shape, generator=g))
        net.out.bias.copy_(torch.randn(net.out.bias.shape, generator=g))
    return net


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
@pytest.mark.parametrize("time_input", ["log_snr", "t"])
def test_shapes_dtypes_and_score_model(any_sde, embedding, time_input):
    torch.manual_seed(0)
    net = ScoreMLP(4, any_sde, "eps", width=32, depth=2, embedding=embedding, time_input=time_input).double()
    _randomise_output(net)
    x = torch.randn(7, 2, 2, dtype=torch.float64)  # an event shape with prod = dim
    t = torch.linspace(any_sde.t_min, any_sde.T, 7, dtype=torch.float64)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()
    torch.testing.assert_close(net(x, t[3]), net(x, t[3].expand(7)))  # scalar t broadcasts
    model = sd.ScoreModel(net, any_sde, net.parameterization)
    assert model.score(x, t).shape == x.shape and model.nfe == 1


@pytest.mark.parametrize("sde_name", ["vp", "ve", "flow", "subvp"])
@pytest.mark.parametrize("param", ["score", "x0", "v", "velocity"])
def test_every_parameterisation_reports_the_same_function(sde_name, param):
    # One preconditioned F; each parameterisation only changes how it is reported. Through the
    # ScoreModel conversions every one must give the eps network's prediction (float64 round trip).
    sde = sd.make_sde(sde_name)
    torch.manual_seed(1)
    eps_net = _randomise_output(ScoreMLP(2, sde, "eps", width=16, depth=1, sigma_data=0.8).double())
    other = ScoreMLP(2, sde, param, width=16, depth=1, sigma_data=0.8).double()
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
    net = ScoreMLP(2, sde, "x0", width=8, depth=1, sigma_data=1.0).double()
    with torch.no_grad():
        net.out.bias.fill_(1.0)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), sde.T, dtype=torch.float64)
    assert net(x, t).abs().max() <= x.abs().max() * 1e-3 + 1.0 + 1e-9


@pytest.mark.parametrize("sde_name", ["vp", "ve", "flow"])
def test_x0_net_starts_at_the_exact_denoiser_of_gaussian_data(sde_name):
    # With the zero-initialised output layer the x0 network is c_skip x: the exact posterior mean
    # E[x0 | x_t] when x0 ~ N(0, sigma_data^2 I), for every SDE (Tweedie: x0 = (x + sigma^2 s) / alpha).
    sde, sd2 = sd.make_sde(sde_name), 0.7**2
    net = ScoreMLP(2, sde, "x0", width=16, depth=1, sigma_data=0.7).double()
    gauss = GaussianMixture([1.0], [[0.0, 0.0]], sd2)
    x = 3 * torch.randn(11, 2, dtype=torch.float64)
    t = torch.linspace(sde.t_min, sde.T, 11, dtype=torch.float64)
    a, s = (v[:, None] for v in sde.alpha_sigma(t))
    tweedie = (x + s**2 * gauss.score(x, t, sde)) / a
    torch.testing.assert_close(net(x, t), tweedie, rtol=1e-10, atol=1e-10)


def test_label_conditioning_and_null_label():
    sde = sd.VPSDE()
    torch.manual_seed(2)
    net = _randomise_output(ScoreMLP(2, sde, "eps", width=16, depth=1, num_classes=3))
    assert net.null_label == 3 and net.label_embed.num_embeddings == 4
    x, t = torch.randn(6, 2), torch.full((6,), 0.3)
    null = torch.full((6,), 3, dtype=torch.long)
    torch.testing.assert_close(net(x, t), net(x, t, null))  # y=None means the null label
    y0, y1 = torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    assert (net(x, t, y0) - net(x, t, y1)).abs().max() > 1e-4
    # a label moves only the samples that carry it
    mixed = torch.tensor([0, 1, 0, 1, 0, 1])
    out = net(x, t, mixed)
    torch.testing.assert_close(out[::2], net(x, t, y0)[::2])


def test_build_net_and_bad_input():
    sde = sd.VPSDE()
    assert isinstance(build_net("mlp", dim=2, sde=sde), NETS["mlp"])
    with pytest.raises(ValueError, match="net: unknown"):
        build_net("unet9000", dim=2, sde=sde)
    with pytest.raises(ValueError, match="width"):
        ScoreMLP(2, sde, width=0)
    with pytest.raises(ValueError, match="parameterization"):
        ScoreMLP(2, sde, "noise")
    with pytest.raises(ValueError, match="embedding"):
        ScoreMLP(2, sde, embedding="wavelet")
    with pytest.raises(ValueError, match="dim"):
        ScoreMLP(2, sde, emb_dim=7)
    with pytest.raises(ValueError, match="y:"):
        ScoreMLP(2, sde)(torch.zeros(3, 2), torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x:"):
        ScoreMLP(2, sde)(torch.zeros(3, 3), torch.full((3,), 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_forward():
    net = ScoreMLP(2, sd.VPSDE(), num_classes=2).cuda()
    x = torch.randn(4, 2, device="cuda")
    assert net(x, torch.rand(4, device="cuda"), torch.zeros(4, dtype=torch.long, device="cuda")).device.type == "cuda"
