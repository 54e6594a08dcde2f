r"""The UniP/UniC update of UniPC (Zhao et al. 2023, Algorithms 1-3); the sampler is :mod:`.unipc`.

Step ``i`` from ``s = t_i`` to ``t = t_{i+1}``, ``h = lam_t - lam_s``; for the data prediction
``m = x0_theta`` ``hh = -h`` (the noise prediction ``m = eps_theta``: ``hh = h`` and the frame
``(alpha_t/alpha_s, sigma_t)`` in place of ``(sigma_t/sigma_s, alpha_t)``):

.. math::  x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\, hh\,\varphi_1(hh)\, m_s
           - \alpha_t B(h) \sum_{m=1}^{K} \rho_m \frac{D_m}{r_m},
           \qquad D_m = m_{s_m} - m_s,\quad r_m = \frac{\lam_{s_m} - \lam_s}{h},

``B(h) = hh`` (``variant='bh1'``) or ``e^{hh} - 1`` (``'bh2'``), ``rho`` solving Theorem 3.1's order
conditions ``sum_m rho_m r_m^{k-1} = hh phi_{k+1}(hh) k!/B(h)``, ``k = 1..K`` (:func:`unipc_weights`).

* **UniP-p** (predictor, order p): the ``K = p - 1`` previous outputs (``r_m < 0``); local O(h^{p+1}).
* **UniC** (corrector): the output ``m_t = m(x~_t)`` at the predictor's ``x~_t``, which the next step
  needs anyway, joins as ``r_K = 1`` (``K = p``) and the same update from ``x_s`` is recomputed:
  local O(h^{p+2}), global order ``p + 1`` at one call per step. The next predictor starts from the
  corrected state with ``m_t`` as it was evaluated (the paper's analysis covers this).

Solved exactly, ``rho`` is proportional to ``1/B(h)`` and ``B`` cancels; a one-term system uses the
published ``rho = 1/2`` (the limit as h -> 0, as the paper's code and diffusers do), the only place
where ``'bh1'`` and ``'bh2'`` differ (``exact_weights=True`` solves it too).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._phi import phi

__all__ = ["unipc_weights", "unipc_update"]


def unipc_weights(r: list, hh, B, exact: bool = False) -> list:
    r"""Solve ``sum_m rho_m r_m^{k-1} = hh phi_{k+1}(hh) k!/B``, ``k = 1..K``, in float64 (K = len(r) >= 1).

    With one node and ``exact=False`` the published ``rho = 1/2``. Numbers or 0-d tensors in; floats
    out, or 0-d tensors carrying the graph when an input requires grad.
    """
    K = len(r)
    if K == 1 and not exact:
        return [0.5]
    b = torch.stack([torch.as_tensor(hh * phi(k + 1, hh) * math.factorial(k) / B, dtype=torch.float64)
                     for k in range(1, K + 1)])
    nodes = torch.stack([torch.as_tensor(r_m, dtype=torch.float64) for r_m in r])
    rows = [torch.ones_like(nodes)]  # R[k - 1, m] = r_m^(k - 1) (torch.vander works in place: no gradient)
    for _ in range(K - 1):
        rows.append(rows[-1] * nodes)
    rho = torch.linalg.solve(torch.stack(rows), b)
    return list(rho.unbind()) if rho.requires_grad else rho.tolist()


def unipc_update(schedule, i: int, x: Tensor, history: tuple, m_t: Tensor | None, prediction: str, variant: str,
                 exact_weights: bool) -> Tensor:
    """UniP of step ``i`` from ``x = x_i`` with ``history = ((lam_s, m_s), (lam_{s_1}, m_{s_1}), ...)``
    (the ``k`` newest), or UniC given ``m_t``. The coefficients are 0-d float64 tensors of the schedule."""
    h, alpha, sigma = schedule.h[i], schedule.alpha, schedule.sigma
    if prediction == "data":
        hh, ratio, c = -h, sigma[i + 1] / sigma[i], alpha[i + 1]
    else:
        hh, ratio, c = h, alpha[i + 1] / alpha[i], sigma[i + 1]
    B = hh if variant == "bh1" else torch.expm1(hh)
    (lam_s, m_s), *prev = history
    r = [(lam_m - lam_s) / h for lam_m, _ in prev]
    D = [m_m - m_s for _, m_m in prev]
    if m_t is not None:
        r, D = r + [1.0], D + [m_t - m_s]
    x_t = ratio * x - c * hh * phi(1, hh) * m_s
    if r:
        rho = unipc_weights(r, hh, B, exact_weights)
        x_t = x_t - c * B * sum(rho_m / r_m * D_m for rho_m, r_m, D_m in zip(rho, r, D, strict=True))
    return x_t
