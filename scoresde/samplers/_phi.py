r"""The phi functions of exponential integrators, and the derivation DPM-Solver, DPM-Solver++ and
UniPC share.

**phi.**  ``phi_0(z) = e^z`` and, for ``k >= 1``,

.. math::  \varphi_k(z) = \int_0^1 e^{(1-u) z} \frac{u^{k-1}}{(k-1)!}\, du
           = \sum_{j \ge 0} \frac{z^j}{(j + k)!},
           \qquad \varphi_{k+1}(z) = \frac{\varphi_k(z) - 1/k!}{z},

so ``phi_1(z) = (e^z - 1)/z`` and ``phi_2(z) = (e^z - 1 - z)/z^2``. The recursion subtracts
nearly equal numbers when ``|z|`` is small (it loses about ``k log10(1/|z|)`` digits), so
:func:`phi` sums the series there and uses ``expm1`` and the recursion elsewhere.

**The exact solution in log-SNR** (Lu et al. 2022, eq. 3.4; Lu et al. 2022b, eq. 8). In the half
log-SNR ``lam = log alpha - log sigma`` the probability-flow ODE has an exactly integrable linear
part. From ``(t, lam_t)`` to ``(s, lam_s)``, ``h = lam_s - lam_t > 0``:

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t - \alpha_s \int_{\lam_t}^{\lam_s} e^{-\lam}\hat\epsilon\,d\lam
           \ \text{(noise)},\qquad
           x_s = \frac{\sigma_s}{\sigma_t} x_t + \sigma_s \int_{\lam_t}^{\lam_s} e^{\lam}\hat x_0\,d\lam
           \ \text{(data)}.

Expanding the prediction ``F(lam) = sum_k F^(k)(lam_t) (lam - lam_t)^k / k!`` and integrating term
by term (substitute ``lam = lam_t + u h``):

.. math::  x_s = \frac{\alpha_s}{\alpha_t} x_t - \sigma_s \sum_{k\ge0} h^{k+1}\varphi_{k+1}(h)\,\hat\epsilon^{(k)},
           \qquad
           x_s = \frac{\sigma_s}{\sigma_t} x_t + \alpha_s \sum_{k\ge0} h^{k+1}\varphi_{k+1}(-h)\,\hat x_0^{(k)}.

For the data prediction the first three weights are ``h phi_1(-h) = 1 - e^{-h}``,
``h^2 phi_2(-h) = h - 1 + e^{-h}`` and ``h^3 phi_3(-h) = h^2/2 - h + 1 - e^{-h}``. Keeping the
terms ``k < p`` with derivative estimates accurate to ``O(h^{p-k})`` gives a local error
``O(h^{p+1})``: a method of global order ``p``. The first-order step is DDIM.

**Multistep derivatives and the third-order correction.** DPM-Solver++(3M) estimates the
derivatives at ``lam_i`` from the predictions at ``lam_i, lam_{i-1}, lam_{i-2}`` through the Newton
polynomial ``P(lam) = F_i + D_1 (lam - lam_i) + D_2 (lam - lam_i)(lam - lam_{i-1})`` with the divided
differences ``D_1 = F[lam_i, lam_{i-1}]``, ``D_2 = F[lam_i, lam_{i-1}, lam_{i-2}]``:

.. math::  F'(\lam_i) \approx P'(\lam_i) = D_1 + h_{i-1} D_2 \ (\text{error } O(h^2)),\qquad
           F''(\lam_i) \approx P'' = 2 D_2 \ (\text{error } O(h)),

so the step's local error is ``h^2 O(h^2) + h^3 O(h) = O(h^4)``: third order on any grid. The
published update (Lu et al. 2022b, Algorithm 2 and its reference code; diffusers'
``multistep_dpm_solver_third_order_update``) weights ``D_2`` by ``h^3 phi_3`` where ``2 D_2`` is
needed. It keeps a local error ``h^3 phi_3 F''/2 ~ h^3 F''/12`` and converges at second order
(``tests/test_dpm_solver.py`` measures 1.9 for it against 3.2 for ours). At low step counts the
halved term acts as damping and is often the more accurate; third order is an asymptotic statement.

**The warm-up of multistep methods.** The first steps run at orders 1 and 2, since no history
exists. Their local errors are formally ``O(h^2)``, ``O(h^3)``, but near T the prediction varies by
``O(alpha_T)`` per unit lambda (``x0_theta = E[x0] + O(alpha_T)``), so they carry a factor
``alpha_T^2`` (data) or ``alpha_T`` (noise), about 4e-5 and 7e-3 for the default VP SDE: third
order is what one measures over the usual step counts. A run that starts at high SNR loses that
factor and the warm-up caps 3M at order 2 (``tests/test_dpm_solver.py``, T = 0.3).

**lower_order_final.** Step ``i`` of ``N`` runs at order at most ``N - i`` (the last step at first
order, the one before at second), which stabilises the long final steps of few-step grids. It
caps the global order at 2 (the last step's local error is ``O(h^2)``). The default ``None`` lowers
below :data:`LOWER_ORDER_FINAL_BELOW` steps only, as diffusers' ``DPMSolverMultistepScheduler`` does
(dpm-solver's own code: below 10 steps; diffusers' ``UniPCMultistepScheduler``: at every step
count); ``True``/``False`` force it. :func:`lowers_final` is the one rule every solver here uses.
On time-uniform grids the last steps are long in lambda and the unlowered high orders extrapolate
badly well beyond 15 steps (``benchmarks/lower_order_final.py``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["phi", "LOWER_ORDER_FINAL_BELOW", "check_lower_order_final", "lowers_final"]

LOWER_ORDER_FINAL_BELOW = 15
_SERIES_TERMS = 30  # |z|^30 / 30! < 1e-23 for |z| < 1.5: beyond double precision of phi_k ~ 1/k!
_INV_FACTORIAL = tuple(1.0 / math.factorial(j) for j in range(_SERIES_TERMS + 8))


def phi(k: int, z: float | Tensor) -> float | Tensor:
    r"""``phi_k(z) = sum_{j>=0} z^j/(j+k)!`` (``phi_0 = e^z``) for a number or a 0-d tensor ``z``.

    The series (by Horner's rule) for ``|z| < 1.5``; ``e^z`` for ``k = 0``, ``expm1(z)/z`` and the
    recursion ``phi_{k+1} = (phi_k - 1/k!)/z`` otherwise, which loses under one digit there.
    A tensor that requires grad gives a differentiable tensor; anything else a float (the same
    arithmetic in Python floats, so a step's coefficients cost no tensor operations).
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 7:
        raise ValueError(f"k: expected an integer in 0..7, got {k!r}")
    if isinstance(z, Tensor) and z.requires_grad:
        return _phi(k, z, torch.exp, torch.expm1)
    return _phi(k, float(z), math.exp, math.expm1)


def _phi(k: int, z, exp, expm1):
    # which formula is a choice, not part of the function: read it off the value without the graph
    if abs(float(z.detach() if isinstance(z, Tensor) else z)) < 1.5:
        total = _INV_FACTORIAL[_SERIES_TERMS + k]
        for j in range(_SERIES_TERMS - 1, -1, -1):
            total = total * z + _INV_FACTORIAL[j + k]
        return total
    if k == 0:
        return exp(z)
    val = expm1(z) / z
    for j in range(1, k):
        val = (val - _INV_FACTORIAL[j]) / z
    return val


def check_lower_order_final(value) -> bool | None:
    """Validate ``lower_order_final``: ``None`` (below 15 steps), ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"lower_order_final: expected None (lower the final steps below "
                         f"{LOWER_ORDER_FINAL_BELOW} steps), True or False, got {value!r}")
    return value


def lowers_final(lower_order_final: bool | None, steps: int) -> bool:
    """Whether a run of ``steps`` grid steps lowers its final orders (``None``: below 15 steps)."""
    if lower_order_final is None:
        return steps < LOWER_ORDER_FINAL_BELOW
    return lower_order_final
