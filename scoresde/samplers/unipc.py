r"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 1-3): a multistep exponential integrator in lambda (UniP) with a
corrector (UniC) that raises its order by one at no extra model call. The update, its order
conditions and the weights are in :mod:`._unipc`.

Costs: one call per step; the **last** step's corrector needs ``m`` at ``t_min``, one extra call
(``final_corrector=True``; off by default, as in the paper and diffusers: the last UniP-p step's local
error O(h^{p+1}) is the size of the global error). Step ``i`` has predictor order ``min(order, i + 1)``
(warm-up), at most ``steps - i`` where the final steps are lowered (``lower_order_final``, :mod:`._phi`):
global order 2 then (3 with the final corrector). Near T the warm-up's error carries ``alpha_T``, so
order 3 + UniC measures 4 from T (tests/test_unipc.py).

State: ``x`` is the corrected state at ``t_i``; while step ``i`` waits for its corrector ``stage = 1``
and ``x_eval`` is the predictor's ``x~_{i+1}``; ``stage = 2`` marks an uncorrected last step, whose
predictor needs no model output; ``history`` holds ``(lam, m)`` at the grid points, newest first.
The coefficients are 0-d float64 tensors of the schedule, so a grid that requires grad gets its gradient.
"""
from __future__ import annotations

import math
import numbers

from torch import Tensor

from ._phi import LOWER_ORDER_FINAL_BELOW, check_lower_order_final, lowers_final
from ._thresholding import check_threshold_options, dynamic_threshold
from ._unipc import unipc_update, unipc_weights
from .base import SamplerState, SteppedSampler, register

__all__ = ["UniPC", "unipc_weights"]

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


@register
class UniPC(SteppedSampler):
    r"""UniP-``order`` (1-3) with the UniC ``corrector`` (global order ``order + 1``); ``variant`` 'bh1'/'bh2',
    ``prediction`` 'data'/'noise', ``lower_order_final`` (None: below 15 steps), ``final_corrector``,
    ``exact_weights``, ``thresholding`` with ``percentile`` in (0, 1] and ``max_value`` > 0 (data only)."""

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

    @property
    def convergence_order(self) -> int:
        """The global order from :data:`~._phi.LOWER_ORDER_FINAL_BELOW` steps on."""
        return self.convergence_order_for(LOWER_ORDER_FINAL_BELOW)

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

    def corrects(self, i: int, steps: int) -> bool:
        return self.corrector and (i < steps - 1 or self.final_corrector)

    def needs_output(self, state):
        return state.stage != 2  # the uncorrected last predictor reuses the history (see :meth:`step`)

    def call_times(self, schedule, start: int = 0) -> Tensor:
        """``t_i`` for every step (the corrector of step ``i`` uses the call at ``t_{i+1}``), and ``t_min``
        for the final corrector."""
        return schedule.t[start:] if self.corrects(schedule.steps - 1, schedule.steps) else schedule.t[start:-1]

    def run_stats(self, steps: int) -> dict:
        return {"orders": self.step_orders(steps), "corrected": [self.corrects(i, steps) for i in range(steps)]}

    def step_orders(self, steps: int) -> list[int]:
        return [self.step_order(i, steps) for i in range(steps)]

    def _m(self, model, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        if self.prediction == "noise":
            return model.to_eps(output, x, t)
        x0 = model.to_x0(output, x, t)
        return dynamic_threshold(x0, self.percentile, self.max_value) if self.thresholding else x0

    def update(self, schedule, i: int, x: Tensor, history: tuple, m_t: Tensor | None = None) -> Tensor:
        """UniP of step ``i`` from ``x = x_i`` (``history`` newest first), or UniC given ``m_t``."""
        k = self.step_order(i, schedule.steps)
        return unipc_update(schedule, i, x, history[:k], m_t, self.prediction, self.variant, self.exact_weights)

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
            history = ((schedule.lam[i], m),) + history[: self.order - 1]
            if i == n:
                return SamplerState(x=x, i=i, x_eval=x, t_eval=schedule.t[i], history=history)
            if i > state.i and not self.corrects(i, n):  # one grid step per call: the last predictor waits
                return SamplerState(x=x, i=i, x_eval=x, t_eval=schedule.t[i], stage=2, history=history)
        x_pred = self.update(schedule, i, x, history)
        if self.corrects(i, n):
            return SamplerState(x=x, i=i, x_eval=x_pred, t_eval=schedule.t[i + 1], stage=1, history=history)
        return SamplerState(x=x_pred, i=i + 1, x_eval=x_pred, t_eval=schedule.t[i + 1], history=history)
