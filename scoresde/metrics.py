r"""Distances between sample sets: sliced and exact 2-Wasserstein.

* :func:`sliced_wasserstein`: the sliced 2-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015)

  .. math::  SW_2(\mu, \nu) = \Big( \mathbb{E}_{\theta \sim U(S^{D-1})} W_2^2(\theta_\# \mu, \theta_\# \nu) \Big)^{1/2},

  estimated with ``n_projections`` random directions. In one dimension
  :math:`W_2^2 = \int_0^1 (F^{-1}(u) - G^{-1}(u))^2 du` is exact from sorted samples, so the only
  randomness is the choice of directions. Cost O(P n log n); it works on the device of the inputs.
* :func:`wasserstein2`: the exact W2 between two empirical measures by linear programming
  (POT's ``ot.emd2`` with squared Euclidean cost; Flamary et al. 2021). O(n^3): keep n in the
  low thousands.

Both take ``(n, D)`` and ``(m, D)`` tensors (images are flattened) and return a float.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._tensor import check_count, check_generator

__all__ = ["sliced_wasserstein", "wasserstein2", "wasserstein1d_sq"]


def _as_points(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a tensor of shape (n, D), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (n, D) (or (n, *event_shape)) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: contains non-finite values")
    return x.reshape(x.shape[0], -1)


def _check_pair(x, y) -> tuple[Tensor, Tensor]:
    x, y = _as_points("x", x), _as_points("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y: dimension {y.shape[1]} differs from x's dimension {x.shape[1]}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def wasserstein1d_sq(u: Tensor, v: Tensor) -> Tensor:
    r"""Squared W2 between the empirical measures of the columns of ``u`` (n, P) and ``v`` (m, P).

    :math:`\int_0^1 (F_u^{-1}(q) - F_v^{-1}(q))^2 dq` with piecewise-constant quantile functions:
    exact for any n, m (the breakpoints are the union of i/n and j/m). Returns shape ``(P,)``.
    """
    u, _ = torch.sort(u, dim=0)
    v, _ = torch.sort(v, dim=0)
    n, m = u.shape[0], v.shape[0]
    if n == m:
        return ((u - v) ** 2).mean(0)
    # quantile levels where either quantile function jumps; evaluate both in the middle of each piece
    levels = torch.cat([torch.arange(1, n + 1, device=u.device, dtype=torch.float64) / n,
                        torch.arange(1, m + 1, device=u.device, dtype=torch.float64) / m])
    levels = torch.unique(levels)  # sorted
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - 0.5 * widths
    iu = torch.clamp((mid * n).floor().long(), max=n - 1)
    iv = torch.clamp((mid * m).floor().long(), max=m - 1)
    return (widths.to(u.dtype)[:, None] * (u[iu] - v[iv]) ** 2).sum(0)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, generator: torch.Generator | None = None) -> float:
    r"""Monte-Carlo sliced 2-Wasserstein distance :math:`SW_2` between the samples ``x`` and ``y``.

    Directions are drawn uniformly on the sphere from ``generator`` (give the same seed to compare
    several sample sets along the same directions, which removes the projection noise from the
    comparison). Two independent samples of size n from one distribution sit at a positive
    "noise floor" that shrinks like n^{-1/2}; compare against it, not against 0.
    """
    x, y = _check_pair(x, y)
    n_projections = check_count("n_projections", n_projections)
    check_generator("generator", generator)
    d = x.shape[1]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    theta = torch.randn(d, int(n_projections), generator=generator, device=gen_device, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(device=x.device, dtype=x.dtype)
    sw2 = wasserstein1d_sq(x @ theta, y @ theta).mean()
    return math.sqrt(max(float(sw2), 0.0))


def wasserstein2(x: Tensor, y: Tensor) -> float:
    r"""Exact 2-Wasserstein distance between the uniform empirical measures on ``x`` and ``y``.

    :math:`W_2 = (\min_{\pi} \sum_{ij} \pi_{ij} \|x_i - y_j\|^2)^{1/2}` over couplings with uniform
    marginals, solved exactly by POT's network simplex (``ot.emd2``) in float64.
    """
    try:
        import ot
    except ImportError as e:  # pragma: no cover - POT is a declared dependency
        raise ImportError("wasserstein2 needs POT: pip install pot") from e
    x, y = _check_pair(x, y)
    xs = x.detach().to(device="cpu", dtype=torch.float64)
    ys = y.detach().to(device="cpu", dtype=torch.float64)
    cost = torch.cdist(xs, ys) ** 2
    a = torch.full((xs.shape[0],), 1.0 / xs.shape[0], dtype=torch.float64)
    b = torch.full((ys.shape[0],), 1.0 / ys.shape[0], dtype=torch.float64)
    w2sq = float(ot.emd2(a.numpy(), b.numpy(), cost.numpy(), numItermax=1_000_000))
    return math.sqrt(max(w2sq, 0.0))
