r"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") with the noise prediction ``F = eps_theta``. The stepping rules here
are shared with DPM-Solver++ (:mod:`.dpm_solver_pp`, the data prediction); the derivation, the
third-order multistep correction and ``lower_order_final`` are explained in :mod:`._phi`.

Step ``i`` goes from ``t_i`` to ``t_{i+1}`` with ``h_i = lam_{i+1} - lam_i`` (the papers count the
step into ``t_i`` as step ``i``) and is the exact solution truncated after ``p`` Taylor terms,

.. math::  x_{i+1} = \frac{\alpha_{i+1}}{\alpha_i} x_i
           - \sigma_{i+1} \sum_{k<p} h_i^{k+1} \varphi_{k+1}(h_i)\, F^{(k)}(\lam_i),

with the derivatives from earlier steps or from stage points:

* **multistep** (DPM-Solver++ Algorithm 2; one call per step): with ``r_i = h_{i-1}/h_i``, 2M uses
  ``D_i = (1 + 1/(2 r_i)) F_i - 1/(2 r_i) F_{i-1}`` in place of ``F_i`` (``solver_type='dpmsolver'``)
  or ``F' = (F_i - F_{i-1})/h_{i-1}`` (``'taylor'``); 3M uses ``F' = D_1 + h_{i-1} D_2``,
  ``F'' = 2 D_2`` (divided differences). The first steps warm up at orders 1 and 2.
* **singlestep** (DPM-Solver Algorithms 1-2, DPM-Solver++ Algorithm 1; ``order`` calls per step):
  stages ``u_j`` at ``lam_i + r_j h_i``, ``r = (1/2)`` for order 2 and ``(1/3, 2/3)`` for order 3,
  each a lower-order step from ``x_i``; ``F' = (F(u_1) - F_i)/(r_1 h_i)``. The third-order final
  step uses ``F' = (F(u_2) - F_i)/(r_2 h_i)`` (``'dpmsolver'``: third order because ``r_2 = 2/3``) or
  the quadratic through the three points (``'taylor'``).

Order ``p`` (``order``) with ``lower_order_final=False``; at most 2 when the final steps are lowered
(default: below 15 steps). Order 1 is DDIM.
"""
from __future__ import annotations

import numbers
from typing import ClassVar, NamedTuple

from torch import Tensor

from ._phi import LOWER_ORDER_FINAL_BELOW, check_lower_order_final, lowers_final, phi
from .base import SamplerState, SteppedSampler, register

__all__ = ["ExponentialIntegrator", "DPMSolver"]

VARIANTS = ("multistep", "singlestep")
SOLVER_TYPES = ("dpmsolver", "taylor")
SINGLESTEP_R = {2: (1 / 2,), 3: (1 / 3, 2 / 3)}


class Point(NamedTuple):  # a time with its log-SNR and marginal coefficients (0-d float64 tensors)
    t: Tensor
    lam: Tensor
    alpha: Tensor
    sigma: Tensor


def grid_point(schedule, j: int) -> Point:
    return Point(schedule.t[j], schedule.lam[j], schedule.alpha[j], schedule.sigma[j])


def stage_point(schedule, i: int, r: float) -> Point:
    """The point at ``lam_i + r h_i`` inside grid step ``i``."""
    lam = schedule.lam[i] + r * schedule.h[i]
    t, alpha, sigma = schedule.at_lam(lam)
    return Point(t, lam, alpha, sigma)


def _midpoint_2(F: Tensor, dF: Tensor, h: Tensor) -> list[Tensor]:
    """Algorithms 1-2's ``D_i = F_i + (F_i - F_j)/(2 r_i)``, ``r_i = (lam_i - lam_j)/h_i``, i.e. ``F + h F'/2``:
    ``h phi_1 D_i`` equals ``h phi_1 F + h^2 phi_2 F'`` to O(h^3)."""
    return [F + h / 2 * dF]


def _taylor_2(F: Tensor, dF: Tensor, h: Tensor) -> list[Tensor]:
    return [F, dF]  # h phi_1 F + h^2 phi_2 F'


def _published_3s(Fs: list[Tensor], h: Tensor) -> list[Tensor]:
    """DPM-Solver-3's final step: ``F' = (F(u_2) - F_i)/(r_2 h)``."""
    return [Fs[0], (Fs[2] - Fs[0]) / (SINGLESTEP_R[3][1] * h)]


def _quadratic_3s(Fs: list[Tensor], h: Tensor) -> list[Tensor]:
    """The quadratic through ``F`` at ``lam_i``, ``u_1``, ``u_2``, differentiated at ``lam_i``."""
    r1, r2 = SINGLESTEP_R[3]
    f01, f02 = (Fs[1] - Fs[0]) / (r1 * h), (Fs[2] - Fs[0]) / (r2 * h)
    f012 = (f02 - f01) / ((r2 - r1) * h)
    return [Fs[0], f01 - r1 * h * f012, 2 * f012]


class ExponentialIntegrator(SteppedSampler):
    """DPM-Solver's stepping rules for a prediction ``F`` and an exact-solution frame a subclass gives."""

    orders: ClassVar[tuple[int, ...]] = (1, 2, 3)
    # Not thresholding: it changes the ODE, so the order claims do not hold; tests/test_dpm_solver.py covers it.
    conformance_options: ClassVar[tuple[dict, ...]] = tuple(
        {"order": k, "variant": v, **lof} for k in (1, 2, 3) for v in VARIANTS for lof in ({}, {"lower_order_final": False})
    ) + tuple({"order": 3, "variant": v, "lower_order_final": True} for v in VARIANTS) + (
        {"order": 3, "variant": "singlestep", "solver_type": "taylor", "lower_order_final": False},)

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool | None = None,
                 solver_type: str = "dpmsolver"):
        if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order not in self.orders:
            raise ValueError(f"order: {self.name!r} has orders {', '.join(map(str, self.orders))}, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type: expected one of {', '.join(map(repr, SOLVER_TYPES))}, got {solver_type!r}")
        self.order, self.variant, self.solver_type = int(order), variant, solver_type
        self.lower_order_final = check_lower_order_final(lower_order_final)
        self.calls_per_step = 1 if variant == "multistep" else order
        self.convergence_order = self.convergence_order_for(LOWER_ORDER_FINAL_BELOW)
        self._update = self._multistep if variant == "multistep" else self._singlestep
        self._second_order = _taylor_2 if solver_type == "taylor" else _midpoint_2
        self._third_order_singlestep = _quadratic_3s if solver_type == "taylor" else _published_3s

    def prediction(self, model, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The prediction ``F`` the update integrates, from the raw network output at ``(x, t)``."""
        return model.to_eps(output, x, t)

    def exponential_step(self, x: Tensor, p: Point, q: Point, derivatives: list[Tensor]) -> Tensor:
        """``x_q = alpha_q/alpha_p x_p - sigma_q sum_k h^{k+1} phi_{k+1}(h) F^(k)``, ``h = lam_q - lam_p``."""
        h = q.lam - p.lam
        return q.alpha / p.alpha * x - q.sigma * sum(h ** (k + 1) * phi(k + 1, h) * d for k, d in enumerate(derivatives))

    def step_order(self, i: int, steps: int) -> int:
        """The order of grid step ``i`` of ``steps``: warm-up (multistep) and lower_order_final."""
        k = self.order if self.variant == "singlestep" else min(self.order, i + 1)
        return min(k, steps - i) if lowers_final(self.lower_order_final, steps) else k

    def step_orders(self, steps: int) -> list[int]:
        return [self.step_order(i, steps) for i in range(steps)]  # also ctx.stats['orders']

    def convergence_order_for(self, steps: int) -> int:
        """The global order of a run of ``steps`` steps: a first-order last step caps it at 2."""
        return min(self.order, 2) if lowers_final(self.lower_order_final, steps) else self.order

    def expected_nfe(self, steps: int) -> int:
        return steps if self.variant == "multistep" else sum(self.step_orders(steps))

    def run(self, model, x, schedule, ctx):
        ctx.stats["orders"] = self.step_orders(schedule.steps)
        return super().run(model, x, schedule, ctx)

    def step(self, model, schedule, state, output, ctx):
        return self._update(model, schedule, state, output)

    def multistep_derivatives(self, history: tuple, h: Tensor) -> list[Tensor]:
        """Taylor terms at ``lam_i`` from ``history = ((lam_i, F_i), (lam_{i-1}, F_{i-1}), ...)``."""
        (lam_i, F_i), *older = history
        if not older:
            return [F_i]
        (lam_j, F_j), *older = older
        D1 = (F_i - F_j) / (lam_i - lam_j)
        if not older:
            return self._second_order(F_i, D1, h)
        (lam_k, F_k), = older
        D2 = (D1 - (F_j - F_k) / (lam_j - lam_k)) / (lam_i - lam_k)
        return [F_i, D1 + (lam_i - lam_j) * D2, 2 * D2]

    def _multistep(self, model, schedule, state, output):
        i, x = state.i, state.x
        p, q = grid_point(schedule, i), grid_point(schedule, i + 1)
        history = ((p.lam, self.prediction(model, output, x, p.t)),) + state.history
        k = self.step_order(i, schedule.steps)
        x_next = self.exponential_step(x, p, q, self.multistep_derivatives(history[:k], schedule.h[i]))
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=q.t, history=history[: self.order - 1])

    def _singlestep(self, model, schedule, state, output):
        # history: F at x_i, then at the stage points made so far in this step
        i, x = state.i, state.x
        h = schedule.h[i]
        Fs = [*state.history, self.prediction(model, output, state.x_eval, state.t_eval)]
        k = self.step_order(i, schedule.steps)
        if len(Fs) < k:  # the next stage, a step of order len(Fs) from x_i
            r = SINGLESTEP_R[k]
            s = stage_point(schedule, i, r[len(Fs) - 1])
            derivatives = Fs[:1] if len(Fs) == 1 else [Fs[0], (Fs[1] - Fs[0]) / (r[0] * h)]
            u = self.exponential_step(x, grid_point(schedule, i), s, derivatives)
            return SamplerState(x=x, i=i, x_eval=u, t_eval=s.t, stage=len(Fs), history=tuple(Fs))
        if k == 1:
            derivatives = Fs
        elif k == 2:
            derivatives = self._second_order(Fs[0], (Fs[1] - Fs[0]) / (SINGLESTEP_R[2][0] * h), h)
        else:
            derivatives = self._third_order_singlestep(Fs, h)
        q = grid_point(schedule, i + 1)
        x_next = self.exponential_step(x, grid_point(schedule, i), q, derivatives)
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=q.t)


@register
class DPMSolver(ExponentialIntegrator):
    r"""DPM-Solver with the noise prediction (Lu et al. 2022). Order 1 is DDIM.

    Options: ``order`` 1-3, ``variant`` ``'multistep'`` or ``'singlestep'``, ``lower_order_final``
    (None: below 15 steps; True/False force it), ``solver_type`` ``'dpmsolver'`` or ``'taylor'``.
    Dynamic thresholding acts on the data prediction: use ``'dpm_solver++'``.
    """

    name = "dpm_solver"

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool | None = None,
                 solver_type: str = "dpmsolver", thresholding: bool = False):
        if thresholding is not False:
            raise ValueError(f"thresholding: 'dpm_solver' predicts noise; dynamic thresholding clips the data "
                             f"prediction and is available in 'dpm_solver++' only (got thresholding={thresholding!r})")
        super().__init__(order, variant, lower_order_final, solver_type)
        self.thresholding = False
