"""Two-dimensional toy datasets, reproducible from a ``torch.Generator``.

Each sampler ``name(n, generator=None)`` returns an ``(n, 2)`` float32 tensor on the CPU (or on the
generator's device). The datasets that are Gaussian mixtures also come as a :class:`GaussianMixture`
through :func:`mixture`, so their exact score is known at every t under every SDE.
Scales are chosen so that the data has a spread of a few units, like the usual FFJORD toys.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._tensor import check_count, check_finite_number, check_generator
from ..checks import check_seed
from .mixture import GaussianMixture

__all__ = ["DATASETS", "MIXTURES", "sample", "mixture", "available", "anisotropic_mixture"]


def _device(generator):
    return generator.device if generator is not None else torch.device("cpu")


def _checked(n, generator) -> int:
    """The shared argument checks of every toy sampler: an integer count and a torch.Generator or None."""
    check_generator("generator", generator)
    return check_count("n", n)


def _noise(noise) -> float:
    v = check_finite_number("noise", noise)
    if v < 0:
        raise ValueError(f"noise: expected a standard deviation >= 0, got {noise!r}")
    return v


def _randn(n, d, generator):
    return torch.randn(n, d, generator=generator, device=_device(generator), dtype=torch.float64)


def _rand(n, generator):
    return torch.rand(n, generator=generator, device=_device(generator), dtype=torch.float64)


# ----- mixtures with exact scores -----------------------------------------------------------
def eight_gaussians_mixture(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equal components on a circle of ``radius``, isotropic ``std``."""
    radius, std = check_finite_number("radius", radius), check_finite_number("std", std, positive=True)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return GaussianMixture(torch.full((8,), 1 / 8, dtype=torch.float64), means, torch.full((8,), std**2))


def twenty_five_gaussians_mixture(spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """A 5 x 5 grid of equal components ``spacing`` apart, isotropic ``std``."""
    spacing, std = check_finite_number("spacing", spacing), check_finite_number("std", std, positive=True)
    g = (torch.arange(5, dtype=torch.float64) - 2) * spacing
    means = torch.cartesian_prod(g, g)
    return GaussianMixture(torch.full((25,), 1 / 25, dtype=torch.float64), means, torch.full((25,), std**2))


def gaussian_mixture_2d() -> GaussianMixture:
    """Three unequal, anisotropic, correlated components: a small mixture with no symmetry."""
    weights = [0.5, 0.3, 0.2]
    means = [[-1.5, -0.5], [1.5, 1.0], [0.0, 2.0]]
    covs = [[[0.30, 0.15], [0.15, 0.20]], [[0.05, 0.0], [0.0, 0.40]], [[0.10, -0.06], [-0.06, 0.10]]]
    return GaussianMixture(weights, means, covs)


def anisotropic_mixture(dim: int = 16, n_components: int = 4, seed: int = 0) -> GaussianMixture:
    """A ``dim``-dimensional mixture with random means and anisotropic covariances (fixed by ``seed``).

    Covariance eigenvalues spread over two decades, so the score is stiff in some directions.
    """
    dim, n_components = check_count("dim", dim), check_count("n_components", n_components)
    seed = check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(n_components, dim, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64))
    evals = torch.logspace(-2, 0, dim, dtype=torch.float64)[torch.randperm(dim, generator=g)]
    covs = q @ torch.diag_embed(evals.expand(n_components, dim)) @ q.transpose(1, 2)
    covs = 0.5 * (covs + covs.transpose(1, 2))
    w = torch.rand(n_components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(w / w.sum(), means, covs)


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "eight_gaussians": eight_gaussians_mixture,
    "twenty_five_gaussians": twenty_five_gaussians_mixture,
    "gaussian_mixture_2d": gaussian_mixture_2d,
}


def _from_mixture(name):
    def draw(n: int, generator: torch.Generator | None = None) -> Tensor:
        return MIXTURES[name]().sample(_checked(n, generator), generator=generator)
    draw.__name__ = name
    draw.__doc__ = f"Samples of the exact mixture ``mixture({name!r})``."
    return draw


# ----- other toys ----------------------------------------------------------------------------
def checkerboard(n: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform on the dark squares of a 4 x 4 checkerboard on [-4, 4]^2."""
    n = _checked(n, generator)
    x1 = _rand(n, generator) * 4 - 2
    x2 = _rand(n, generator) - torch.randint(0, 2, (n,), generator=generator, device=_device(generator)) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return (2 * torch.stack([x1, x2], 1)).float()


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """Two interleaved half circles with Gaussian jitter, centred and scaled to unit-ish spread."""
    n = _checked(n, generator)
    noise = _noise(noise)
    upper = torch.randint(0, 2, (n,), generator=generator, device=_device(generator)).bool()
    theta = _rand(n, generator) * math.pi
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 2 + noise * _randn(n, 2, generator)
    return pts.float()


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.5) -> Tensor:
    """The 2D Swiss roll (scikit-learn's construction), scaled to about [-3, 3]^2."""
    n = _checked(n, generator)
    noise = _noise(noise)
    t = 1.5 * math.pi * (1 + 2 * _rand(n, generator))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + noise * _randn(n, 2, generator)
    return (pts / 5).float()


def rings(n: int, generator: torch.Generator | None = None, noise: float = 0.08) -> Tensor:
    """Four concentric circles of radii 1, 2, 3, 4 (scaled by 0.75), equally likely, with jitter."""
    n = _checked(n, generator)
    noise = _noise(noise)
    r = (torch.randint(1, 5, (n,), generator=generator, device=_device(generator)).double()) * 0.75
    theta = _rand(n, generator) * 2 * math.pi
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) + noise * _randn(n, 2, generator)
    return pts.float()


def pinwheel(n: int, generator: torch.Generator | None = None, n_arms: int = 5) -> Tensor:
    """Five curved arms (the pinwheel of Johnson et al. 2016)."""
    n = _checked(n, generator)
    n_arms = check_count("n_arms", n_arms)
    radial_std, tangential_std, rate = 0.3, 0.1, 0.25
    arm = torch.randint(0, n_arms, (n,), generator=generator, device=_device(generator)).double()
    feats = _randn(n, 2, generator) * torch.tensor([radial_std, tangential_std], dtype=torch.float64, device=_device(generator))
    feats[:, 0] += 1.0
    angle = arm * (2 * math.pi / n_arms) + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    pts = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], 1)
    return (2 * pts).float()


def spirals(n: int, generator: torch.Generator | None = None, noise: float = 0.1) -> Tensor:
    """Two interleaved Archimedean spirals."""
    n = _checked(n, generator)
    noise = _noise(noise)
    t = torch.sqrt(_rand(n, generator)) * 3 * math.pi
    sign = torch.where(torch.randint(0, 2, (n,), generator=generator, device=_device(generator)).bool(), 1.0, -1.0).double()
    pts = sign[:, None] * torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 3
    return (pts + noise * _randn(n, 2, generator)).float()


DATASETS: dict[str, Callable[..., Tensor]] = {
    "eight_gaussians": _from_mixture("eight_gaussians"),
    "twenty_five_gaussians": _from_mixture("twenty_five_gaussians"),
    "gaussian_mixture_2d": _from_mixture("gaussian_mixture_2d"),
    "checkerboard": checkerboard,
    "two_moons": two_moons,
    "swiss_roll": swiss_roll,
    "rings": rings,
    "pinwheel": pinwheel,
    "spirals": spirals,
}


def available() -> list[str]:
    """Names of the built-in 2D datasets."""
    return sorted(DATASETS)


def sample(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``n`` points of the dataset ``name`` as an ``(n, 2)`` float32 tensor."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"dataset: unknown name {name!r}; known datasets: {', '.join(available())}")
    return DATASETS[name](_checked(n, generator), generator)


def mixture(name: str) -> GaussianMixture:
    """The exact :class:`GaussianMixture` behind a mixture dataset."""
    if not isinstance(name, str) or name not in MIXTURES:
        raise ValueError(f"mixture: {name!r} has no exact mixture; mixtures: {', '.join(sorted(MIXTURES))}")
    return MIXTURES[name]()
