"""The time-conditioned MLP: interface, per-SDE output scaling, label conditioning."""
import pytest
import torch
from _mlp_output import randomise_output

import scoresde as sd
from scoresde.nets import NETS, ScoreMLP, build_net


@pytest.mark.parametrize("embedding", ["smooth", "fourier", "sinusoidal"])
@pytest.mark.parametrize("time_input", ["log_snr", "t"])
def test_shapes_dtypes_and_score_model(any_sde, embedding, time_input):
    torch.manual_seed(0)
    net = ScoreMLP(4, any_sde, "eps", width=32, depth=2, embedding=embedding, time_input=time_input).double()
    randomise_output(net)
    x = torch.randn(7, 2, 2, dtype=torch.float64)  # an event shape with prod = dim
    t = torch.linspace(any_sde.t_min, any_sde.T, 7, dtype=torch.float64)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()
    torch.testing.assert_close(net(x, t[3]), net(x, t[3].expand(7)))  # scalar t broadcasts
    model = sd.ScoreModel(net, any_sde, net.parameterization)
    assert model.score(x, t).shape == x.shape and model.nfe == 1


@pytest.mark.parametrize("param", ["score", "x0", "v", "velocity"])
def test_the_raw_output_is_the_target(param):
    # No re-expression inside the MLP: the same weights give the same raw output whatever the target,
    # so an x0 (or v, ...) network read through ScoreModel predicts a different eps than an eps network.
    sde = sd.VPSDE()
    torch.manual_seed(1)
    eps_net = randomise_output(ScoreMLP(2, sde, "eps", width=16, depth=1).double())
    other = ScoreMLP(2, sde, param, width=16, depth=1).double()
    other.load_state_dict(eps_net.state_dict())
    x = torch.randn(9, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 9, dtype=torch.float64)
    torch.testing.assert_close(other(x, t), eps_net(x, t), rtol=0, atol=0)
    gap = (sd.ScoreModel(other, sde, param).eps(x, t) - sd.ScoreModel(eps_net, sde, "eps").eps(x, t)).abs().max()
    assert gap > 1e-3


def test_zero_initial_output():
    # the output layer starts at zero: F = 0 for every input, whatever the target means
    net = ScoreMLP(3, sd.VPSDE(), "x0", width=8, depth=2)
    assert torch.equal(net(torch.randn(4, 3), torch.rand(4)), torch.zeros(4, 3))


def test_label_conditioning_and_null_label():
    sde = sd.VPSDE()
    torch.manual_seed(2)
    net = randomise_output(ScoreMLP(2, sde, "eps", width=16, depth=1, num_classes=3))
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
