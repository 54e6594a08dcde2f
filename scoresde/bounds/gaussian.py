r"""Gaussian KL divergences and decoders: the small pure functions the variational bounds are built of.

* :func:`normal_kl`: ``KL(N(m_1, v_1) || N(m_2, v_2)) = (log(v_2/v_1) + (v_1 + (m_1 - m_2)^2)/v_2 - 1) / 2``
  elementwise (Ho et al. 2020, eq. 5; improved-diffusion's ``normal_kl``);
* :func:`gaussian_log_likelihood`: ``log N(x; mean, std^2)`` elementwise, the decoder of continuous data;
* :func:`discretized_gaussian_log_likelihood`: the decoder of data on ``levels`` equally spaced values
  in [-1, 1] (Ho et al. 2020, eq. 13): the mass of ``N(mean, std^2)`` on the bin
  ``[x - delta, x + delta]``, ``delta = 1/(levels - 1)``, with the two extreme bins open to -inf and
  +inf, so the masses over the levels sum to one;
* :func:`check_levels` and :func:`check_on_lattice`: the level count and the data's agreement with it.

Everything is elementwise and broadcasts; dtype and device follow the inputs.
"""
from __future__ import annotations

import math
import operator

import torch
from torch import Tensor

__all__ = ["normal_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood", "log_ndtr_diff",
           "check_levels", "check_on_lattice", "level_values", "bin_half_width"]


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    r"""``KL(N(mean1, var1) || N(mean2, var2))`` elementwise (nats), for positive variances.

    With ``r = var1 / var2`` the variance part ``r - 1 - log r`` is written ``(r - 1) - log1p(r - 1)``,
    which keeps its digits when the two variances nearly agree (the KL terms of a fine grid).
    """
    var1, var2 = torch.as_tensor(var1), torch.as_tensor(var2)
    if (var1 <= 0).any() or (var2 <= 0).any():
        raise ValueError(f"normal_kl: variances must be positive, got min var1 {float(var1.min()):.3g}, "
                         f"min var2 {float(var2.min()):.3g}")
    r_minus_1 = (var1 - var2) / var2
    return 0.5 * ((r_minus_1 - torch.log1p(r_minus_1)) + (mean1 - mean2) ** 2 / var2)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log N(x; mean, std^2)`` elementwise (nats)."""
    z = (x - mean) / std
    return -0.5 * z**2 - torch.log(torch.as_tensor(std, dtype=z.dtype, device=z.device)) - 0.5 * math.log(2 * math.pi)


def log_ndtr_diff(lo: Tensor, hi: Tensor) -> Tensor:
    r"""``log(Phi(hi) - Phi(lo))`` for ``lo < hi``, accurate in both tails.

    ``log Phi(hi) + log(1 - Phi(lo)/Phi(hi))`` loses nothing when both ends lie in the left tail; in
    the right tail ``Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)`` is used instead, so both arguments
    of ``log_ndtr`` are small there too.
    """
    right = lo > 0
    a = torch.where(right, -hi, lo)
    b = torch.where(right, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    return log_b + torch.log(-torch.expm1(torch.special.log_ndtr(a) - log_b))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, std: Tensor, levels: int) -> Tensor:
    r"""log of the mass of ``N(mean, std^2)`` on the bin of each value ``x`` of a ``levels``-level lattice.

    The lattice is ``x_k = -1 + 2k/(levels - 1)``, ``k = 0..levels-1`` (data scaled to [-1, 1]); the bin
    of ``x_k`` is ``[x_k - delta, x_k + delta]`` with ``delta = 1/(levels - 1)``, except that the bin of
    ``x_0 = -1`` extends to -inf and that of ``x_{L-1} = 1`` to +inf:

    .. math::  \log P(x_k) = \log\big(\Phi((x_k + \delta - \mu)/s) - \Phi((x_k - \delta - \mu)/s)\big).

    ``x`` must lie on the lattice (see :func:`check_on_lattice`); the extreme bins are recognised
    within half a bin of -1 and 1.
    """
    levels = check_levels(levels)
    delta = bin_half_width(levels)
    z_hi = (x + delta - mean) / std
    z_lo = (x - delta - mean) / std
    bottom = x < -1 + 0.5 * delta
    top = x > 1 - 0.5 * delta
    # the open bins: pass a harmless finite argument where an end is infinite so no NaN leaks through where()
    inner = log_ndtr_diff(torch.where(bottom | top, z_lo.new_tensor(-1.0), z_lo),
                          torch.where(bottom | top, z_hi.new_tensor(1.0), z_hi))
    return torch.where(bottom, torch.special.log_ndtr(z_hi),
                       torch.where(top, torch.special.log_ndtr(-z_lo), inner))


def bin_half_width(levels: int) -> float:
    """Half the spacing of the ``levels``-level lattice on [-1, 1]: ``1/(levels - 1)``."""
    return 1.0 / (check_levels(levels) - 1)


def level_values(levels: int, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The lattice ``-1 + 2k/(levels - 1)``, ``k = 0..levels-1``."""
    levels = check_levels(levels)
    return torch.linspace(-1.0, 1.0, levels, dtype=dtype, device=device)


def check_levels(levels, name: str = "levels") -> int:
    """An integer number of levels >= 2 (256 for 8-bit data, 17 for the digits), else a ValueError."""
    if isinstance(levels, bool) or isinstance(levels, float):
        raise ValueError(f"{name}: expected an integer number of levels >= 2 (e.g. 256 for 8-bit data), got {levels!r}")
    try:
        n = operator.index(levels)
    except TypeError:
        raise ValueError(f"{name}: expected an integer number of levels >= 2 (e.g. 256 for 8-bit data), "
                         f"got {levels!r}") from None
    if n < 2:
        raise ValueError(f"{name}: expected an integer number of levels >= 2 (e.g. 256 for 8-bit data), got {n}")
    return n


def check_on_lattice(x: Tensor, levels: int, name: str = "x") -> None:
    """Raise a ValueError unless every value of ``x`` is a point of the ``levels``-level lattice on [-1, 1].

    The tolerance is 1e-3 of a lattice step: wide enough for float32 rounding of 8-bit data,
    far too narrow for data on another lattice or unscaled data.
    """
    levels = check_levels(levels)
    k = (x.detach().double() + 1) * (levels - 1) / 2
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"{name}: discrete data must be scaled to [-1, 1] (levels={levels}), got values in "
                         f"[{lo:.4g}, {hi:.4g}]")
    off = (k - k.round()).abs()
    if float(off.max()) > 1e-3:
        bad = float(x.flatten()[int(off.flatten().argmax())])
        raise ValueError(f"levels: the data do not lie on the {levels}-level lattice -1 + 2k/{levels - 1} "
                         f"(value {bad:.6g} of {name} is {float(off.max()):.3g} of a step away); give the "
                         "data's own number of levels, or levels=None for continuous data")
