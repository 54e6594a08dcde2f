r"""Networks trained in the flow-matching literature's convention, on scoresde's flow path.

Lipman et al. (2023), Liu et al. (2023) and facebookresearch/flow_matching (``CondOTProbPath``) put noise
``x_0 ~ N(0, I)`` at ``s = 0`` and data ``x_1`` at ``s = 1``:

.. math::
    x_s = s\, x_1 + (1 - s)\, x_0, \qquad u^{L}(x_s, s) = \mathbb{E}[x_1 - x_0 \mid x_s].

scoresde's :class:`~scoresde.sde.FlowMatchingSDE` puts data at ``t = 0`` and noise at ``t = 1``,
``x_t = (1 - t) x_{data} + t\, \epsilon``, with velocity ``u(x_t, t) = E[eps - x_data | x_t]``. With
``s = 1 - t`` the two paths are the same random variable, and the velocities are negatives:

.. math::
    u(x, t) = -u^{L}(x, 1 - t).

:func:`from_lipman` wraps such a network ``u^L(x, s)`` (or ``u^L(x, s, y)``) as a scoresde velocity
network, and :func:`lipman_model` gives the :class:`~scoresde.models.ScoreModel` that every sampler takes.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..models import ScoreModel
from ..sde import FlowMatchingSDE

__all__ = ["LipmanVelocity", "from_lipman", "lipman_model"]


class LipmanVelocity(nn.Module):
    """``u(x, t) = -u_L(x, 1 - t)``: a velocity network in the data-at-``s = 1`` convention, seen in scoresde's."""

    def __init__(self, u_lipman: Callable[..., Tensor]):
        super().__init__()
        if not callable(u_lipman):
            raise TypeError(f"u_lipman: expected a callable u(x, s), got {type(u_lipman).__name__}")
        self.u_lipman = u_lipman

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        s = 1 - t
        return -(self.u_lipman(x, s) if y is None else self.u_lipman(x, s, y))


def from_lipman(u_lipman: Callable[..., Tensor]) -> LipmanVelocity:
    """The scoresde velocity network ``(x, t) -> -u_lipman(x, 1 - t)`` (module docstring)."""
    return LipmanVelocity(u_lipman)


def lipman_model(u_lipman: Callable[..., Tensor], sde: FlowMatchingSDE | None = None) -> ScoreModel:
    """A :class:`ScoreModel` (parameterisation ``'velocity'``) of a network trained in Lipman et al.'s convention."""
    sde = FlowMatchingSDE() if sde is None else sde
    if not isinstance(sde, FlowMatchingSDE):
        raise TypeError(f"sde: a Lipman-convention velocity lives on the flow path; expected a FlowMatchingSDE, "
                        f"got {type(sde).__name__}")
    return ScoreModel(from_lipman(u_lipman), sde, "velocity")
