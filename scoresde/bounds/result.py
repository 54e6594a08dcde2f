"""The result of a variational bound: per-sample totals, their three parts, and the per-term breakdown."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

__all__ = ["BoundResult"]


@dataclass(frozen=True, eq=False)
class BoundResult:
    r"""A variational upper bound on ``-log p_theta(x_0)`` per sample, in nats.

    ``nll = prior + diffusion + reconstruction`` (each ``(B,)``):

    * ``prior``: ``L_T = KL(q(x_T | x_0) || p(x_T))``, closed form;
    * ``diffusion``: the sum of the KL terms ``L_1 .. L_{N-1}`` (discrete bound) or the
      likelihood-weighted denoising integral (continuous bound); exact or a Monte Carlo estimate;
    * ``reconstruction``: ``L_0 = -log p_theta(x_0 | x_1)`` by the decoder.

    The expectation of ``nll`` over the noise (and the sampled times) is the bound; ``mean`` and
    ``se`` are its batch mean and standard error (``std / sqrt(B)``, over data, noise and times).
    ``terms`` (discrete bound, exact estimator): batch means of ``[L_0, L_1, ..., L_{N-1}, L_N]``,
    ``terms_se`` their standard errors.
    ``times``: the grid ``t_1 < ... < t_N`` (discrete) or ``(t_min, T)`` (continuous), float64.
    Bits per dimension are ``nll / (D log 2)``: a probability for discrete data (``levels`` given),
    a density (may be negative) for continuous data.
    """

    nll: Tensor
    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor
    dim: int
    kind: str
    estimator: str
    nfe: int
    times: Tensor
    levels: int | None = None
    steps: int | None = None
    reverse_variance: str | None = None
    n_t: int = 0
    terms: Tensor | None = None
    terms_se: Tensor | None = None

    @property
    def mean(self) -> float:
        """Batch mean of the bound (nats)."""
        return float(self.nll.double().mean())

    @property
    def se(self) -> float:
        """Standard error of :attr:`mean` (nan for a single sample)."""
        n = self.nll.numel()
        return float(self.nll.double().std()) / math.sqrt(n) if n > 1 else float("nan")

    def bits_per_dim(self) -> Tensor:
        """``nll / (D log 2)`` per sample."""
        return self.nll / (self.dim * math.log(2))

    @property
    def bpd(self) -> float:
        """Batch mean of :meth:`bits_per_dim`."""
        return self.mean / (self.dim * math.log(2))

    @property
    def bpd_se(self) -> float:
        return self.se / (self.dim * math.log(2))
