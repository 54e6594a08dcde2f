"""The interface every image network shares (U-Net and DiT, built by name through build_net)."""
import json

import pytest
import torch

import scoresde as sd
from scoresde.nets import NETS, DiT, UNet, build_net, shape_kwargs

#: tiny configurations: tens of thousands of parameters, a forward pass in milliseconds
TINY = {"unet": dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), norm_groups=4, emb_dim=16),
        "dit": dict(patch_size=2, hidden_size=32, depth=2, num_heads=2, emb_dim=16)}
IMAGE_NETS = sorted(TINY)


def tiny(name, in_channels=1, image_size=8, sde=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_net(name, in_channels=in_channels, sde=sde or sd.VPSDE(), image_size=image_size,
                     **{**TINY[name], **kwargs})


def perturb_zero_init(net, seed=1, scale=0.1):
    """Give every all-zero parameter (the zero-initialised layers and biases) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def images(B, C, size, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, size, size, generator=g, dtype=dtype), torch.rand(B, generator=g, dtype=dtype) * 0.9 + 0.05


def test_registered_and_built_by_name():
    assert NETS["unet"] is UNet and NETS["dit"] is DiT
    assert isinstance(tiny("unet"), UNet) and isinstance(tiny("dit"), DiT)
    with pytest.raises(ValueError, match=r"net: unknown architecture 'resnet'; known: mlp, unet, dit"):
        build_net("resnet")


def test_shape_kwargs_from_the_event_shape():
    assert shape_kwargs("mlp", (1, 8, 8)) == {"dim": 64}
    assert shape_kwargs("unet", (3, 32, 32)) == {"in_channels": 3, "image_size": 32}
    net = build_net("dit", sde=sd.VPSDE(), **shape_kwargs("dit", (1, 8, 8)), **TINY["dit"])
    assert net(*images(2, 1, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"event_shape: net 'unet' takes square images \(C, I, I\), got \(1, 8, 6\)"):
        shape_kwargs("unet", (1, 8, 6))
    with pytest.raises(ValueError, match="net: unknown architecture 'cnn'"):
        shape_kwargs("cnn", (1, 8, 8))


@pytest.mark.parametrize("name", IMAGE_NETS)
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_output_shaped_like_the_input_and_exactly_zero_at_initialisation(name, in_channels, size):
    net = tiny(name, in_channels, size, attn_resolutions=(size // 2,)) if name == "unet" else tiny(name, in_channels, size)
    x, t = images(3, in_channels, size)
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, torch.zeros_like(x))  # zero-initialised output layers
    out = perturb_zero_init(net)(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_time_input_scalar_broadcasts_and_conditions_the_output(name):
    net = perturb_zero_init(tiny(name))
    x, t = images(4, 1, 8)
    torch.testing.assert_close(net(x, t[1]), net(x, t[1].expand(4)), rtol=0, atol=0)
    assert not torch.allclose(net(x, t), net(x, t.flip(0)))  # the time input matters
    with pytest.raises(ValueError, match=r"t_input: expected a scalar or shape \(4,\) to match the batch of x, got \(3,\)"):
        net(x, t[:3])


@pytest.mark.parametrize("name", IMAGE_NETS)
@pytest.mark.parametrize("time_input", ["log_snr", "t"])
@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_noise_level_embedding_reads_lambda_or_t(name, time_input, embedding):
    # the embedding of t must equal the features of lambda(t) (or t / T) pushed through its MLP
    sde = sd.VESDE()
    net = tiny(name, sde=sde, time_input=time_input, embedding=embedding).double()
    t = torch.linspace(sde.t_min, sde.T, 5, dtype=torch.float64)
    tau = sde.lam(t) if time_input == "log_snr" else t / sde.T
    torch.testing.assert_close(net.embed(t, None), net.embed.mlp(net.embed.features(tau)), rtol=0, atol=0)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_float64_agrees_with_float32(name):
    net = perturb_zero_init(tiny(name))
    x, t = images(4, 1, 8)
    out32 = net(x, t)
    net64 = net.double()
    out64 = net64(x.double(), t.double())
    assert out64.dtype == torch.float64
    # the same function in two precisions: float32 round-off through a few layers, ~1e-6 relative
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_deterministic_given_the_seed(name):
    a, b, c = tiny(name, seed=3), tiny(name, seed=3), tiny(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    perturb_zero_init(a), perturb_zero_init(b)
    x, t = images(2, 1, 8)
    assert torch.equal(a(x, t), b(x, t)) and torch.equal(a(x, t), a(x, t))


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_gradients_reach_every_parameter(name):
    net = perturb_zero_init(tiny(name, num_classes=3))
    x, t = images(4, 1, 8)
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null label: every row of the table is used
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    (net(x, t, y) * w).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def _dsm_batch(seed=0):
    sde = sd.VPSDE()
    x0, t = images(8, 1, 8, seed=seed)
    x0 = x0.clamp(-1, 1)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1))
    alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in sde.alpha_sigma(t))
    return sde, alpha * x0 + sigma * eps, t, eps


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_a_tiny_net_overfits_one_batch(name):
    # the eps target of a fixed noisy batch: the zero-initialised net starts at loss E[eps^2] ~ 1
    sde, x_t, t, eps = _dsm_batch()
    net = tiny(name, sde=sde)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = ((net(x_t, t) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(eps.pow(2).mean().item())  # exactly the zero output's loss
    assert losses[-1] < losses[0] / 20


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_labels_condition_the_output_and_null_label_is_the_default(name):
    sde, x_t, t, eps = _dsm_batch(seed=2)
    net = tiny(name, sde=sde, num_classes=3)
    assert net.null_label == 3
    y = torch.tensor([0, 1, 2, 3] * 2)
    target = eps + y.reshape(-1, 1, 1, 1).float()  # a label-dependent target
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(5):
        loss = ((net(x_t, t, y) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = [net(x_t, t, torch.full((8,), k)) for k in range(4)]
    assert all(not torch.allclose(out[i], out[j]) for i in range(4) for j in range(i))
    assert torch.equal(net(x_t, t), out[3])  # y=None is the null label
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 3\] \(3 = null_label\), got values in \[0, 4\]"):
        net(x_t, t, torch.tensor([0, 1, 2, 3, 4, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"y: expected a \(8,\) integer tensor of labels"):
        net(x_t, t, torch.zeros(8))
    unconditional = tiny(name)
    assert unconditional.null_label is None
    with pytest.raises(ValueError, match="y: this network is unconditional"):
        unconditional(x_t, t, y)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_wrong_image_shape_names_the_expected_shape(name):
    net = tiny(name, in_channels=1, image_size=8)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        net(torch.zeros(2, 3, 8, 8), torch.ones(2))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 1, 8, 8\), got \(2, 64\)"):
        net(torch.zeros(2, 64), torch.ones(2))


@pytest.mark.parametrize("name", IMAGE_NETS)
@pytest.mark.parametrize("option, value, message", [
    ("sde", "vp", "sde: expected a scoresde.SDE, got str"),
    ("parameterization", "noise", "parameterization: unknown 'noise'; allowed: score, eps, x0, v, velocity"),
    ("time_input", "sigma", "time_input: unknown 'sigma'; allowed: log_snr, t"),
    ("embedding", "learned", "embedding: unknown 'learned'; allowed: fourier, sinusoidal"),
    ("embed_scale", -1.0, "embed_scale: expected a finite positive number or None (the default scale), got -1.0"),
    ("num_classes", 0, "num_classes: expected a positive integer, got 0"),
    ("in_channels", 0, "in_channels: expected a positive integer, got 0"),
    ("image_size", 8.0, "image_size: expected a positive integer, got 8.0"),
])
def test_bad_common_options_are_named(name, option, value, message):
    kwargs = {"in_channels": 1, "sde": sd.VPSDE(), "image_size": 8, **TINY[name], option: value}
    exc = TypeError if option == "sde" else ValueError  # one policy: a wrong type is a TypeError
    with pytest.raises(exc, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_net(name, **kwargs)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_runs_behind_score_model_and_a_sampler(name):
    sde = sd.VPSDE()
    net = perturb_zero_init(tiny(name, sde=sde, parameterization="v"))
    model = sd.ScoreModel(net, sde, net.parameterization)
    res = sd.sample(model, sde, "ddim", 3, shape=(2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    assert res.samples.shape == (2, 1, 8, 8) and res.nfe == 3 and torch.isfinite(res.samples).all()


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_rebuilt_from_json_kwargs_and_the_state_dict(name):
    # what a checkpoint stores: the registered name, JSON keyword arguments, the state dict
    sde = sd.VPSDE()
    kwargs = {"in_channels": 1, "image_size": 8, "parameterization": "x0", "num_classes": 2, **TINY[name]}
    net = perturb_zero_init(build_net(name, sde=sde, **kwargs))
    copy = build_net(name, sde=sde, **json.loads(json.dumps(kwargs)))
    copy.load_state_dict(net.state_dict(), strict=True)
    x, t = images(3, 1, 8)
    y = torch.tensor([0, 1, 2])
    assert torch.equal(copy(x, t, y), net(x, t, y)) and copy.parameterization == "x0"
    ema = torch.optim.swa_utils.AveragedModel(net)  # the trainer's EMA deep-copies the network
    assert torch.equal(ema(x, t, y), net(x, t, y))


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_classifier_free_guidance_through_null_label(name):
    # scoresde.guidance batches (labels, null) into one call; it must equal the two calls combined by hand
    from scoresde.guidance import classifier_free_guidance

    sde = sd.VPSDE()
    net = perturb_zero_init(tiny(name, sde=sde, num_classes=3)).double()
    x, t = images(2, 1, 8, dtype=torch.float64)
    model = classifier_free_guidance(net, sde, 1, 2.5, null_label=net.null_label, n_classes=3)
    cond, uncond = net(x, t, torch.ones(2, dtype=torch.long)), net(x, t)
    torch.testing.assert_close(model.predict(x, t), uncond + 2.5 * (cond - uncond), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", IMAGE_NETS)
def test_default_sizes_are_the_small_digits_nets(name):
    net = build_net(name, sde=sd.VPSDE(), **shape_kwargs(name, (1, 8, 8)))
    assert 0.5e6 <= sum(p.numel() for p in net.parameters()) <= 2e6
