r"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps"): exponential integrators of the probability-flow ODE in the half
log-SNR ``lam``, here with the noise prediction; :mod:`.dpm_solver_pp` has the data prediction.

**The exact solution.** In ``lam = log alpha - log sigma`` the PF ODE has an exactly integrable
linear part (DPM-Solver eq. 3.4, DPM-Solver++ eq. 8). From ``(t, lam_t)`` to ``(s, lam_s)``,
``h = lam_s - lam_t > 0``, and with ``F`` the network's prediction as a function of ``lam``:

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t - \alpha_s \int_{\lam_t}^{\lam_s} e^{-\lam} \hat\epsilon\, d\lam
           \quad\text{(noise)},\qquad
           x_s = \frac{\sigma_s}{\sigma_t} x_t + \sigma_s \int_{\lam_t}^{\lam_s} e^{\lam} \hat x_0\, d\lam
           \quad\text{(data)}.

Expanding ``F(lam) = sum_k F^(k)(lam_t) (lam - lam_t)^k / k!`` and integrating term by term
gives, with ``phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1}/(k-1)! du`` (``phi_1(z) = (e^z - 1)/z``,
``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z``),

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s \sum_{k\ge0} h^{k+1}\varphi_{k+1}(h)\, \hat\epsilon^{(k)},
           \qquad
           x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \sum_{k\ge0} h^{k+1}\varphi_{k+1}(-h)\, \hat x_0^{(k)}.

Both are ``x_s = ratio x_t + weight sum_k c_k F^(k)`` with ``c_k = h^{k+1} phi_{k+1}(s h)``, where
``(ratio, weight, s)`` is ``(alpha_s/alpha_t, -sigma_s, +1)`` for noise and
``(sigma_s/sigma_t, alpha_s, -1)`` for data; this module implements that once
(:class:`ExponentialIntegrator`), a subclass supplies ``F`` and the frame. Writing
``psi_k(z) = z^k phi_k(z) = e^z - sum_{j<k} z^j/j!`` (evaluated by its tail series for small
``|z|``, where the closed form cancels), ``c_k = s^{k+1} psi_{k+1}(s h)``:
``c_0 = 1 - e^{-h}``, ``c_1 = h - 1 + e^{-h}``, ``c_2 = h^2/2 - h + 1 - e^{-h}`` for data.
Keeping the terms up to ``k = p - 1`` with derivative estimates accurate to ``O(h^{p-k})`` makes a
step's local error ``O(h^{p+1})`` and the method of global order ``p``.

**Multistep (DPM-Solver++(2M), (3M); Lu et al. 2022b, Algorithm 2).** The derivatives at
``lam_i`` come from the predictions already made at ``lam_i, lam_{i-1}, lam_{i-2}`` (one new model
call per step). Interpolate them by the Newton polynomial with divided differences
``D1 = F[lam_i, lam_{i-1}]`` and ``D2 = F[lam_i, lam_{i-1}, lam_{i-2}]``,
``P(lam) = F_i + D1 (lam - lam_i) + D2 (lam - lam_i)(lam - lam_{i-1})``, and differentiate:

.. math::  F'(\lam_i) \approx D_1 + h_{i-1} D_2 \ (\text{error } O(h^2)), \qquad
           F''(\lam_i) \approx 2 D_2 \ (\text{error } O(h)), \qquad h_{i-1} = \lam_i - \lam_{i-1},

so ``x_s = ratio x + weight (c_0 F_i + c_1 (D1 + h_{i-1} D2) + c_2 2 D2)`` has local error
``c_1 O(h^2) + c_2 O(h) = O(h^4)``: third order, on any non-uniform grid. The published update
(and the public references, e.g. diffusers' ``multistep_dpm_solver_third_order_update``) uses
``D2 = h^2 D_2`` with the weight ``c_2 / h^2``, i.e. ``c_2 D_2`` where ``c_2 F''`` = ``2 c_2 D_2``
is needed: its local error keeps ``c_2 F''/2 ~ h^3 F''/12`` and the method converges at second
order only (tests/test_dpm_solver.py measures both). Order 2 uses ``F' ~ D1``; the first steps
warm up with orders 1 and 2, since no history exists yet. Their local errors are formally
``O(h^2)``, ``O(h^3)``, but near T the prediction varies by ``O(alpha_T)`` per unit lambda
(``x0_theta = E[x0] + O(alpha_T)``), so they carry a factor ``alpha_T^2`` (data) or ``alpha_T``
(noise), ~4e-5 and ~7e-3 for the default VP SDE: by this estimate third order is what one
measures up to ~1e4 steps (tests/test_dpm_solver.py measures it at 24-96).
A run that starts at high SNR loses that factor, and the warm-up caps the order at 2 (measured
at T = 0.3, alpha_T = 0.63).

Third order is an asymptotic statement. At low step counts the published, halved ``x0''`` term
acts as damping and is often the more accurate (on the 2D mixture, VP, log-SNR grid: mean endpoint
error 1.6e-2 against our 2.1e-2 at 15 steps, 4.7e-4 against our 2.7e-4 at 80); on a time-uniform
grid the final steps are long in lambda and order-3 extrapolation without ``lower_order_final`` is
worse than 2M for either coefficient (2.7 ours, 1.5 published, 0.37 for 2M at 10 steps).

**Singlestep (DPM-Solver-2, -3; Lu et al. 2022, Algorithms 1-2).** Intermediate points at
``lam_t + r h`` supply the derivatives: order 2 with ``r1 = 1/2`` (one order-1 step to the
midpoint, ``F' ~ (F_1 - F_0)/(r1 h)``), order 3 with ``r1 = 1/3, r2 = 2/3`` (an order-1 step to
``r1``, an order-2 step to ``r2``, then the final step). ``order`` model calls per step.

**solver_type** changes the second-order updates only: ``'taylor'`` is the expansion above,
``'dpmsolver'`` (the references' default, diffusers' "midpoint") replaces ``c_1 F'`` by
``c_0 h F'/2`` (equal to leading order) and, for singlestep order 3, uses the published final
step ``c_0 F_0 + c_1 (F_2 - F_0)/(r2 h)`` (third order because ``r2 = 2/3``), where ``'taylor'``
uses the quadratic through the three points. Both keep the order.

**lower_order_final** (default True, as the references) runs step ``i`` of ``N`` at order at most
``N - i``: the last step is first order, the one before at most second. The references do this only
below 10 (dpm-solver) or 15 (diffusers) steps, to stabilise the large final steps of few-step
grids; here it is unconditional, so it caps the global order at 2 (the last step's local error is
``O(h^2)``) and the declared ``order`` says so. Pass False for order 3; ``stats['orders']`` records
the order every step used. Near t_min the data prediction barely moves (``x0' = O(sigma^2)``), so on
the default VP SDE (t_min = 1e-3) the change it makes falls as ``h^2`` but is ~2% of the 3M error
at 80 steps and a third of it only at ~1300; on short time-uniform grids the lowered final steps
cut the 3M error 10-20 fold.
"""
from __future__ import annotations

import math
import operator
from typing import ClassVar

import torch
from torch import Tensor

from ..schedule import Schedule
from .base import GridPoint, Sampler, grid_points, register

__all__ = ["ExponentialIntegrator", "DPMSolver", "GridPoint", "psi"]

VARIANTS = ("multistep", "singlestep")
SOLVER_TYPES = ("dpmsolver", "taylor")
SINGLESTEP_R = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def psi(k: int, z: float) -> float:
    """``psi_k(z) = z^k phi_k(z) = e^z - sum_{j<k} z^j / j! = sum_{j>=k} z^j / j!``."""
    if abs(z) < 0.5:
        # The tail series: the closed form cancels to 1 - k digits' worth when |z| is small.
        term = z**k / math.factorial(k)
        total, j = 0.0, k
        while term != 0.0 and abs(term) > 1e-17 * abs(total):
            total += term
            j += 1
            term *= z / j
        return total
    return math.expm1(z) - sum(z**j / math.factorial(j) for j in range(1, k))


class _Weights:
    """A linear combination ``x * x_coef + sum_m v[m] F_m`` with scalar coefficients: the multistep
    formulas are linear in the state and the predictions, so running them on these gives the weights."""

    __slots__ = ("x", "v")

    def __init__(self, x: float, v: list[float]):
        self.x, self.v = x, v

    @classmethod
    def basis(cls, k: int) -> list[_Weights]:
        """``F_0 .. F_{k-1}`` themselves."""
        return [cls(0.0, [1.0 if j == m else 0.0 for j in range(k)]) for m in range(k)]

    def _pad(self, n: int) -> list[float]:
        return self.v + [0.0] * (n - len(self.v))

    def __add__(self, other: _Weights) -> _Weights:
        n = max(len(self.v), len(other.v))
        return _Weights(self.x + other.x, [a + b for a, b in zip(self._pad(n), other._pad(n), strict=True)])

    def __sub__(self, other: _Weights) -> _Weights:
        return self + other * -1.0

    def __mul__(self, c: float) -> _Weights:
        return _Weights(self.x * c, [a * c for a in self.v])

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> _Weights:
        return self * (1.0 / c)


class ExponentialIntegrator(Sampler):
    """DPM-Solver's stepping rules, for any prediction ``F`` a subclass defines.

    A subclass gives :meth:`prediction` (one counted model call) and :meth:`frame` (the ``ratio``,
    ``weight`` and sign ``s`` of the exact solution; see the module docstring).
    """

    orders: ClassVar[tuple[int, ...]] = (1, 2, 3)
    # The option sets the registry-wide conformance tests run: every order, variant and final-step
    # option, and the Taylor third-order singlestep. Not thresholding: it changes the ODE (clips x0
    # to [-1, 1]), so it cannot reproduce data outside that range; tests/test_dpm_solver.py covers it.
    conformance_options: ClassVar[tuple[dict, ...]] = tuple(
        {"order": k, "variant": v, "lower_order_final": lof} for k in (1, 2, 3) for v in VARIANTS for lof in (False, True)
    ) + ({"order": 3, "variant": "singlestep", "solver_type": "taylor", "lower_order_final": False},)

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool = True,
                 solver_type: str = "dpmsolver"):
        try:
            order_ok = not isinstance(order, bool) and operator.index(order) in self.orders
        except TypeError:
            order_ok = False
        if not order_ok:
            raise ValueError(f"order: {self.name!r} has orders {', '.join(map(str, self.orders))}, got {order!r}")
        order = operator.index(order)
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
        if not isinstance(lower_order_final, bool):
            raise ValueError(f"lower_order_final: expected True or False, got {lower_order_final!r}")
        if solver_type not in SOLVER_TYPES:
            raise ValueError(f"solver_type: expected one of {', '.join(map(repr, SOLVER_TYPES))}, got {solver_type!r}")
        self.solver_order = order
        self.variant = variant
        self.lower_order_final = lower_order_final
        self.solver_type = solver_type
        # A first-order last step has local error O(h^2): the global order is at most 2.
        self.convergence_order = min(order, 2) if lower_order_final else order
        self.calls_per_step = 1 if variant == "multistep" else order

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(order={self.solver_order}, variant={self.variant!r}, "
                f"lower_order_final={self.lower_order_final}, solver_type={self.solver_type!r})")

    # ----- what a subclass defines ------------------------------------------------------------
    def prediction(self, model, x: Tensor, t: float) -> Tensor:
        raise NotImplementedError

    def frame(self, p: GridPoint, q: GridPoint) -> tuple[float, float, int]:
        """``(ratio, weight, s)`` of the step from ``p`` to ``q``."""
        raise NotImplementedError

    # ----- the schedule of orders --------------------------------------------------------------
    def step_orders(self, steps: int) -> list[int]:
        """The order each of ``steps`` grid steps uses (warm-up and lower_order_final included)."""
        orders = []
        for i in range(steps):
            k = self.solver_order if self.variant == "singlestep" else min(self.solver_order, i + 1)
            orders.append(min(k, steps - i) if self.lower_order_final else k)
        return orders

    def expected_nfe(self, steps: int) -> int:
        if self.variant == "multistep":
            return steps
        return sum(self.step_orders(steps))

    # ----- one exponential-integrator step ------------------------------------------------------
    def taylor_step(self, x: Tensor, p: GridPoint, q: GridPoint, derivatives: list[Tensor]) -> Tensor:
        """``x_q = ratio x_p + weight sum_k c_k(h) derivatives[k]``, ``c_k = s^{k+1} psi_{k+1}(s h)``."""
        h = q.lam - p.lam
        ratio, weight, s = self.frame(p, q)
        out = ratio * x
        for k, d in enumerate(derivatives):
            out = out + (weight * s ** (k + 1) * psi(k + 1, s * h)) * d
        return out

    def second_order(self, F: Tensor, dF: Tensor, h: float) -> list[Tensor]:
        """The Taylor terms of a second-order step, per ``solver_type``."""
        if self.solver_type == "taylor":
            return [F, dF]
        return [F + (0.5 * h) * dF]  # c_0 (F + h F'/2): DPM-Solver's form, equal to c_0 F + c_1 F' to O(h^3)

    def multistep_derivatives(self, Fs: list[Tensor], lams: list[float], h: float) -> list[Tensor]:
        """Taylor terms at ``lams[0]`` from the predictions ``Fs`` (newest first) at ``lams``."""
        if len(Fs) == 1:
            return [Fs[0]]
        d1 = (Fs[0] - Fs[1]) / (lams[0] - lams[1])
        if len(Fs) == 2:
            return self.second_order(Fs[0], d1, h)
        d1_prev = (Fs[1] - Fs[2]) / (lams[1] - lams[2])
        d2 = (d1 - d1_prev) / (lams[0] - lams[2])
        # P'(lam_i) = D1 + (lam_i - lam_{i-1}) D2 and P'' = 2 D2 (the factor 2 is the fix).
        return [Fs[0], d1 + (lams[0] - lams[1]) * d2, 2.0 * d2]

    # ----- the two variants ---------------------------------------------------------------------
    def run(self, model, x, times, ctx):
        times = times.t if isinstance(times, Schedule) else times  # sample() hands every sampler its Schedule
        pts = grid_points(model.sde, times)
        orders = self.step_orders(len(pts) - 1)
        ctx.stats["orders"] = orders
        if self.variant == "multistep":
            return self._run_multistep(model, x, pts, orders, ctx)
        return self._run_singlestep(model, x, pts, orders, ctx)

    def _run_multistep(self, model, x, pts, orders, ctx):
        Fs: list[Tensor] = []
        lams: list[float] = []
        for i, k in enumerate(orders):
            p, q = pts[i], pts[i + 1]
            Fs = [self.prediction(model, x, p.t)] + Fs[: self.solver_order - 1]
            lams = [p.lam] + lams[: self.solver_order - 1]
            # The step is linear in the predictions: run the same derivative and Taylor formulas on the
            # unit vectors (scalars), then combine the tensors once, x_q = ratio x + sum_m w_m F_m, instead
            # of a dozen passes over the batch for the divided differences.
            w = self.taylor_step(_Weights(1.0, []), p, q,
                                 self.multistep_derivatives(_Weights.basis(k), lams[:k], q.lam - p.lam))
            x = x.mul(w.x)  # a fresh tensor: the in-place adds touch nothing else
            for F, c in zip(Fs[:k], w.v, strict=True):
                x.add_(F, alpha=c)
            ctx.step(i, x)
        return x

    def _run_singlestep(self, model, x, pts, orders, ctx):
        sde = model.sde
        # Every intermediate point of the run in one vectorised lam -> t inversion.
        targets = [p.lam + r * (q.lam - p.lam) for p, q in zip(pts[:-1], pts[1:], strict=True)
                   for r in SINGLESTEP_R[3] + SINGLESTEP_R[2]]
        mids = grid_points(sde, sde.t_of_lam(torch.tensor(targets, dtype=torch.float64)))
        for i, k in enumerate(orders):
            p, q = pts[i], pts[i + 1]
            m1, m2, m_half = mids[3 * i: 3 * i + 3]
            h = q.lam - p.lam
            F0 = self.prediction(model, x, p.t)
            if k == 1:
                x = self.taylor_step(x, p, q, [F0])
            elif k == 2:
                u = self.taylor_step(x, p, m_half, [F0])
                dF = (self.prediction(model, u, m_half.t) - F0) / (m_half.lam - p.lam)
                x = self.taylor_step(x, p, q, self.second_order(F0, dF, h))
            else:
                d1_, d2_ = m1.lam - p.lam, m2.lam - p.lam
                u1 = self.taylor_step(x, p, m1, [F0])
                f01 = (self.prediction(model, u1, m1.t) - F0) / d1_
                u2 = self.taylor_step(x, p, m2, [F0, f01])
                f02 = (self.prediction(model, u2, m2.t) - F0) / d2_
                if self.solver_type == "taylor":
                    f012 = (f02 - f01) / (d2_ - d1_)
                    x = self.taylor_step(x, p, q, [F0, f01 - d1_ * f012, 2.0 * f012])
                else:
                    x = self.taylor_step(x, p, q, [F0, f02])
            ctx.step(i, x)
        return x


@register
class DPMSolver(ExponentialIntegrator):
    r"""DPM-Solver with the noise prediction (Lu et al. 2022): ``F = eps_theta``, frame
    ``(alpha_s/alpha_t, -sigma_s, +1)``, i.e. ``x_s = alpha_s/alpha_t x_t - sigma_s sum_k psi_{k+1}(h) eps^(k)``.

    Order 1 is DDIM. Options: ``order`` 1-3, ``variant`` ``'multistep'`` (one call per step) or
    ``'singlestep'`` (``order`` calls per step), ``lower_order_final``, ``solver_type`` (see the
    module docstring). Dynamic thresholding acts on the data prediction: use ``'dpm_solver++'``.
    """

    name = "dpm_solver"

    def __init__(self, order: int = 2, variant: str = "multistep", lower_order_final: bool = True,
                 solver_type: str = "dpmsolver", thresholding: bool = False):
        if thresholding is not False:
            raise ValueError(f"thresholding: 'dpm_solver' predicts noise; dynamic thresholding clips the data "
                             f"prediction and is available in 'dpm_solver++' only (got thresholding={thresholding!r})")
        super().__init__(order, variant, lower_order_final, solver_type)
        self.thresholding = False

    def prediction(self, model, x, t):
        return model.to_eps(model.predict(x, t), x, t)

    def frame(self, p, q):
        return q.alpha / p.alpha, -q.sigma, 1
