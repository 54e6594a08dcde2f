r"""Embeddings of a scalar noise level (t or the half log-SNR lambda) as feature vectors.

* Gaussian Fourier features (Tancik et al. 2020; used for t in Song et al. 2021's NCSN++):
  ``[sin(2 pi W tau), cos(2 pi W tau)]`` with fixed ``W ~ N(0, scale^2)``.
* Sinusoidal features (Vaswani et al. 2017; DDPM's timestep embedding):
  ``[sin(omega_k tau), cos(omega_k tau)]`` with ``omega_k = max_period^{-k/(n/2)}``.

Both map ``(B,)`` to ``(B, dim)`` in the dtype and on the device of ``tau``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianFourierEmbedding", "SinusoidalEmbedding", "EMBEDDINGS"]


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


EMBEDDINGS = {"fourier": GaussianFourierEmbedding, "sinusoidal": SinusoidalEmbedding}
