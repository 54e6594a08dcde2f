r"""EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...", eq. 7 and table 1) around
any registered network, written with (alpha, sigma) so that it suits every SDE of the family.

With ``x = alpha x_0 + sigma eps``, a data model ``x_0 ~ N(0, sigma_d^2 I)`` and the input scaling
``c_in = 1 / sqrt(alpha^2 sigma_d^2 + sigma^2)`` (so that ``c_in x`` has unit variance), the inner
network ``F = net(c_in x, t, y)`` is read as a unit-scale correction:

.. math::
    \hat x_0 = c_{skip} x + c_{out} F, \quad c_{skip} = \alpha \sigma_d^2 c_{in}^2, \quad
    c_{out} = -\sigma \sigma_d c_{in}; \qquad
    \hat\varepsilon = \sigma c_{in}^2 x + \alpha \sigma_d c_{in} F,

a consistent pair (``alpha x0_hat + sigma eps_hat = x``). ``F = 0`` is the exact denoiser of
``N(0, sigma_d^2 I)`` data (the Wiener filter), and neither prediction divides by a vanishing
alpha or sigma (VP and flow near T, every SDE near 0), so probability-flow trajectories stay
bounded where F is poor. The pair is then reported in ``parameterization``: ``eps_hat``,
``x0_hat``, ``score = -eps_hat / sigma``, ``v = alpha eps_hat - sigma x0_hat`` or
``velocity = alpha' x0_hat + sigma' eps_hat``.

Under this wrapper the parameterisation only names how the one function ``F`` is reported (the
same trained network for every target, since the denoising loss sees ``eps_hat`` either way);
without it (:class:`~scoresde.config.TrainConfig`'s ``precondition=None``; the default is 'edm')
the network's raw output is the target itself.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._tensor import append_dims
from ..models import FROM_PAIR, PARAMETERIZATIONS
from ..sde import SDE

__all__ = ["EDMPrecondition", "PRECONDITIONS", "precondition"]

PRECONDITIONS = ("edm",)


class EDMPrecondition(nn.Module):
    """``net`` wrapped in EDM's input scaling, skip connection and output scaling; see the module docstring.

    Args:
        net: any network ``net(x, t, y=None) -> like x`` (its output is the unit-scale ``F``).
        sde: the SDE giving alpha(t), sigma(t).
        parameterization: what this wrapper outputs (``scoresde.PARAMETERIZATIONS``).
        sigma_data: the data standard deviation ``sigma_d``.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps", sigma_data: float = 1.0):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net: expected a torch.nn.Module, got {type(net).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected a scoresde.SDE, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
        if isinstance(sigma_data, bool) or not (isinstance(sigma_data, (int, float)) and math.isfinite(sigma_data)
                                                and sigma_data > 0):
            raise ValueError(f"sigma_data: expected a finite positive number, got {sigma_data!r}")
        self.net, self.sde, self.parameterization, self.sigma_data = net, sde, parameterization, float(sigma_data)

    @property
    def null_label(self) -> int | None:
        """The inner network's null label (classifier-free guidance), or None."""
        return getattr(self.net, "null_label", None)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = self.sde._coefficients(append_dims(t, x.ndim))  # unchecked: t comes from a checked run
        a, s, sd = c.alpha, c.sigma, self.sigma_data
        c_in = torch.rsqrt(a**2 * sd**2 + s**2)
        F = self.net(c_in * x, t) if y is None else self.net(c_in * x, t, y)
        x0 = a * sd**2 * c_in**2 * x - s * sd * c_in * F
        eps = s * c_in**2 * x + a * sd * c_in * F
        return FROM_PAIR[self.parameterization](x0, eps, c)


def precondition(net: nn.Module, kind: str | None, *, sde: SDE, parameterization: str,
                 sigma_data: float) -> nn.Module:
    """``net`` as it is (``kind=None``) or wrapped in the preconditioning ``kind`` (:data:`PRECONDITIONS`)."""
    if kind is None:
        return net
    if kind == "edm":
        return EDMPrecondition(net, sde, parameterization, sigma_data)
    raise ValueError(f"precondition: unknown {kind!r}; allowed: None or {', '.join(map(repr, PRECONDITIONS))}")
