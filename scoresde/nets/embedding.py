r"""Embeddings of a scalar noise level (t or the half log-SNR lambda) as feature vectors.

* Gaussian Fourier features (Tancik et al. 2020; used for t in Song et al. 2021's NCSN++):
  ``[sin(2 pi W tau), cos(2 pi W tau)]`` with fixed ``W ~ N(0, scale^2)``.
* Sinusoidal features (Vaswani et al. 2017; DDPM's timestep embedding):
  ``[sin(omega_k tau), cos(omega_k tau)]`` with ``omega_k = max_period^{-k/(n/2)}``.

* Smooth features (the default of every network; :class:`SmoothEmbedding`):
  ``[sin(omega_k tau), cos(omega_k tau)]`` with ``omega_k`` geometric from ``max_freq`` down to
  ``max_freq / 100`` and ``max_freq = 1`` rad per unit of the half log-SNR lambda.

All map ``(B,)`` to ``(B, dim)`` in the dtype and on the device of ``tau``.

**Why the default is smooth.** A solver of order p assumes the model output is smooth at the scale of
its steps in lambda (the exponential integrators step in lambda exactly). DDPM's sinusoidal features at
scale 100 on lambda have a fastest period of 2 pi / 100 = 0.063 in lambda, while 64 steps across the VP
range are about 0.15 apart: on the digits U-Net the FFT of the output along lambda kept amplitude above
80 rad per unit lambda, UniPC's error slope fell to 1.2 between 40 and 64 steps and rose again at 160,
and zeroing the features faster than 3 rad per unit lambda restored slopes of 3.2-4.4 (issue 18).
EDM conditions on ``c_noise = ln(sigma) / 4`` with features of frequency at most 1 in ``c_noise``,
i.e. 1/4 rad per unit ln(sigma). :class:`SmoothEmbedding` bounds its frequencies by ``max_freq``
(1 rad per unit lambda by default: one period spans 2 pi ~ 6.3 in lambda, about 40 steps of a
64-step grid), so every feature is Lipschitz in ``tau`` with constant ``max_freq`` and the feature
vector with constant ``sqrt(sum_k omega_k^2) <= max_freq sqrt(dim / 2)``
(:meth:`SmoothEmbedding.derivative_bound`). The lowest frequency, ``max_freq / 100``, still turns by
0.2 rad over lambda in [-10, 10], so the slow features tell every noise level apart.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianFourierEmbedding", "SinusoidalEmbedding", "SmoothEmbedding", "EMBEDDINGS", "SMOOTH_MAX_FREQ", "LEGACY_EMBEDDING", "LEGACY_OPTIONS"]

#: the default frequency bound of :class:`SmoothEmbedding`, in rad per unit lambda
SMOOTH_MAX_FREQ = 1.0


def _check_dim(dim: int) -> int:
    if not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"dim: expected an even integer >= 2 for sin/cos pairs, got {dim!r}")
    return dim


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of a scalar with fixed (non-trained) frequencies ``W ~ N(0, scale^2)``."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        _check_dim(dim)
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: expected a finite positive number, got {scale!r}")
        # a buffer, not a parameter: it travels with the state dict but is not optimised
        self.register_buffer("W", torch.randn(dim // 2) * scale)

    def forward(self, tau: Tensor) -> Tensor:
        proj = 2 * math.pi * tau[:, None] * self.W.to(tau.dtype)[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features with geometric frequencies from 1 down to 1/max_period."""

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10000.0):
        super().__init__()
        half = _check_dim(dim) // 2
        self.scale = float(scale)
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)

    def forward(self, tau: Tensor) -> Tensor:
        proj = self.scale * tau[:, None] * self.freqs.to(tau.dtype)[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class SmoothEmbedding(nn.Module):
    r"""Band-limited sinusoidal features ``[sin(omega_k tau), cos(omega_k tau)]``, ``k < dim / 2``, with

    .. math::
        \omega_k = \omega_{max}\, r^{-k / (dim/2 - 1)}, \qquad r = 100,

    so ``omega_max = max_freq >= omega_k >= max_freq / 100`` (a single pair has ``omega_0 = max_freq``).
    Every feature's derivative in ``tau`` is at most ``max_freq`` in magnitude, and the feature vector's
    derivative has the 2-norm ``sqrt(sum_k omega_k^2)`` exactly (``sin^2 + cos^2 = 1``), which
    :meth:`derivative_bound` returns. The reasoning for the bound is in the module docstring.

    Args:
        dim: number of features (even).
        max_freq: the largest frequency, in rad per unit ``tau`` (the networks' ``embed_scale``).
    """

    RATIO = 100.0

    def __init__(self, dim: int, max_freq: float = SMOOTH_MAX_FREQ):
        super().__init__()
        half = _check_dim(dim) // 2
        if isinstance(max_freq, bool) or not (isinstance(max_freq, (int, float)) and math.isfinite(max_freq)
                                              and max_freq > 0):
            raise ValueError(f"max_freq: expected a finite positive number, got {max_freq!r}")
        self.max_freq = float(max_freq)
        k = torch.arange(half, dtype=torch.float64)
        omega = self.max_freq * self.RATIO ** (-k / max(half - 1, 1))
        # rebuilt from the arguments: not stored in the state dict
        self.register_buffer("freqs", omega.to(torch.get_default_dtype()), persistent=False)

    def derivative_bound(self) -> float:
        """``sup_tau ||d phi / d tau||_2 = sqrt(sum_k omega_k^2) <= max_freq sqrt(dim / 2)``."""
        return float(self.freqs.double().square().sum().sqrt())

    def forward(self, tau: Tensor) -> Tensor:
        proj = tau[:, None] * self.freqs.to(tau.dtype)[None]
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


EMBEDDINGS = {"smooth": SmoothEmbedding, "fourier": GaussianFourierEmbedding, "sinusoidal": SinusoidalEmbedding}
#: the embedding every network used before ``'smooth'`` became the default (issue 18): a checkpoint
#: whose record names no embedding was trained with this one
LEGACY_EMBEDDING = {"mlp": "fourier", "unet": "sinusoidal", "dit": "sinusoidal"}
#: every option whose default changed in issue 18, with the value a record that names none implies
LEGACY_OPTIONS = {"mlp": {"embedding": "fourier"}, "unet": {"embedding": "sinusoidal"},
                  "dit": {"embedding": "sinusoidal", "position_order": "row_first"}}
