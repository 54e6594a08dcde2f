r"""score_sde's conventions (Song et al. 2021, github.com/yang-song/score_sde) for its networks.

score_sde trains on a continuous t in ``[eps, 1]`` and feeds the network a *label* of t, not t:

* VP and sub-VP SDEs (``beta_min = 0.1``, ``beta_max = 20``; ``eps = 1e-3``): label ``999 t`` (the DDPM
  step scale), and the network predicts the noise: score_sde's score is ``-net(x, 999 t) / sigma(t)``,
  i.e. ``parameterization='eps'``;
* the VE SDE (``sigma_min = 0.01``, ``sigma_max = 50``; ``eps = 1e-5``): label ``sigma(t) =
  sigma_min (sigma_max / sigma_min)^t``, and the network (NCSN++ with ``scale_by_sigma``) returns the
  score itself: ``parameterization='score'``.

scoresde's ``VPSDE``, ``SubVPSDE`` and ``VESDE`` have the same defaults, so a score_sde checkpoint
runs as ``score_sde_model(net, sd.VPSDE())``. :func:`score_sde_time_input` gives the label map alone,
``t -> label``, for ``ScoreModel(..., time_input=callable)``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..models import ScoreModel
from ..sde import SDE, VESDE, VPSDE, SubVPSDE

__all__ = ["score_sde_time_input", "score_sde_model", "VP_LABEL_SCALE"]

VP_LABEL_SCALE = 999.0  # score_sde: labels = t * 999 for continuous VP / sub-VP training


def _kind(sde: SDE) -> str:
    if isinstance(sde, (VPSDE, SubVPSDE)):
        return "vp"
    if isinstance(sde, VESDE):
        return "ve"
    raise TypeError(f"sde: score_sde's conventions cover VPSDE, SubVPSDE and VESDE, got {type(sde).__name__}")


def score_sde_time_input(sde: SDE) -> Callable[[Tensor], Tensor]:
    """The label score_sde's network takes at continuous time t: ``999 t`` (VP, sub-VP) or ``sigma(t)`` (VE).

    The map keeps t's shape, dtype and device."""
    if _kind(sde) == "vp":
        def vp_label(t: Tensor) -> Tensor:
            return VP_LABEL_SCALE * t
        return vp_label

    def ve_label(t: Tensor) -> Tensor:
        return sde.sigma(t.to(torch.float64)).to(t.dtype)
    return ve_label


def score_sde_model(net: Callable[[Tensor, Tensor], Tensor], sde: SDE, parameterization: str | None = None) -> ScoreModel:
    """A score_sde network ``net(x, label)`` as a ScoreModel on ``sde``.

    The network is called with :func:`score_sde_time_input`'s label; its output is the noise for
    VP / sub-VP and the score for VE (score_sde's ``get_score_fn``), unless ``parameterization`` says otherwise.
    """
    if not callable(net):
        raise TypeError(f"net: expected a callable net(x, label), got {type(net).__name__}")
    label = score_sde_time_input(sde)
    if parameterization is None:
        parameterization = "eps" if _kind(sde) == "vp" else "score"

    return ScoreModel(net, sde, parameterization, time_input=label)
