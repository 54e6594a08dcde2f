r"""Pieces shared by the image networks (:mod:`~scoresde.nets.unet`, :mod:`~scoresde.nets.dit`).

* :class:`NoiseLevelEmbedding`: the conditioning vector of the noise level and the label,

  .. math::
      e = \mathrm{MLP}\big(\phi(c\,\tau)\big) + E[y], \qquad
      \tau = \lambda(t) = \log\alpha_t - \log\sigma_t \ \ (\texttt{time\_input='log\_snr'})
      \quad\text{or}\quad \tau = t / T \ \ (\texttt{'t'}),

  with :math:`\phi` sinusoidal (Vaswani et al. 2017; DDPM's timestep embedding) or Gaussian
  Fourier features (:mod:`~scoresde.nets.embedding`) at the frequency scale ``c`` that
  :class:`~scoresde.nets.mlp.ScoreMLP` uses (sinusoidal: ``c = 100`` on lambda, which spans about
  [-10, 10] for the VP SDE, and ``c = 1000`` on ``t / T``, DDPM's integer timestep range).
  ``E`` has ``num_classes + 1`` rows; the last, ``null_label = num_classes``, is the
  classifier-free "no label" token (Ho & Salimans 2022) used when ``y`` is None.
* Argument checks that name the argument, the value given and what is allowed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..models import PARAMETERIZATIONS
from ..sde import SDE
from .embedding import EMBEDDINGS

__all__ = ["NoiseLevelEmbedding", "DEFAULT_EMBED_SCALE", "TIME_INPUTS", "check_image", "time_batch"]

#: what a network embeds as its noise level: the half log-SNR lambda(t), or t / T
TIME_INPUTS = ("log_snr", "t")

#: frequency scale ``c`` per (embedding, time input), the values ScoreMLP uses: sinusoidal features
#: see ``c tau`` in about [-1000, 1000] (DDPM's timestep range), Fourier features ``tau`` at unit scale
DEFAULT_EMBED_SCALE = {("fourier", "log_snr"): 1.0, ("fourier", "t"): 16.0,
                       ("sinusoidal", "log_snr"): 100.0, ("sinusoidal", "t"): 1000.0}


# ----- argument checks ---------------------------------------------------------------------------
def positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return v


def positive_ints(name: str, v, *, allow_empty: bool = False) -> tuple[int, ...]:
    """A list or tuple of positive integers (JSON gives lists, Python callers tuples)."""
    if not isinstance(v, Sequence) or isinstance(v, str) or (not v and not allow_empty) or \
            any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v):
        what = "a list of positive integers" + ("" if allow_empty else " (at least one)")
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return tuple(v)


def check_common(sde, parameterization: str, embedding: str, time_input: str, embed_scale, num_classes) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde: expected a scoresde.SDE, got {type(sde).__name__}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding: unknown {embedding!r}; allowed: {', '.join(EMBEDDINGS)}")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input: unknown {time_input!r}; allowed: {', '.join(TIME_INPUTS)}")
    if embed_scale is not None and (isinstance(embed_scale, bool) or not isinstance(embed_scale, (int, float))
                                    or not math.isfinite(embed_scale) or embed_scale <= 0):
        raise ValueError(f"embed_scale: expected a finite positive number or None (the default scale), got {embed_scale!r}")
    if num_classes is not None:
        positive_int("num_classes", num_classes)


def check_image(x: Tensor, in_channels: int, image_size: int) -> None:
    """``x`` must be ``(B, in_channels, image_size, image_size)``; the error names the expected shape."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor of shape (B, {in_channels}, {image_size}, {image_size}), "
                         f"got {type(x).__name__}{'' if not isinstance(x, Tensor) else ' of dtype ' + str(x.dtype)}")
    if x.ndim != 4 or tuple(x.shape[1:]) != (in_channels, image_size, image_size):
        raise ValueError(f"x: expected shape (B, {in_channels}, {image_size}, {image_size}), got {tuple(x.shape)}")


def time_batch(t, x: Tensor) -> Tensor:
    """The time input as a ``(B,)`` tensor in ``x``'s dtype and device (a scalar broadcasts)."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t_input: expected a scalar or shape ({x.shape[0]},) to match the batch of x, "
                         f"got {tuple(t.shape)}")
    return t


# ----- the conditioning vector -------------------------------------------------------------------
class NoiseLevelEmbedding(nn.Module):
    """``e(t, y) = MLP(phi(c tau(t))) + E[y]``, a ``(B, out_dim)`` vector (see the module docstring).

    Args:
        sde: gives lambda(t) (``time_input='log_snr'``) or T (``'t'``).
        freq_dim: number of sin/cos features of tau (even).
        out_dim: width of the MLP and of the result.
        embedding, time_input, embed_scale: as in :class:`~scoresde.nets.mlp.ScoreMLP`.
        num_classes: number of labels (None: unconditional, and ``y`` must be None).
    """

    def __init__(self, sde: SDE, freq_dim: int, out_dim: int, *, embedding: str = "sinusoidal",
                 time_input: str = "log_snr", embed_scale: float | None = None, num_classes: int | None = None):
        super().__init__()
        self.sde, self.time_input, self.num_classes = sde, time_input, num_classes
        scale = DEFAULT_EMBED_SCALE[(embedding, time_input)] if embed_scale is None else embed_scale
        self.features = EMBEDDINGS[embedding](freq_dim, scale)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))
        self.label = nn.Embedding(num_classes + 1, out_dim) if num_classes is not None else None

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        tau = self.sde._lam(t) if self.time_input == "log_snr" else t / self.sde.T  # t: checked by the caller
        e = self.mlp(self.features(tau))
        if self.label is None:
            if y is not None:
                raise ValueError("y: this network is unconditional (num_classes=None); pass y=None")
            return e
        B = t.shape[0]
        if y is None:
            y = torch.full((B,), self.num_classes, dtype=torch.long, device=t.device)
        if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32) or y.shape != (B,):
            raise ValueError(f"y: expected a ({B},) integer tensor of labels, got "
                             f"{type(y).__name__}{tuple(y.shape) if isinstance(y, Tensor) else ''}"
                             f"{' of dtype ' + str(y.dtype) if isinstance(y, Tensor) else ''}")
        # labels on an accelerator are checked where they enter (the guidance, the trainer's data): reading
        # them here would wait for the device at every call; on the CPU the check costs nothing
        if y.device.type == "cpu" and bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"y: labels must lie in [0, {self.num_classes}] ({self.num_classes} = null_label), "
                             f"got values in [{int(y.min())}, {int(y.max())}]")
        return e + self.label(y)
