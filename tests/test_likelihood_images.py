"""Probability-flow likelihoods of image-shaped data: shape agnosticism, multi-probe Hutchinson, dequantisation
at a known number of levels, and the input checks at log_likelihood's boundary."""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.likelihood import log_likelihood

SHAPE = (1, 2, 2)  # (C, H, W): four pixels


def gen(seed):
    return torch.Generator().manual_seed(seed)


def image_model(mix, sde):
    """The exact mixture score on (B, C, H, W) images whose flattened pixels follow ``mix``."""
    return sd.ScoreModel(lambda z, t: mix.score(z.reshape(z.shape[0], -1), t, sde).reshape(z.shape), sde, "score")


def pixels():
    """A diagonal Gaussian over four pixels inside [-1, 1]: its mass on a bin is a product of normal CDFs."""
    return toy.GaussianMixture([1.0], [[0.2, -0.3, 0.1, 0.4]], [[0.09, 0.04, 0.16, 0.0625]])


def test_images_give_the_flat_result():
    # the same probes and the same solver steps on the same numbers: equal to rounding
    sde, mix = sd.VPSDE(), toy.anisotropic_mixture(4)
    x = mix.sample(3, generator=gen(0), dtype=torch.float64)
    fixed = dict(method="rk4", options={"step_size": 0.05})
    flat = log_likelihood(mix.model(sde), x, estimator="hutchinson", n_probes=3, generator=gen(1), **fixed)
    img = log_likelihood(image_model(mix, sde), x.reshape(3, *SHAPE), estimator="hutchinson", n_probes=3,
                         generator=gen(1), **fixed)
    torch.testing.assert_close(img.log_likelihood, flat.log_likelihood, rtol=0, atol=1e-9)
    assert img.latent.shape == (3, *SHAPE) and img.dim == 4 and img.n_probes == 3


def test_multi_probe_hutchinson_is_unbiased_on_images():
    # 200 copies of one image, 4 Rademacher probes each: the mean lies within 4 s.e. of the exact-trace value,
    # and more probes shrink the spread (variance ~ 1/n_probes). The pixels are correlated: for a diagonal
    # Jacobian Rademacher probes would be exact.
    sde, mix = sd.VESDE(), toy.anisotropic_mixture(4)
    x0 = mix.sample(1, generator=gen(2), dtype=torch.float64).reshape(1, *SHAPE)
    model = image_model(mix, sde)
    exact = float(log_likelihood(model, x0, estimator="exact", rtol=1e-7, atol=1e-7).log_likelihood)
    x = x0.expand(200, *SHAPE).clone()
    spread = {}
    for k in (1, 4):
        est = log_likelihood(model, x, estimator="hutchinson", n_probes=k, generator=gen(k), rtol=1e-6,
                             atol=1e-6).log_likelihood
        se = float(est.std()) / math.sqrt(est.numel())
        assert abs(float(est.mean()) - exact) < 4 * se + 1e-4
        spread[k] = float(est.std())
    assert spread[4] < 0.75 * spread[1]


def test_dequantised_bits_per_dim_bound_the_exact_bin_mass():
    # Jensen: E_u[-log p(x + w (u - 1/2))] - D log w >= -log P(cell of x) with P the mass of p_{t_min} (the model's
    # density, exact here) on the centred cell; averaged over 64 dequantisations of each of 8 images.
    levels = 5
    sde, mix = sd.VPSDE(), pixels()
    grid = torch.linspace(-1, 1, levels, dtype=torch.float64)
    y = mix.sample(8, generator=gen(3), dtype=torch.float64)
    x = grid[((y.clamp(-1, 1) + 1) * (levels - 1) / 2).round().long()]
    xs = x.repeat_interleave(64, 0).reshape(-1, *SHAPE)
    res = log_likelihood(image_model(mix, sde), xs, levels=levels, generator=gen(4), rtol=1e-6, atol=1e-6,
                         prior_log_prob=lambda z: mix.log_prob_t(z.reshape(z.shape[0], -1), sde.T, sde))
    w = 2 / (levels - 1)
    assert res.dequantized and res.bin_width == w
    assert ((res.points - xs).abs() <= w / 2).all()             # centred cells
    bpd = res.bits_per_dim().reshape(8, 64)
    # exact mass of the cell under p_{t_min} = N(alpha mu, alpha^2 S + sigma^2) (diagonal): a product of CDFs
    a, s = (float(v) for v in sde.alpha_sigma(torch.tensor(sde.t_min, dtype=torch.float64)))
    mean, std = a * mix.means[0], (a**2 * torch.diagonal(mix.covs[0]) + s**2).sqrt()
    mass = (torch.special.ndtr((x + w / 2 - mean) / std) - torch.special.ndtr((x - w / 2 - mean) / std)).prod(1)
    exact_bpd = -mass.log() / (4 * math.log(2))
    se = bpd.std(1) / 8
    assert (bpd.mean(1) > exact_bpd - 4 * se).all()
    assert (bpd.mean(1) - exact_bpd).mean() < 0.5  # and not by much: the cells are narrow against the pixels' spread


BAD = [
    (dict(x=torch.zeros(3, *SHAPE, dtype=torch.float16)), ValueError, "x: expected float32 or float64"),
    (dict(generator=np.random.default_rng(0)), TypeError, "generator: expected a torch.Generator"),
    (dict(generator=0), TypeError, "generator"),
    (dict(levels=17, x=torch.full((3, *SHAPE), 0.3, dtype=torch.float64)), ValueError, "17-level lattice"),
    (dict(levels=256, bin_width=1.0), ValueError, "not both"),
    (dict(levels=1), ValueError, "levels"),
    (dict(x=torch.full((3, *SHAPE), math.nan, dtype=torch.float64)), ValueError, "non-finite"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_input_is_refused_before_the_solve(kwargs, exc, match):
    model = image_model(pixels(), sd.VPSDE())
    x = kwargs.pop("x", torch.zeros(3, *SHAPE, dtype=torch.float64))
    with pytest.raises(exc, match=match):
        log_likelihood(model, x, **kwargs)
    assert model.nfe == 0


def test_a_nan_model_is_named_not_an_underflow_in_dt():
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda z, t: torch.full_like(z, math.nan), sde, "eps")
    for backend in ("torchdiffeq", "scipy"):
        with pytest.raises(FloatingPointError, match="returned NaN/inf at t = "):
            log_likelihood(model, torch.zeros(2, *SHAPE, dtype=torch.float64), backend=backend)
    assert model.nfe == 2  # stopped at the first evaluation of each solve
