"""What DPM-Solver, DPM-Solver++ and UniPC share: the phi functions against high-precision values,
one ``lower_order_final`` rule, and the step protocol driven from outside (as a diffusers pipeline
would) reproducing ``sample()`` exactly."""
import itertools

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.samplers import get_sampler, sample
from scoresde.samplers._phi import LOWER_ORDER_FINAL_BELOW, phi
from scoresde.schedule import Schedule

EXPONENTIAL = ("dpm_solver", "dpm_solver++", "unipc")
Z = [-50.0, -10.0, -2.0, -1.51, -1.49, -0.7, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 0.3, 1.49, 1.51, 4.0, 30.0]


def _exact_phi(k: int, z: float) -> float:
    """phi_k(z) = sum_j z^j/(j+k)! in 80-digit arithmetic (mpmath comes with torch, through sympy)."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(80):
        # for |z| <= 50 the terms peak near 1e21 and fall below 1e-60 by j = 300: 80 digits leave far
        # more than double precision
        zm = mpmath.mpf(z)
        return float(mpmath.fsum(zm**j / mpmath.factorial(j + k) for j in range(300)))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("z", Z)
def test_phi_matches_high_precision(k, z):
    # a few ulps of the result: both branches (series below |z| = 1.5, closed form above) and the
    # switch between them; the mpmath value is exact to double precision
    exact = _exact_phi(k, z)
    assert phi(k, z) == pytest.approx(exact, rel=1e-14, abs=1e-300)
    assert phi(k, torch.tensor(z, dtype=torch.float64)) == phi(k, z)  # a tensor without grad: the same float
    t = phi(k, torch.tensor(z, dtype=torch.float64, requires_grad=True))  # the differentiable path
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64
    assert float(t) == pytest.approx(exact, rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("z", [-3.0, -0.2, 0.5, 2.0])
def test_phi_tensor_is_differentiable(k, z):
    # d/dz phi_k(z) = sum_j j z^(j-1)/(j+k)! = phi_k(z) - k phi_{k+1}(z) (differentiate the integral form)
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(phi(k, zt), zt)
    assert float(grad) == pytest.approx(_exact_phi(k, z) - k * _exact_phi(k + 1, z), rel=1e-12)


def test_phi_rejects_bad_k():
    for k in (-1, 8, 1.5, True):
        with pytest.raises(ValueError, match="k"):
            phi(k, 0.3)


@pytest.mark.parametrize("name", EXPONENTIAL)
def test_lower_order_final_is_one_rule(name):
    # None lowers the last steps below 15 steps only; True/False force it; the declared order follows
    cls = get_sampler(name)
    n = LOWER_ORDER_FINAL_BELOW
    default, on, off = cls(order=3), cls(order=3, lower_order_final=True), cls(order=3, lower_order_final=False)
    assert default.lower_order_final is None
    assert default.step_orders(n - 1)[-1] == 1 and default.step_orders(n)[-1] == 3
    assert on.step_orders(n - 1) == default.step_orders(n - 1) and on.step_orders(40)[-1] == 1
    assert off.step_orders(n) == default.step_orders(n) and off.step_orders(5)[-1] == 3
    full = 4 if name == "unipc" else 3  # UniP-3 with UniC is fourth order
    assert default.convergence_order == off.convergence_order == full == default.convergence_order_for(n)
    assert default.convergence_order_for(n - 1) == on.convergence_order == 2


@pytest.mark.parametrize("name,options", [
    ("dpm_solver++", dict(order=3)), ("dpm_solver", dict(order=2, variant="singlestep")),
    ("dpm_solver++", dict(order=3, variant="singlestep", solver_type="taylor")),
    ("unipc", dict(order=3)), ("unipc", dict(order=2, final_corrector=True, lower_order_final=False)),
    ("unipc", dict(order=2, corrector=False, prediction="noise")),
])
@pytest.mark.parametrize("steps", [1, 2, 6, 16])
def test_an_external_loop_reproduces_sample(name, options, steps):
    # the loop a pipeline would write: call the network at (x_eval, t_eval), hand the output to step();
    # a state at stage 2 (UniPC's uncorrected last step) needs no call. Same calls, same result.
    sde = sd.VPSDE()
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = sample(model, sde, name, steps, x_T=x_T, **options)
    sampler = get_sampler(name)(**options)
    schedule = Schedule.from_times(sde, ref.times)
    state, calls = sampler.init(schedule, x_T), 0
    while state.i < schedule.steps:
        output = None
        if not (name == "unipc" and state.stage == 2):
            output, calls = model.predict(state.x_eval, state.t_eval), calls + 1
        state = sampler.step(model, schedule, state, output, None)
    assert calls == ref.nfe == sampler.expected_nfe(steps)
    torch.testing.assert_close(state.x, ref.samples, rtol=0, atol=0)


@pytest.mark.parametrize("name,options", [
    ("dpm_solver++", dict(order=3)), ("dpm_solver", dict(order=3, variant="singlestep")), ("unipc", dict(order=3)),
])
def test_samples_are_differentiable_in_x_T(name, options):
    # sample(grad=True): d sum(w * x_0) / d x_T by autograd against central differences (float64,
    # step 1e-6: truncation ~1e-12, rounding ~1e-10 of an O(1) derivative)
    sde = sd.VPSDE()
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    w = torch.tensor([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], dtype=torch.float64)

    def f(x):
        return (w * sample(model, sde, name, 7, x_T=x, grad=True, **options).samples).sum()

    x = x_T.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x), x)
    fd = torch.zeros_like(x_T)
    for idx in itertools.product(range(3), range(2)):
        e = torch.zeros_like(x_T)
        e[idx] = 1e-6
        fd[idx] = (f(x_T + e) - f(x_T - e)) / 2e-6
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
