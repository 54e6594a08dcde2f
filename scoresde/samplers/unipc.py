r"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 1-3): a multistep exponential integrator in lambda (UniP) with a
corrector (UniC) that raises its order by one at no extra model call.

Step ``i`` from ``s = t_i`` to ``t = t_{i+1}``, ``h = lam_t - lam_s`` and, for the data prediction
``m = x0_theta``, ``hh = -h`` (the noise prediction ``m = eps_theta`` has ``hh = h`` and the frame
``(alpha_t/alpha_s, sigma_t)`` in place of ``(sigma_t/sigma_s, alpha_t)``):

.. math::  x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\, hh\,\varphi_1(hh)\, m_s
           - \alpha_t B(h) \sum_{m=1}^{K} \rho_m \frac{D_m}{r_m},
           \qquad D_m = m_{s_m} - m_s,\quad r_m = \frac{\lam_{s_m} - \lam_s}{h},

with ``B(h) = hh`` (``variant='bh1'``) or ``e^{hh} - 1`` (``'bh2'``) and ``rho`` solving the order
conditions of Theorem 3.1 (written in ``r`` rather than ``r h``; ``phi_k`` from :mod:`._phi`)

.. math::  \sum_{m=1}^{K} \rho_m r_m^{k-1} = b_k = \frac{hh\, \varphi_{k+1}(hh)\, k!}{B(h)},\qquad k = 1..K.

* **UniP-p** (predictor, order p): the ``K = p - 1`` previous outputs (``r_m < 0``); local O(h^{p+1}).
* **UniC** (corrector): the output ``m_t = m(x~_t)`` at the predictor's ``x~_t``, which the next step
  needs anyway, joins as ``r_K = 1`` (``K = p``) and the same update from ``x_s`` is recomputed:
  local O(h^{p+2}), global order ``p + 1`` at one call per step. The next predictor starts from the
  corrected state with ``m_t`` as it was evaluated (the paper's analysis covers this).

Solved exactly, ``rho`` is proportional to ``1/B(h)`` and ``B`` cancels. A one-term system uses the
published ``rho = 1/2`` (the limit of ``b_1`` as h -> 0, as the paper's code and diffusers do), the
only place where ``'bh1'`` and ``'bh2'`` differ; ``exact_weights=True`` solves it too.

Costs: one call per step; the **last** step's corrector needs ``m`` at ``t_min``, one extra call
(``final_corrector=True``; off by default, as in the paper and diffusers: the last UniP-p step has
local error O(h^{p+1}), the size of the global error, so skipping it keeps the order). Step ``i``
uses predictor order ``min(order, i + 1)`` (warm-up) and, where the final steps are lowered
(``lower_order_final``: None = below 15 steps, as in :mod:`._phi`), ``min(order, steps - i)``; the
first-order last step then caps the global order at 2 (3 with the final corrector). Near T the
warm-up's error constant carries ``alpha_T``, so order 3 + UniC measures 4 from T
(tests/test_unipc.py). ``stats['orders']`` and ``stats['corrected']`` record each step.

Stepping state: ``x`` is the corrected state at ``t_i``; while step ``i`` waits for its corrector
``stage = 1`` and ``x_eval`` is the predictor's ``x~_{i+1}``; ``stage = 2`` marks an uncorrected last
step, whose predictor needs no new model output; ``history`` holds ``(lam, m)`` at the grid
points, newest first. The scalar coefficients are float64 numbers: with ``sample(grad=True)``
gradients reach the network and ``x_T``, not the grid.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from torch import Tensor

from ._phi import LOWER_ORDER_FINAL_BELOW, check_lower_order_final, lowers_final, phi
from ._thresholding import check_threshold_options, dynamic_threshold
from .base import SamplerState, SteppedSampler, register

__all__ = ["UniPC", "unipc_weights"]

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def unipc_weights(r: list[float], hh: float, B: float, exact: bool = False) -> list[float]:
    r"""Solve ``sum_m rho_m r_m^{k-1} = hh phi_{k+1}(hh) k!/B``, ``k = 1..K``, in float64 (K = len(r) >= 1).

    With one node and ``exact=False`` the published ``rho = 1/2``.
    """
    K = len(r)
    if K == 1 and not exact:
        return [0.5]
    b = [hh * phi(k + 1, hh) * math.factorial(k) / B for k in range(1, K + 1)]
    R = np.vander(np.asarray(r, dtype=np.float64), K, increasing=True).T  # R[k - 1, m] = r_m^(k - 1)
    return np.linalg.solve(R, np.asarray(b, dtype=np.float64)).tolist()


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


@register
class UniPC(SteppedSampler):
    r"""UniPC multistep sampler (Zhao et al. 2023): UniP-``order`` with the UniC corrector.

    Options: ``order`` in {1, 2, 3} (the predictor's), ``corrector`` (UniC, default on: global order
    ``order + 1``), ``variant`` ``'bh1'`` or ``'bh2'``, ``prediction`` ``'data'`` or ``'noise'``,
    ``lower_order_final`` (None: below 15 steps; True/False force it), ``final_corrector`` (UniC on
    the last step for one extra call), ``exact_weights`` (solve one-term systems instead of
    rho = 1/2), ``thresholding`` with ``percentile`` in (0, 1] and ``max_value`` > 0 (data only).
    """

    name = "unipc"
    calls_per_step = 1
    conformance_options = tuple(
        {"order": k, **o} for k in (1, 2, 3) for o in (
            {}, {"lower_order_final": False, "final_corrector": True}, {"lower_order_final": True},
            {"variant": "bh1", "prediction": "noise", "lower_order_final": False})
    ) + ({"corrector": False}, {"corrector": False, "final_corrector": True}, {"exact_weights": True})

    def __init__(self, order: int = 3, corrector: bool = True, variant: str = "bh2", prediction: str = "data",
                 lower_order_final: bool | None = None, final_corrector: bool = False, exact_weights: bool = False,
                 thresholding: bool = False, percentile: float = 0.995, max_value: float = math.inf):
        if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in (1, 2, 3):
            raise ValueError(f"order: UniPC's predictor has order 1, 2 or 3, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: unknown {variant!r}; allowed: 'bh1' (B(h) = h), 'bh2' (B(h) = e^h - 1)")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: unknown {prediction!r}; allowed: 'data' (x0), 'noise' (eps)")
        self.order, self.variant, self.prediction = int(order), variant, prediction
        self.corrector = _check_bool("corrector", corrector)
        self.lower_order_final = check_lower_order_final(lower_order_final)
        self.final_corrector = _check_bool("final_corrector", final_corrector)
        self.exact_weights = _check_bool("exact_weights", exact_weights)
        self.thresholding = _check_bool("thresholding", thresholding)
        if self.thresholding and prediction != "data":
            raise ValueError("thresholding: dynamic thresholding clips the data prediction; "
                             f"use prediction='data' (got prediction={prediction!r})")
        self.percentile, self.max_value = check_threshold_options(percentile, max_value)
        self.convergence_order = self.convergence_order_for(LOWER_ORDER_FINAL_BELOW)

    def convergence_order_for(self, steps: int) -> int:
        """``order + 1`` with UniC; a first-order last step caps it at 2 (3 with the final corrector)."""
        order = self.order + int(self.corrector)
        if lowers_final(self.lower_order_final, steps):
            order = min(order, 2 + int(self.corrector and self.final_corrector))
        return order

    def expected_nfe(self, steps: int) -> int:
        return steps + int(self.corrector and self.final_corrector)

    def step_order(self, i: int, steps: int) -> int:
        """Predictor order of step ``i``: warm-up ``i + 1``, and ``steps - i`` where the final steps are lowered."""
        k = min(self.order, i + 1)
        return min(k, steps - i) if lowers_final(self.lower_order_final, steps) else k

    def step_orders(self, steps: int) -> list[int]:
        return [self.step_order(i, steps) for i in range(steps)]

    def corrects(self, i: int, steps: int) -> bool:
        return self.corrector and (i < steps - 1 or self.final_corrector)

    def needs_output(self, state):
        return state.stage != 2  # the uncorrected last predictor reuses the history (see :meth:`step`)

    def run(self, model, x, schedule, ctx):
        ctx.stats["orders"] = self.step_orders(schedule.steps)
        ctx.stats["corrected"] = [self.corrects(i, schedule.steps) for i in range(schedule.steps)]
        return super().run(model, x, schedule, ctx)

    def _m(self, model, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "noise":
            return model.to_eps(output, x, t)
        x0 = model.to_x0(output, x, t)
        return dynamic_threshold(x0, self.percentile, self.max_value) if self.thresholding else x0

    def update(self, schedule, i: int, x: Tensor, history: tuple, m_t: Tensor | None = None) -> Tensor:
        """UniP of step ``i`` from ``x = x_i`` (``history`` newest first), or UniC given ``m_t``."""
        k = self.step_order(i, schedule.steps)
        h = float(schedule.h[i])
        if self.prediction == "data":
            hh, ratio, c = -h, float(schedule.sigma[i + 1] / schedule.sigma[i]), float(schedule.alpha[i + 1])
        else:
            hh, ratio, c = h, float(schedule.alpha[i + 1] / schedule.alpha[i]), float(schedule.sigma[i + 1])
        B = hh if self.variant == "bh1" else math.expm1(hh)
        (lam_s, m_s), *prev = history[:k]
        r = [(lam_m - lam_s) / h for lam_m, _ in prev]
        D = [m_m - m_s for _, m_m in prev]
        if m_t is not None:
            r, D = r + [1.0], D + [m_t - m_s]
        x_t = ratio * x - c * hh * phi(1, hh) * m_s
        if r:
            rho = unipc_weights(r, hh, B, self.exact_weights)
            x_t = x_t - c * B * sum(rho_m / r_m * D_m for rho_m, r_m, D_m in zip(rho, r, D, strict=True))
        return x_t

    def step(self, model, schedule, state, output, ctx):
        """Consume the output at ``(x_eval, t_eval)``: finish step ``i`` with UniC (``stage = 1``), then
        take the next predictor. When the next step is the uncorrected last one, the state returned
        has ``stage = 2``: its predictor needs no new output, and ``step(..., output=None)`` takes it."""
        i, x, n, history = state.i, state.x, schedule.steps, state.history
        if state.stage != 2:
            m = self._m(model, output, state.x_eval, state.t_eval)
            if state.stage == 1:  # m is at the predictor's x~_{i+1}
                x = self.update(schedule, i, x, history, m_t=m)
                i += 1
            history = ((float(schedule.lam[i]), m),) + history[: self.order - 1]
            if i == n:
                return SamplerState(x=x, i=i, x_eval=x, t_eval=schedule.t[i], history=history)
            if i > state.i and not self.corrects(i, n):  # one grid step per call: the last predictor waits
                return SamplerState(x=x, i=i, x_eval=x, t_eval=schedule.t[i], stage=2, history=history)
        x_pred = self.update(schedule, i, x, history)
        if self.corrects(i, n):
            return SamplerState(x=x, i=i, x_eval=x_pred, t_eval=schedule.t[i + 1], stage=1, history=history)
        return SamplerState(x=x_pred, i=i + 1, x_eval=x_pred, t_eval=schedule.t[i + 1], history=history)
