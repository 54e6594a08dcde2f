"""Every registered sampler converges at the order it declares, measured on the exact oracle in float64.

One test per configured instance, parametrised from :data:`scoresde.samplers.SAMPLERS` and each class's
``conformance_options`` (``[{}]`` without them), in the manner of diffrax's ``test_ode_order``: the
log-log slope of the error against the number of steps (:func:`scoresde.studies.orders.empirical_order`)
must lie within 0.3 of the instance's ``convergence_order``. Instances whose order is None, and adaptive
ones (their step count is not theirs to take), are left out. A new sampler file is tested here without
editing this one.

* **Deterministic samplers**: the endpoint error ``mean_b |x_N - x_ref|`` against the probability-flow
  ODE from the same ``x_T`` (:func:`scoresde.studies.references.reference_pf_ode`, dopri5 at
  rtol = atol = 1e-12, own error about 4e-13). The problem is a two-component mixture in 2-D under VP,
  from T = 1 (alpha_T = 6.7e-3: the first, lower-order steps of a multistep method then carry the weight
  alpha_T^2 and cannot cap its order) to t_min = 0.25 (lambda from -5.0 to 0.05: the posterior
  still moves, so a final lower-order step is not hidden behind a vanishing constant). Measured on this
  problem over the step counts below: fitted orders within 0.2 of the declared ones for every
  instance but three, UniPC-3 with UniC (3.78: local slopes 3.6 -> 3.9 over 64..192) and the third-order
  multistep solvers with ``lower_order_final=True`` (declared 2 from their lowered last steps; 2.28 and
  2.25, their third-order part still visible).
* **Stochastic samplers** (weak order): Gaussian data N(m, s^2) in 1-D, started from the exact marginal
  N(alpha_T m, alpha_T^2 s^2 + sigma_T^2) at T; the exact reverse process then ends in
  N(alpha m, alpha^2 s^2 + sigma^2) at t_min. For Gaussian data the score is affine in x, so a
  sampler's output is affine in x_T and in its standard normal draws:
  ``x_N = mean_N + A (x_T - mu_T) + sum_k C_k z_k``. Its mean and variance are therefore computed
  exactly, without Monte Carlo: one batch row starts at mu_T with every draw zero, one at mu_T + 1,
  and row k receives a unit draw in the k-th draw only (a path object handed to ``brownian=`` hands out
  the draws); ``Var_N = A^2 Var(x_T) + sum_k C_k^2``. A last row, with every input doubled, checks the
  superposition the computation relies on. The weak error is
  ``|E x_N - E x_exact| + |Var x_N - Var x_exact|``.
"""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.samplers import SAMPLERS, available, sample
from scoresde.studies.orders import empirical_order
from scoresde.studies.references import reference_pf_ode

F64 = torch.float64
TOLERANCE = 0.3
T, T_MIN = 1.0, 0.25

# step counts by declared order: in the asymptotic range (module docstring), errors far above the
# reference's own error and float64 rounding (smallest: rk4 at 192 steps, 1e-10)
# order 4 (UniPC-3 with UniC) needs longer runs: with the noise prediction it is still pre-asymptotic at 64-192 steps (3.69)
DETERMINISTIC_STEPS = {1: (16, 24, 32, 48), 2: (16, 24, 32, 48), 3: (24, 32, 48, 64), 4: (96, 128, 192, 256)}
# EDM's churn is capped at sqrt(2) - 1 per step below S_churn / (sqrt(2) - 1) ~ 24 steps: higher weak
# orders are measured above that (heun with S_churn = 10: local slopes 1.80, 1.86, 1.90 over 48..128)
STOCHASTIC_STEPS = {1: (16, 24, 32, 48), 2: (48, 64, 96, 128)}

# Declared orders known to disagree with the measurement, for the owner of the sampler to settle; strict,
# so that each entry fails once the declaration is fixed and must then be removed.
KNOWN_MISMATCHES: dict = {}


def _steps_for(table: dict[int, tuple[int, ...]], order: float) -> tuple[int, ...]:
    key = min(max(1, math.ceil(order - 0.25)), max(table))
    return table[key]


def _cases(stochastic: bool) -> list:
    cases = []
    for name in available():
        cls = SAMPLERS[name]
        for opts in getattr(cls, "conformance_options", None) or [{}]:
            inst = cls(**opts)
            if inst.convergence_order is None or inst.adaptive or inst.stochastic != stochastic:
                continue
            key = (name, tuple(sorted(opts.items())))
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MISMATCHES[key])] if key in KNOWN_MISMATCHES else []
            label = name + ("[" + ",".join(f"{k}={v}" for k, v in opts.items()) + "]" if opts else "")
            cases.append(pytest.param(name, dict(opts), id=label, marks=marks))
    return cases


# ----- deterministic samplers: endpoint error against the PF-ODE reference -------------------------
@pytest.fixture(scope="module")
def pf_problem():
    sde = sd.VPSDE()
    mix = sd.toy.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.6**2, 0.4**2])
    model = mix.model(sde)
    gen = torch.Generator().manual_seed(0)
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(torch.tensor(T, dtype=F64)))
    x_T = alpha_T * mix.sample(8, generator=gen, dtype=F64) + sigma_T * torch.randn(8, 2, generator=gen, dtype=F64)
    ref = reference_pf_ode(model, x_T, T, T_MIN, tol=1e-12)
    return sde, model, x_T, ref


@pytest.mark.parametrize("name, options", _cases(stochastic=False))
def test_deterministic_order(pf_problem, name, options):
    sde, model, x_T, ref = pf_problem
    declared = SAMPLERS[name](**options).convergence_order
    steps = _steps_for(DETERMINISTIC_STEPS, declared)
    errors = []
    for n in steps:
        res = sample(model, sde, name, n, x_T=x_T, T=T, t_min=T_MIN, **options)
        assert res.convergence_order == declared
        errors.append(float((res.samples - ref.x).flatten(1).norm(dim=1).mean()))
    # the fit measures the sampler only while its errors stay far above the reference's own (100 times
    # above it, the reference moves a point by at most 1% and the slope by less than 0.02)
    assert min(errors) > 100 * ref.error, (f"{name} {options}: errors {errors} reach the reference's own error "
                                           f"{ref.error:.1e}; extend DETERMINISTIC_STEPS for order {declared}")
    fitted = empirical_order(steps, errors)
    assert abs(fitted - declared) <= TOLERANCE, (f"{name} {options}: fitted order {fitted:.2f}, declared {declared}, "
                                                 f"errors {errors} at steps {steps}")


# ----- stochastic samplers: exact moments of the discrete chain on Gaussian data -----------------
class ImpulsePath:
    """A stand-in for a Brownian path whose draws are given column by column.

    ``units`` is a ``(rows, K)`` matrix of standard normal draws, one column per draw in the order the
    sampler asks for them; a query over [ta, tb] returns ``sqrt|tb - ta|`` times the next column as the
    increment and, when torchsde's srk asks for the space-time Levy area (``return_U``), the next column as
    its independent part: ``U = int_ta^tb (W_s - W_ta) ds = dt/2 dW + dt^{3/2}/sqrt(12) z``. ``units=None``
    only counts the draws (every draw zero).
    """

    levy_area_approximation = "space-time"

    def __init__(self, rows: int, units: torch.Tensor | None = None):
        self.rows, self.units, self.draws = rows, units, 0
        self.shape, self.dtype, self.device = (rows, 1), F64, torch.device("cpu")

    def _next(self) -> torch.Tensor:
        k, self.draws = self.draws, self.draws + 1
        if self.units is None or k >= self.units.shape[1]:
            return torch.zeros(self.rows, 1, dtype=F64)
        return self.units[:, k:k + 1].clone()

    def __call__(self, ta, tb, return_U: bool = False, return_A: bool = False):
        dt = abs(float(tb) - float(ta))
        dw = math.sqrt(dt) * self._next()
        if not return_U:
            return dw
        return dw, dt / 2 * dw + dt**1.5 / math.sqrt(12) * self._next()


def exact_moments(name: str, options: dict, steps: int, sde, m: float, s2: float) -> tuple[float, float]:
    """Mean and variance of ``name``'s output at T_MIN for x_T ~ N(mu_T, v_T), data N(m, s2) (see above)."""
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(torch.tensor(T, dtype=F64)))
    mu_T, v_T = alpha_T * m, alpha_T**2 * s2 + sigma_T**2
    model = sd.toy.GaussianMixture([1.0], [[m]], [s2]).model(sde)
    counter = ImpulsePath(1)
    sample(model, sde, name, steps, x_T=torch.full((1, 1), mu_T, dtype=F64), T=T, t_min=T_MIN, brownian=counter,
           **options)
    K = counter.draws
    # rows: 0 the mean; 1..K one unit draw each; K+1 x_T + 1; K+2 x_T + 2 with every draw 2
    units = torch.zeros(K + 3, K, dtype=F64)
    units[1:K + 1] = torch.eye(K, dtype=F64)
    units[K + 2] = 2.0
    x_T = torch.full((K + 3, 1), mu_T, dtype=F64)
    x_T[K + 1] += 1.0
    x_T[K + 2] += 2.0
    out = sample(model, sde, name, steps, x_T=x_T, T=T, t_min=T_MIN, brownian=ImpulsePath(K + 3, units),
                 **options).samples[:, 0]
    mean, C, A = out[0], out[1:K + 1] - out[0], out[K + 1] - out[0]
    superposed = mean + 2 * A + 2 * C.sum()
    assert torch.allclose(out[K + 2], superposed, rtol=1e-9, atol=1e-12), (
        f"{name} {options}: the output is not affine in x_T and the draws ({float(out[K + 2])} against "
        f"{float(superposed)}), so its moments cannot be computed this way")
    return float(mean), float(A**2 * v_T + (C**2).sum())


@pytest.mark.parametrize("name, options", _cases(stochastic=True))
def test_weak_order(name, options):
    sde, m, s2 = sd.VPSDE(), 0.7, 0.3**2
    alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.tensor(T_MIN, dtype=F64)))
    mean_exact, var_exact = alpha * m, alpha**2 * s2 + sigma**2
    declared = SAMPLERS[name](**options).convergence_order
    steps = _steps_for(STOCHASTIC_STEPS, declared)
    errors = []
    for n in steps:
        mean, var = exact_moments(name, options, n, sde, m, s2)
        errors.append(abs(mean - mean_exact) + abs(var - var_exact))
    assert min(errors) > 1e-10, f"{name} {options}: weak errors {errors} too close to rounding to fit an order"
    fitted = empirical_order(steps, errors)
    assert abs(fitted - declared) <= TOLERANCE, (f"{name} {options}: fitted weak order {fitted:.2f}, declared "
                                                 f"{declared}, errors {errors} at steps {steps}")


def test_exact_moments_match_monte_carlo():
    # The impulse computation against plain sampling: Euler-Maruyama with 16 steps from 20000 draws of
    # x_T; the sample mean and variance must agree within 5 standard errors of the Monte Carlo estimates.
    sde, m, s2, steps, n = sd.VPSDE(), 0.7, 0.3**2, 16, 20000
    mean, var = exact_moments("euler_maruyama", {}, steps, sde, m, s2)
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(torch.tensor(T, dtype=F64)))
    gen = torch.Generator().manual_seed(0)
    x_T = alpha_T * m + math.sqrt(alpha_T**2 * s2 + sigma_T**2) * torch.randn(n, 1, generator=gen, dtype=F64)
    model = sd.toy.GaussianMixture([1.0], [[m]], [s2]).model(sde)
    x = sample(model, sde, "euler_maruyama", steps, x_T=x_T, T=T, t_min=T_MIN, generator=gen).samples[:, 0]
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / (n - 1))

