r"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", sec. 3 and app. C): a multistep exponential integrator in lambda (UniP) with a
corrector (UniC) that raises its order by one at no extra model call.

With the data prediction ``m = x0_theta`` the probability-flow ODE is solved exactly by
``x_t = sigma_t/sigma_s x_s + sigma_t int_{lam_s}^{lam_t} e^lam m(lam) dlam``. Expanding ``m`` in
``lam - lam_s`` with ``h = lam_t - lam_s`` and ``hh = -h``,

.. math::  x_t = \frac{\sigma_t}{\sigma_s} x_s - \alpha_t\, h\varphi_1(hh)\, m_s
           - \alpha_t B(h) \sum_{m=1}^{K} \rho_m \frac{D_m}{r_m},
           \qquad D_m = m_{s_m} - m_s,\quad r_m = \frac{\lambda_{s_m} - \lambda_s}{h},

where ``h phi_1(hh) = expm1(hh)`` and ``B(h) = hh`` (variant ``'bh1'``) or ``expm1(hh)`` (``'bh2'``).
``D_m / r_m = sum_k r_m^{k-1} h^k/k! m^{(k)}``, so matching the Taylor terms ``k = 1..K`` gives the
Vandermonde system (the paper's theorem 3.1 writes it in ``r h`` rather than ``r``)

.. math::  \sum_m \rho_m r_m^{k-1} = b_k = \frac{hh\, \varphi_{k+1}(hh)\, k!}{B(h)}, \qquad k = 1..K,

with ``phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1}/(k-1)! du``. The noise prediction ``m = eps_theta`` is
the same with ``hh = h`` and the frame ``(alpha_t/alpha_s, sigma_t)`` in place of
``(sigma_t/sigma_s, alpha_t)``.

* **UniP-p** (predictor, order p): the ``K = p - 1`` previous outputs ``m_{s_m}`` (``r_m < 0``).
  Local error O(h^{p+1}).
* **UniC** (corrector): after the predictor lands on ``x~_t``, the model output ``m_t = m(x~_t)``
  that the next step needs anyway joins as ``r_K = 1`` (``K = p``), and the same update from
  ``x_s`` is recomputed. Local error O(h^{p+2}): global order ``p + 1`` with one call per step.
  ``m_t`` stays the one evaluated at the predictor's ``x~_t`` (not re-evaluated at the corrected
  state); the paper's order analysis covers this, and the tests measure it.

Solved exactly, ``rho`` is proportional to ``1/B(h)`` and ``B(h)`` cancels from the update. A
one-term system (UniP-2, or UniC after a first-order predictor) uses ``rho = 1/2`` instead, as the
published UniPC code and diffusers' ``UniPCMultistepScheduler`` do; ``b_1 = 1/2 + O(h)``, so the
order is the same, and this is the only place where ``'bh1'`` and ``'bh2'`` differ
(``exact_weights=True`` solves it too, and then the two variants coincide).

Costs and orders, for ``steps`` grid steps:

* one model call per step. The corrector of the **last** step needs ``m`` at ``t_min``, one extra
  call: ``final_corrector=True`` pays it (``expected_nfe = steps + 1``), the default skips it
  (``expected_nfe = steps``, as in the paper and diffusers). Skipping does not lower the order: one
  UniP-p step has local error O(h^{p+1}), the size of the global error.
* warm-up: step ``i`` uses predictor order ``min(order, i + 1)``. ``lower_order_final=True``
  (default False) also uses ``min(order, steps - i)``, so the last step is first order; its local
  error O(h^2) (O(h^3) with the final corrector) caps the global order at 2 (3), which is why it
  is an option and not a silent default as in diffusers.
* the warm-up has the same effect in principle: the first step is UniP-1 + UniC, local O(h^3),
  which bounds the global order of ``order=3`` by 3. Its error constant is the lambda-derivative of
  ``m`` near T, which carries a factor ``alpha_T`` (``~ 7e-3`` for the default VP SDE), so from T
  the fourth-order term dominates over the usual step counts; started at an intermediate time
  (``T=0.3``) the order measures 3, and 4 again once the two warm-up steps are split into small
  ones (tests/test_unipc.py). Likewise the last step's constant near a small t_min carries
  ``sigma^2/alpha^2 = e^{-2 lam}`` (data prediction), which hides the effect of
  ``lower_order_final`` unless t_min is moderate (at t_min = 1e-3 it measures 2.8, at 0.1 it is 2).

``ctx.stats['orders']`` lists the predictor order of each step, ``ctx.stats['corrected']`` whether
UniC corrected the state at the end of that step.

**Dynamic thresholding** (Saharia et al. 2022, sec. 2.3; data prediction only): per sample,
``s = clamp(quantile(|x0|, percentile), 1, max_value)``, ``x0 <- clamp(x0, -s, s) / s``. It
changes the ODE being solved, so the order claims hold without it.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..schedule import Schedule
from ._thresholding import check_threshold_options, dynamic_threshold
from .base import Sampler, grid_points, register

__all__ = ["UniPC", "phi", "unipc_weights"]

VARIANTS = ("bh1", "bh2")
PREDICTIONS = ("data", "noise")


def phi(k: int, z: float) -> float:
    r"""``phi_k(z) = int_0^1 e^{(1-u) z} u^{k-1}/(k-1)! du = sum_j z^j/(j+k)!`` (``phi_0 = e^z``).

    The recursion ``phi_{k+1} = (phi_k - 1/k!)/z`` loses about ``k log10(1/|z|)`` digits for small
    ``|z|``; the series is used there instead (at most 30 terms: the tail is below 1e-30 for ``|z| < 1``).
    """
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(30):
            total += term
            if abs(term) < 1e-17 * abs(total):
                break
            term *= z / (j + k + 1)
        return total
    val = math.exp(z)
    for j in range(k):
        val = (val - 1.0 / math.factorial(j)) / z
    return val


def unipc_weights(r: list[float], hh: float, B: float, exact: bool = False) -> list[float]:
    r"""Solve ``sum_m rho_m r_m^{k-1} = hh phi_{k+1}(hh) k!/B``, ``k = 1..len(r)``, in float64.

    With one node and ``exact=False`` the published ``rho = 1/2`` (the limit of ``b_1`` as h -> 0).
    """
    return _weights(r, _rhs(hh, B, len(r)), exact)


def _rhs(hh: float, B: float, K: int) -> list[float]:
    """``b_k = hh phi_{k+1}(hh) k!/B``, ``k = 1..K``."""
    return [hh * phi(k + 1, hh) * math.factorial(k) / B for k in range(1, K + 1)]


def _weights(r: list[float], b: list[float], exact: bool) -> list[float]:
    """Solve ``sum_m rho_m r_m^{k-1} = b_k`` (the first ``len(r)`` of ``b``) by Lagrange's formula.

    ``L_m(u) = prod_{n != m} (u - r_n)/(r_m - r_n) = sum_j c_{mj} u^j`` interpolates every
    ``u^k``, k < K, exactly, so ``sum_m c_{mj} r_m^k = delta_{jk}`` and ``rho_m = sum_j c_{mj} b_{j+1}``.
    Written out for K <= 3 (all UniPC uses), so a step costs a few float operations, not a linear solve.
    """
    K = len(r)
    if K == 1:
        return [b[0] if exact else 0.5]
    if K == 2:
        (r1, r2), (b1, b2) = r, b[:2]
        return [(b2 - r2 * b1) / (r1 - r2), (b2 - r1 * b1) / (r2 - r1)]
    if K == 3:
        b1, b2, b3 = b[:3]
        return [(b3 - (r_a + r_b) * b2 + r_a * r_b * b1) / ((r_m - r_a) * (r_m - r_b))
                for r_m, r_a, r_b in ((r[0], r[1], r[2]), (r[1], r[0], r[2]), (r[2], r[0], r[1]))]
    rho = []
    for m, r_m in enumerate(r):
        c, den = [1.0], 1.0  # coefficients of prod_{n != m} (u - r_n), lowest degree first
        for n, r_n in enumerate(r):
            if n != m:
                c = [a - r_n * b_ for a, b_ in zip([0.0, *c], [*c, 0.0], strict=True)]
                den *= r_m - r_n
        rho.append(sum(c_j * b_j for c_j, b_j in zip(c, b, strict=False)) / den)
    return rho


def _combine(base: Tensor, terms: list[Tensor], weights: list[float]) -> Tensor:
    """``base + sum_m w_m term_m`` as one fused multiply-add per term, on a fresh tensor."""
    if not terms:
        return base
    out = torch.add(base, terms[0], alpha=weights[0])
    for term, w in zip(terms[1:], weights[1:], strict=True):
        out.add_(term, alpha=w)
    return out


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


@register
class UniPC(Sampler):
    r"""UniPC multistep sampler (Zhao et al. 2023): UniP-``order`` with the UniC corrector.

    Options: ``order`` in {1, 2, 3} (the predictor's), ``corrector`` (UniC on, default True;
    global order ``order + 1``), ``variant`` ``'bh1'`` (B(h) = h) or ``'bh2'`` (B(h) = e^h - 1),
    ``prediction`` ``'data'`` or ``'noise'``, ``lower_order_final`` (default False; caps the order,
    see the module docstring), ``final_corrector`` (default False; UniC on the last step for one
    extra call), ``exact_weights`` (solve one-term systems instead of rho = 1/2), and
    ``thresholding`` with ``percentile`` in (0, 1] and ``max_value`` >= 1 (data prediction only).
    """

    name = "unipc"
    calls_per_step = 1

    def __init__(self, order: int = 3, corrector: bool = True, variant: str = "bh2", prediction: str = "data",
                 lower_order_final: bool = False, final_corrector: bool = False, exact_weights: bool = False,
                 thresholding: bool = False, percentile: float = 0.995, max_value: float = math.inf):
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"order: UniPC's predictor has order 1, 2 or 3, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"variant: unknown {variant!r}; allowed: 'bh1' (B(h) = h), 'bh2' (B(h) = e^h - 1)")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction: unknown {prediction!r}; allowed: 'data' (x0), 'noise' (eps)")
        self.corrector = _check_bool("corrector", corrector)
        self.lower_order_final = _check_bool("lower_order_final", lower_order_final)
        self.final_corrector = _check_bool("final_corrector", final_corrector)
        self.exact_weights = _check_bool("exact_weights", exact_weights)
        self.thresholding = _check_bool("thresholding", thresholding)
        if self.thresholding and prediction != "data":
            raise ValueError("thresholding: dynamic thresholding clips the data prediction; "
                             f"use prediction='data' (got prediction={prediction!r})")
        percentile, max_value = check_threshold_options(percentile, max_value)
        self.order_p = int(order)
        self.variant, self.prediction = variant, prediction
        self.percentile, self.max_value = percentile, max_value
        order_global = self.order_p + int(self.corrector)
        if self.lower_order_final:
            # the last step is UniP-1 (local O(h^2)), or UniP-1 + UniC with the final corrector (O(h^3))
            order_global = min(order_global, 2 + int(self.corrector and self.final_corrector))
        self.convergence_order = order_global

    def __repr__(self) -> str:
        return (f"UniPC(order={self.order_p}, corrector={self.corrector}, variant={self.variant!r}, "
                f"prediction={self.prediction!r}, lower_order_final={self.lower_order_final}, "
                f"final_corrector={self.final_corrector}, exact_weights={self.exact_weights}, "
                f"thresholding={self.thresholding})")

    def expected_nfe(self, steps: int) -> int:
        """``steps`` calls, plus one at t_min when the last step's UniC is on (``final_corrector``)."""
        return steps + int(self.corrector and self.final_corrector)

    def step_orders(self, steps: int) -> list[int]:
        """Predictor order of each step: warm-up ``i + 1``, and ``steps - i`` with lower_order_final."""
        orders = [min(self.order_p, i + 1) for i in range(steps)]
        if self.lower_order_final:
            orders = [min(p, steps - i) for i, p in enumerate(orders)]
        return orders

    def _evaluate(self, model, x: Tensor, t: float) -> Tensor:
        """One counted call, converted to the prediction the update integrates."""
        out = model.predict(x, t)
        if self.prediction == "noise":
            return model.to_eps(out, x, t)
        x0 = model.to_x0(out, x, t)
        return dynamic_threshold(x0, self.percentile, self.max_value) if self.thresholding else x0

    def run(self, model, x, times, ctx):
        times = times.t if isinstance(times, Schedule) else times  # sample() hands every sampler its Schedule
        pts = grid_points(model.sde, times)
        data = self.prediction == "data"
        bh1 = self.variant == "bh1"
        steps = len(times) - 1
        orders = self.step_orders(steps)
        corrected: list[bool] = []

        # history of (lam, m) at the grid times, newest last; m evaluated at the predictor's state
        hist: list[tuple[float, Tensor]] = [(pts[0].lam, self._evaluate(model, x, pts[0].t))]
        for i in range(steps):
            k = orders[i]
            src, dst = pts[i], pts[i + 1]
            h = dst.lam - src.lam
            hh = -h if data else h
            if data:
                ratio, c = dst.sigma / src.sigma, dst.alpha
            else:
                ratio, c = dst.alpha / src.alpha, dst.sigma
            h_phi_1 = math.expm1(hh)
            B = hh if bh1 else h_phi_1
            lam_s, m_s = hist[-1]
            prev = hist[-k:-1][::-1] if k > 1 else []  # the k - 1 previous outputs, newest first
            r = [(lam_m - lam_s) / h for lam_m, _ in prev]
            # the D_m = m_{s_m} - m_s; their 1/r_m goes into the scalar weight -c B rho_m / r_m
            D = [m_m - m_s for _, m_m in prev]

            last = i == steps - 1
            use_c = self.corrector and (not last or self.final_corrector)
            b = _rhs(hh, B, k if use_c else k - 1)  # the predictor's system is the corrector's first k - 1 rows

            base = x.mul(ratio).add_(m_s, alpha=-c * h_phi_1)  # sigma_t/sigma_s x_s - alpha_t h phi_1 m_s
            rho = _weights(r, b, self.exact_weights) if r else []
            x_pred = _combine(base, D, [-c * B * rho_m / r_m for rho_m, r_m in zip(rho, r, strict=True)])

            if use_c or not last:
                m_t = self._evaluate(model, x_pred, dst.t)
                hist = (hist + [(dst.lam, m_t)])[-self.order_p:]
            if use_c:
                r_c = r + [1.0]
                rho = _weights(r_c, b, self.exact_weights)
                x = _combine(base, D + [m_t - m_s], [-c * B * rho_m / r_m for rho_m, r_m in zip(rho, r_c, strict=True)])
            else:
                x = x_pred
            corrected.append(use_c)
            ctx.step(i, x)

        ctx.stats["orders"] = orders
        ctx.stats["corrected"] = corrected
        return x
