"""The smooth time conditioning (issue 18): its derivative bound, the default everywhere, old checkpoints."""
import math

import pytest
import torch

import scoresde as sd
from scoresde.config import TrainConfig
from scoresde.nets import LEGACY_EMBEDDING, NETS, build_net, shape_kwargs
from scoresde.nets.embedding import SMOOTH_MAX_FREQ, GaussianFourierEmbedding, SinusoidalEmbedding, SmoothEmbedding
from scoresde.training import CHECKPOINT_NAME, Trainer, load_checkpoint, load_model
from scoresde.training.checkpoints import atomic_save
from scoresde.training.spec import spec_kwargs


def _jacobian_on_grid(embed, lam):
    # d phi_j / d lam at every grid point: one backward pass per feature (features are independent per sample)
    lam = lam.clone().requires_grad_(True)
    phi = embed(lam)
    return torch.stack([torch.autograd.grad(phi[:, j].sum(), lam, retain_graph=True)[0]
                        for j in range(phi.shape[1])], dim=1)


@pytest.mark.parametrize("dim", [2, 16, 64, 256])
@pytest.mark.parametrize("max_freq", [SMOOTH_MAX_FREQ, 3.0])
def test_the_derivative_along_lambda_is_bounded_by_the_stated_constant(dim, max_freq):
    embed = SmoothEmbedding(dim, max_freq).double()
    lam = torch.linspace(-20.0, 20.0, 4001, dtype=torch.float64)
    J = _jacobian_on_grid(embed, lam)
    # every feature: |d/dlam sin(omega lam)| <= omega <= max_freq, reached where the feature crosses zero
    assert J.abs().max() <= max_freq * (1 + 1e-12)
    assert J.abs().max() >= max_freq * (1 - 1e-4)  # a grid step of 0.01 rad from the peak: 1 - cos(0.01) ~ 5e-5
    # the vector: ||d phi / d lam||_2 = sqrt(sum omega_k^2) at every lam, at most max_freq sqrt(dim / 2)
    norms = J.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, embed.derivative_bound()), rtol=1e-12, atol=0)
    assert embed.derivative_bound() <= max_freq * math.sqrt(dim / 2) * (1 + 1e-12)
    # the frequency band: geometric from max_freq down to max_freq / 100
    assert embed.freqs.max() == pytest.approx(max_freq) and embed.freqs.min() >= max_freq / 100 * (1 - 1e-6)  # float32 buffer


def test_the_old_embeddings_are_not_bounded_so():
    # what the issue measured: sinusoidal at scale 100 turns at 100 rad per unit lambda (period 0.063)
    lam = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64)
    J = _jacobian_on_grid(SinusoidalEmbedding(16, 100.0).double(), lam)
    assert J.abs().max() > 99.0
    assert 2 * math.pi / 100 == pytest.approx(0.063, abs=1e-3)


@pytest.mark.parametrize("name", sorted(NETS))
def test_smooth_is_every_networks_default_with_the_stated_bound(name):
    sde = sd.VPSDE()
    event = (4,) if name == "mlp" else (1, 8, 8)
    small = {"mlp": {}, "unet": dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, norm_groups=4),
             "dit": dict(hidden_size=16, depth=1, num_heads=2)}[name]
    net = build_net(name, sde=sde, **shape_kwargs(name, event), **small).double()
    features = net.embed if name == "mlp" else net.embed.features
    assert isinstance(features, SmoothEmbedding) and features.max_freq == SMOOTH_MAX_FREQ
    # the features the network actually sees, as a function of lambda(t) over the SDE's whole range
    t = torch.linspace(sde.t_min, sde.T, 2001, dtype=torch.float64)
    J = _jacobian_on_grid(features, sde.lam(t))
    assert J.abs().max() <= SMOOTH_MAX_FREQ * (1 + 1e-12)


def _small(**kw):
    base = dict(steps=2, batch_size=16, width=16, depth=1, emb_dim=8, ckpt_every=2, warmup=1, progress=False,
                tensorboard=False)
    return TrainConfig(**{**base, **kw})


def test_a_new_checkpoint_records_its_embedding(tmp_path):
    t = Trainer(_small(), tmp_path)
    assert t.net_spec["kwargs"]["embedding"] == "smooth"
    assert isinstance(t.net.net.embed if hasattr(t.net, "net") else t.net.embed, SmoothEmbedding)


def test_a_checkpoint_from_the_old_default_loads_with_its_own_embedding(tmp_path):
    # a checkpoint as the code before issue 18 wrote it: the MLP's default was 'fourier' and the record
    # named no embedding (the config's embedding field None)
    t = Trainer(_small(embedding="fourier"), tmp_path)
    t.train()
    ckpt = load_checkpoint(tmp_path)
    del ckpt["net"]["kwargs"]["embedding"]
    ckpt["config"]["embedding"] = None
    atomic_save(ckpt, tmp_path / CHECKPOINT_NAME)

    model, _ = load_model(tmp_path)
    inner = model.net.net if hasattr(model.net, "net") else model.net
    assert isinstance(inner.embed, GaussianFourierEmbedding)
    x, tt = torch.randn(5, 2), torch.rand(5) * 0.9 + 0.05
    torch.testing.assert_close(model.eps(x, tt), t.score_model().eps(x, tt), rtol=0, atol=0)
    # resuming it with today's default would train another function: refused, with what to pass
    with pytest.raises(ValueError, match="embedding: .* was trained with embedding 'fourier'.*--embedding fourier"):
        Trainer(_small(steps=4), tmp_path, resume=True)
    resumed = Trainer(_small(steps=4, embedding="fourier"), tmp_path, resume=True)
    assert resumed.step == 2 and resumed.net_spec["kwargs"]["embedding"] == "fourier"


@pytest.mark.parametrize("name", sorted(LEGACY_EMBEDDING))
def test_an_old_record_of_every_net_resolves_to_its_old_default(name):
    assert spec_kwargs({"name": name, "kwargs": {}})["embedding"] == LEGACY_EMBEDDING[name]
    assert spec_kwargs({"name": name, "kwargs": {"embedding": "smooth"}})["embedding"] == "smooth"
