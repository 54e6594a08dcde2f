r"""The schedule of one sampling run: the time grid with the SDE's coefficients at every point.

:func:`scoresde.sample` builds one :class:`Schedule` from the grid and hands it to the sampler, so a
sampler reads its coefficients in the paper's notation instead of evaluating the SDE itself:

* ``t[i]``: the grid, decreasing from ``t[0] = T`` to ``t[n] = t_min`` (``n = steps``);
* ``alpha[i]``, ``sigma[i]``: the marginal coefficients, ``x_t = alpha_t x_0 + sigma_t eps``;
* ``lam[i] = log alpha[i] - log sigma[i]``: the half log-SNR, increasing along the run;
* ``h[i] = lam[i + 1] - lam[i] > 0``: the step in log-SNR of grid step ``i`` (``n`` of them).

Everything is float64 on the CPU. A 0-d float64 CPU tensor combines with a state on any device
without changing its dtype, so samplers use ``schedule.alpha[i]`` directly. The construction is
differentiable: a grid that requires grad gives coefficients that carry it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .sde import SDE

__all__ = ["Schedule"]


@dataclass(frozen=True, eq=False)
class Schedule:
    """The grid ``t`` of one run with ``lam``, ``alpha``, ``sigma`` at each point and the steps ``h``."""

    sde: SDE
    t: Tensor
    lam: Tensor
    alpha: Tensor
    sigma: Tensor
    h: Tensor

    @classmethod
    def from_times(cls, sde: SDE, times) -> Schedule:
        """Evaluate ``sde`` once on the whole grid ``times`` (a decreasing 1-D tensor)."""
        t = torch.as_tensor(times, dtype=torch.float64).cpu()
        if t.ndim != 1 or t.numel() < 2:
            raise ValueError(f"times: expected a 1-D grid of at least 2 times, got shape {tuple(t.shape)}")
        alpha, sigma = sde.alpha_sigma(t)
        lam = sde.lam(t)
        return cls(sde=sde, t=t, lam=lam, alpha=alpha, sigma=sigma, h=lam[1:] - lam[:-1])

    @property
    def steps(self) -> int:
        """The number of grid steps ``n`` (the grid has ``n + 1`` points)."""
        return self.t.numel() - 1

    def at_lam(self, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(t, alpha, sigma)`` at a log-SNR between grid points (the stages of singlestep solvers)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        t = self.sde.t_of_lam(lam)
        alpha, sigma = self.sde.alpha_sigma(t)
        return t, alpha, sigma

    def __repr__(self) -> str:
        return (f"Schedule(sde={self.sde!r}, steps={self.steps}, t={float(self.t[0]):.6g} -> "
                f"{float(self.t[-1]):.6g}, lam={float(self.lam[0]):.4g} -> {float(self.lam[-1]):.4g})")
