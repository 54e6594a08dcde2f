"""The integrator lists of scoresde.integrators against the libraries' own behaviour.

torchdiffeq publishes no list of its methods, so each entry is checked by what torchdiffeq does with
it on dy/dt = -y (exact solution e^{-t}), in float64: a fixed-step method calls the field exactly
``calls`` times per interval and converges at its declared order; an adaptive one chooses its own
steps (its cost follows the tolerance, not the output times) and meets a tight tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq

from scoresde.integrators import TORCHDIFFEQ_ADAPTIVE, TORCHDIFFEQ_FIXED, TORCHDIFFEQ_METHODS, is_adaptive, scipy_methods

F64 = torch.float64


def decay(counter):
    def f(t, y):
        counter.append(float(t))
        return -y
    return f


@pytest.mark.parametrize("method", sorted(TORCHDIFFEQ_FIXED))
def test_fixed_step_methods_calls_and_order(method):
    order, calls = TORCHDIFFEQ_FIXED[method]
    y0 = torch.ones(1, dtype=F64)
    seen = []
    torchdiffeq.odeint(decay(seen), y0, torch.linspace(0, 1, 6, dtype=F64), method=method)
    assert len(seen) == 5 * calls
    # steps where the leading error term dominates and the error stays far above float64 rounding
    steps = (8, 16, 32)
    errors = [abs(float(torchdiffeq.odeint(decay([]), y0, torch.linspace(0, 1, n + 1, dtype=F64),
                                           method=method)[-1]) - math.exp(-1)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (method, errors, slope)
    assert not is_adaptive(method)


@pytest.mark.parametrize("method", sorted(TORCHDIFFEQ_ADAPTIVE))
def test_adaptive_methods_choose_their_own_steps(method):
    y0 = torch.ones(1, dtype=F64)
    loose, tight = [], []
    y_loose = torchdiffeq.odeint(decay(loose), y0, torch.tensor([0.0, 5.0], dtype=F64), method=method,
                                 rtol=1e-3, atol=1e-3)[-1]
    y = torchdiffeq.odeint(decay(tight), y0, torch.tensor([0.0, 5.0], dtype=F64), method=method,
                           rtol=1e-7, atol=1e-7)[-1]
    assert len(tight) > len(loose)
    # the global error follows the tolerance (a modest multiple of it: fehlberg2's is ~100x)
    err, err_loose = abs(float(y) - math.exp(-5)), abs(float(y_loose) - math.exp(-5))
    assert err < 1e-4 and err < err_loose / 10, (err, err_loose)
    # interior output times are interpolated: they do not add steps
    dense = []
    torchdiffeq.odeint(decay(dense), y0, torch.linspace(0, 5, 11, dtype=F64), method=method, rtol=1e-7, atol=1e-7)
    assert len(dense) == len(tight)
    assert is_adaptive(method)


def test_lists_are_disjoint_and_unknown_methods_are_named():
    assert not set(TORCHDIFFEQ_FIXED) & set(TORCHDIFFEQ_ADAPTIVE)
    assert TORCHDIFFEQ_METHODS == (*TORCHDIFFEQ_FIXED, *TORCHDIFFEQ_ADAPTIVE)
    with pytest.raises(ValueError, match=r"method: unknown torchdiffeq method 'tsit5'.*dopri5"):
        is_adaptive("tsit5")


def test_scipy_methods_are_solve_ivps():
    from scipy.integrate import solve_ivp

    methods = scipy_methods()
    assert {"RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA"} <= set(methods)
    assert methods["RK23"] == 3 and methods["RK45"] == 5 and methods["DOP853"] == 8
    for name in methods:
        sol = solve_ivp(lambda t, y: -y, (0.0, 1.0), [1.0], method=name, rtol=1e-8, atol=1e-10)
        assert sol.status == 0 and abs(sol.y[0, -1] - math.exp(-1)) < 1e-6, name
