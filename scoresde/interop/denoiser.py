r"""The denoiser convention of k-diffusion and EDM, in both directions.

k-diffusion and EDM (Karras et al. 2022) write every model as a denoiser ``D(y, s)`` in the
variance-exploding frame ``y = x0 + s eps``: ``D`` returns the data prediction at noise level ``s``.
Every SDE of the family is that frame after a change of variables (Karras et al. 2022, eq. 4):

.. math::  y = x / \alpha(t), \qquad s = \sigma(t) / \alpha(t) = e^{-\lambda(t)},

since ``x / alpha = x0 + (sigma / alpha) eps``. Hence

* :func:`from_denoiser`: ``x0_theta(x, t) = D(x / alpha(t), sigma(t) / alpha(t))``, a ScoreModel with
  the ``'x0'`` parameterisation on any SDE (on a VE SDE, alpha = 1 and ``s = sigma(t)``);
* :func:`to_denoiser`: ``D(y, s) = x0_theta(alpha(t) y, t)`` with ``t = t(lambda = -log s)``, so
  k-diffusion's samplers, which call ``D(y, s)`` on a decreasing list of ``s``, run on scoresde models.

One model call per evaluation either way.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._tensor import append_dims
from ..models import ScoreModel
from ..sde import SDE, VESDE

__all__ = ["from_denoiser", "to_denoiser", "Denoiser"]


def from_denoiser(D: Callable[[Tensor, Tensor], Tensor], sde: SDE | None = None, *, sigma_min: float = 0.002,
                  sigma_max: float = 80.0) -> ScoreModel:
    """Wrap a denoiser ``D(y, s)`` (VE/EDM frame ``y = x0 + s eps``) as a ScoreModel on ``sde``.

    ``D`` receives ``y = x / alpha(t)`` and the ``(B,)`` noise levels ``s = sigma(t) / alpha(t)`` in the
    state's dtype, and returns the data prediction. ``sde`` defaults to the VE SDE from ``sigma_min``
    to ``sigma_max`` (EDM's 0.002 and 80), on which ``y = x`` and ``s = sigma(t)``.
    """
    if not callable(D):
        raise TypeError(f"D: expected a callable denoiser D(x, sigma), got {type(D).__name__}")
    if sde is None:
        sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max)
    if not isinstance(sde, SDE):
        raise TypeError(f"sde: expected a scoresde.SDE, got {type(sde).__name__}")

    def x0(x: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = sde.alpha_sigma(t.to(torch.float64))
        s = (sigma / alpha).to(x.dtype)
        y = x / append_dims(alpha.to(x.dtype), x.ndim)
        out = D(y, s)
        if not isinstance(out, Tensor):
            raise TypeError(f"D: returned {type(out).__name__}, expected the data prediction as a tensor")
        return out

    return ScoreModel(x0, sde, "x0")


class Denoiser:
    """``D(y, s) = x0_theta(alpha(t) y, t)`` at ``t = t(lambda = -log s)``: a scoresde model in the EDM frame.

    ``s`` is a positive number or a ``(B,)`` tensor of noise levels within the SDE's range
    ``[sigma/alpha at t_min, sigma/alpha at T]`` (k-diffusion's ``sigma_min``, ``sigma_max``). Levels a few
    ulps of their own dtype outside it are clamped into it: k-diffusion's grids
    (``get_sigmas_karras(n, D.sigma_min, D.sigma_max)``) are float32, and rounding ``sigma_min`` to
    float32 can land one ulp below it. Beyond that, a ValueError prints both ends and the level at
    full precision.
    """

    def __init__(self, model: ScoreModel):
        if not isinstance(model, ScoreModel):
            raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
        self.model = model
        self.sde = model.sde
        lo, hi = (torch.exp(-self.sde.lam(torch.tensor(float(t), dtype=torch.float64)))
                  for t in (self.sde.t_min, self.sde.T))
        self.sigma_min, self.sigma_max = float(lo), float(hi)

    def t_of_sigma(self, s: Tensor) -> Tensor:
        """The SDE time at which ``sigma / alpha = s``."""
        return self.sde.t_of_lam(-torch.log(torch.as_tensor(s, dtype=torch.float64)))

    def __call__(self, y: Tensor, sigma) -> Tensor:
        if not isinstance(y, Tensor) or y.ndim < 1:
            raise TypeError(f"y: expected a batched tensor (B, ...), got {type(y).__name__}"
                            f"{f' of shape {tuple(y.shape)}' if isinstance(y, Tensor) else ''}")
        if isinstance(sigma, Tensor):
            if not sigma.is_floating_point():
                raise TypeError(f"sigma: expected a float tensor of noise levels, got dtype {sigma.dtype}")
            s = sigma
        elif isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
            s = torch.tensor(float(sigma), dtype=torch.float64)
        else:
            raise TypeError(f"sigma: expected a number or a tensor of noise levels, got {type(sigma).__name__} "
                            f"{sigma!r:.40}")
        s64 = s.to(torch.float64)
        if s64.ndim == 0:
            s64 = s64.expand(y.shape[0])
        if s64.shape != (y.shape[0],):
            raise ValueError(f"sigma: expected a number or a ({y.shape[0]},) tensor, got shape {tuple(s.shape)}")
        # a few ulps of the caller's dtype: sigma_min rounded to float32 is in range
        slack = max(1e-9, 4 * torch.finfo(s.dtype).eps)
        lo, hi = self.sigma_min * (1 - slack), self.sigma_max * (1 + slack)
        if not bool(((s64 >= lo) & (s64 <= hi)).all()):
            raise ValueError(f"sigma: noise levels must lie in the SDE's range [{self.sigma_min!r}, "
                             f"{self.sigma_max!r}] (up to {slack:.2g} relative), got [{float(s64.min())!r}, "
                             f"{float(s64.max())!r}] ({s.dtype})")
        s64 = s64.clamp(self.sigma_min, self.sigma_max)
        t = self.t_of_sigma(s64.cpu()).clamp(self.sde.t_min, self.sde.T)
        alpha = self.sde.alpha(t)
        x = y * append_dims(alpha.to(device=y.device, dtype=y.dtype), y.ndim)
        return self.model.x0(x, t.to(device=y.device))

    def __repr__(self) -> str:
        return f"Denoiser({self.model!r}, sigma in [{self.sigma_min:.4g}, {self.sigma_max:.4g}])"


def to_denoiser(model: ScoreModel) -> Denoiser:
    """A scoresde model as a k-diffusion / EDM denoiser ``D(y, sigma)`` (see :class:`Denoiser`)."""
    return Denoiser(model)

