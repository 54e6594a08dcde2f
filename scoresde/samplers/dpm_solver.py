r"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps") with the noise prediction ``F = eps_theta``; its stepping rules are
shared with DPM-Solver++ (:mod:`.dpm_solver_pp`, the data prediction). The derivation, the third-order
multistep correction and ``lower_order_final`` are explained in :mod:`._phi`.

Step ``i`` goes from ``t_i`` to ``t_{i+1}``, ``h_i = lam_{i+1} - lam_i``, and is the exact solution
truncated after ``p`` Taylor terms, ``x_{i+1} = alpha_{i+1}/alpha_i x_i - sigma_{i+1} sum_{k<p}
h_i^{k+1} phi_{k+1}(h_i) F^(k)(lam_i)``, with the derivatives from earlier steps or from stage points:

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

from torch import Tensor

from ._exponential import SINGLESTEP_R, ExponentialIntegrator, Point, grid_point, stage_point
from ._phi import phi
from .base import SamplerState, register

__all__ = ["ExponentialIntegrator", "DPMSolverSteps", "DPMSolver", "Point"]


class DPMSolverSteps(ExponentialIntegrator):
    """The multistep and singlestep updates, in the frame of a subclass (noise or data prediction)."""

    def step(self, model, schedule, state, output, ctx):
        if self.variant == "multistep":
            return self.multistep_step(model, schedule, state, output)
        return self.singlestep_step(model, schedule, state, output)

    def multistep_step(self, model, schedule, state: SamplerState, output: Tensor) -> SamplerState:
        """kM: one call at ``x_i``; the derivatives from ``F`` at this and the earlier grid points."""
        i, x = state.i, state.x
        p, q = grid_point(schedule, i), grid_point(schedule, i + 1)
        history = ((p.lam, self.prediction(model, output, x, p.t)),) + state.history  # newest first
        k = self.step_order(i, schedule.steps)
        x_next = self.exponential_step(x, p, q, self.multistep_derivatives(history[:k], schedule.h[i]))
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=q.t, history=history[: self.order - 1])

    def multistep_derivatives(self, history: tuple, h: Tensor) -> list[Tensor]:
        """Taylor terms at ``lam_i`` from ``history = ((lam_i, F_i), (lam_{i-1}, F_{i-1}), ...)``."""
        (lam_i, F_i), *older = history
        if not older:
            return [F_i]
        (lam_j, F_j), *older = older
        D1 = (F_i - F_j) / (lam_i - lam_j)
        if not older:
            return self.second_order_terms(F_i, D1, h)
        (lam_k, F_k), = older
        D2 = (D1 - (F_j - F_k) / (lam_j - lam_k)) / (lam_i - lam_k)
        return [F_i, D1 + (lam_i - lam_j) * D2, 2 * D2]

    def second_order_terms(self, F: Tensor, dF: Tensor, h: Tensor) -> list[Tensor]:
        """``'taylor'``: ``[F, F']``; ``'dpmsolver'``: Algorithms 1-2's ``D_i = F + h F'/2`` alone
        (``h phi_1 D_i`` equals ``h phi_1 F + h^2 phi_2 F'`` to O(h^3))."""
        if self.solver_type == "taylor":
            return [F, dF]
        return [F + h / 2 * dF]

    def singlestep_step(self, model, schedule, state: SamplerState, output: Tensor) -> SamplerState:
        """kS: ``k`` calls per step, at ``x_i`` and at the stages; ``history`` holds ``F`` at those made so far."""
        i, x = state.i, state.x
        h = schedule.h[i]
        Fs = [*state.history, self.prediction(model, output, state.x_eval, state.t_eval)]
        k = self.step_order(i, schedule.steps)
        r = SINGLESTEP_R.get(k, ())
        if len(Fs) < k:  # the next stage, a step of order len(Fs) from x_i
            s = stage_point(schedule, i, r[len(Fs) - 1])
            derivatives = Fs[:1] if len(Fs) == 1 else [Fs[0], (Fs[1] - Fs[0]) / (r[0] * h)]
            u = self.exponential_step(x, grid_point(schedule, i), s, derivatives)
            return SamplerState(x=x, i=i, x_eval=u, t_eval=s.t, stage=len(Fs), history=tuple(Fs))
        if k == 1:
            derivatives = Fs
        elif k == 2:
            derivatives = self.second_order_terms(Fs[0], (Fs[1] - Fs[0]) / (r[0] * h), h)
        elif self.solver_type == "taylor":  # the quadratic through F at lam_i, u_1, u_2, differentiated at lam_i
            f01, f02 = (Fs[1] - Fs[0]) / (r[0] * h), (Fs[2] - Fs[0]) / (r[1] * h)
            f012 = (f02 - f01) / ((r[1] - r[0]) * h)
            derivatives = [Fs[0], f01 - r[0] * h * f012, 2 * f012]
        else:  # DPM-Solver-3's final step: F' = (F(u_2) - F_i)/(r_2 h)
            derivatives = [Fs[0], (Fs[2] - Fs[0]) / (r[1] * h)]
        q = grid_point(schedule, i + 1)
        x_next = self.exponential_step(x, grid_point(schedule, i), q, derivatives)
        return SamplerState(x=x_next, i=i + 1, x_eval=x_next, t_eval=q.t)


@register
class DPMSolver(DPMSolverSteps):
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

    def prediction(self, model, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """``F = eps_theta`` from the raw network output at ``(x, t)``."""
        return model.to_eps(output, x, t)

    def exponential_step(self, x: Tensor, p: Point, q: Point, derivatives: list[Tensor]) -> Tensor:
        """``x_q = alpha_q/alpha_p x_p - sigma_q sum_k h^{k+1} phi_{k+1}(h) F^(k)``, ``h = lam_q - lam_p``."""
        h = q.lam - p.lam
        return q.alpha / p.alpha * x - q.sigma * sum(h ** (k + 1) * phi(k + 1, h) * d for k, d in enumerate(derivatives))
