"""The stepping driver and the registry-wide contract of the stepped samplers.

* :func:`scoresde.samplers.base.drive` is the one loop: it yields the state that waits for a model output
  and takes the output by ``send``. ``sample()``, an outside loop and the diffusers scheduler use it.
* ``call_times(schedule, start)`` declares the model-call times in advance (a scheduler lists them
  without a trial pass): checked against the times the driver actually asks for, from every start.
* Gradients with respect to a grid tensor (``sample(grad=True)``) against central differences in
  float64, for every stepped sampler and each of its conformance options, stochastic ones with a fixed
  generator (their noise is then a fixed function of the grid). With h = 1e-6 the truncation error is
  O(h^2) relative and the rounding error O(1e-16 / h) = 1e-10, so 1e-6 relative separates a missing or
  wrong chain rule (off by O(1)) from agreement.
* A float32 ``x_T`` comes back as float32 from every stepped sampler (schedule math in float64).
* The step code never reads a device tensor on the host: every stepped sampler runs on the 'meta' device.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scoresde as sd
from scoresde import toy
from scoresde.samplers import SAMPLERS, sample
from scoresde.samplers.base import GeneratorNoise, SamplingContext, SteppedSampler, drive
from scoresde.schedule import Schedule

H = 1e-6
RTOL = 1e-6


def _cases(stepped: bool = True):
    out = []
    for name, cls in sorted(SAMPLERS.items()):
        if issubclass(cls, SteppedSampler) == stepped:
            for opts in getattr(cls, "conformance_options", None) or [{}]:
                out.append(pytest.param(name, dict(opts), id=f"{name}[{','.join(f'{k}={v}' for k, v in opts.items())}]"))
    return out


STEPPED = _cases()
# the fixed-step 'ode' sampler is not a SteppedSampler, but its grid gradient must be right too
FIXED_ODE = [pytest.param("ode", {"solver": s}, id=f"ode[solver={s}]")
             for s in ("euler", "midpoint", "rk4")]


def tiny_net(seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype)


def mlp_model(net, sde, parameterization="eps"):
    return sd.ScoreModel(lambda x, t: net(torch.cat([x, t[:, None].to(x.dtype)], dim=1)), sde, parameterization)


# ----- the driver ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", STEPPED)
def test_declared_call_times_are_the_driver_calls_from_any_start(name, opts):
    sde = sd.VPSDE()
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = Schedule.from_times(sde, sd.grids.make_grid("logsnr", sde, 6))
    sampler = SAMPLERS[name](**opts)
    for start in (0, 2, 5):
        g = torch.Generator().manual_seed(1)
        ctx = SamplingContext(sampler, schedule.t, GeneratorNoise(g), g, record=False, progress=False)
        x = x_T * schedule.alpha[start] / schedule.alpha[0]
        calls, asked = drive(sampler, model, schedule, sampler.begin(schedule, x, ctx, start=start), ctx), []
        state = next(calls)
        try:
            while True:
                asked.append(state.t_eval)
                state = calls.send(model.predict(state.x_eval, state.t_eval))
        except StopIteration as stop:
            final = stop.value
        assert final.i == schedule.steps
        declared = sampler.call_times(schedule, start=start)
        assert declared.dtype == torch.float64 and declared.ndim == 1
        torch.testing.assert_close(torch.stack(asked), declared, rtol=0, atol=0)
        if start == 0:
            assert len(asked) == sampler.expected_nfe(schedule.steps)


@pytest.mark.parametrize("name, opts", STEPPED)
def test_run_is_the_driver(name, opts):
    # sample() steps through the same driver: an outside loop over it gives the same samples, bit for bit
    sde = sd.VPSDE()
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sample(model, sde, name, 4, x_T=x_T, generator=torch.Generator().manual_seed(5), **opts)
    sampler = SAMPLERS[name](**opts)
    schedule = Schedule.from_times(sde, res.times)
    g = torch.Generator().manual_seed(5)
    ctx = SamplingContext(sampler, schedule.t, GeneratorNoise(g), g, record=False, progress=False)
    calls = drive(sampler, model, schedule, sampler.begin(schedule, x_T, ctx), ctx)
    state = next(calls)
    try:
        while True:
            state = calls.send(model.predict(state.x_eval, state.t_eval))
    except StopIteration as stop:
        assert torch.equal(stop.value.x, res.samples)


# ----- gradients with respect to the grid ----------------------------------------------------------
def _grid_loss(model, sde, name, opts, times, x_T, w, grad):
    res = sample(model, sde, name, None, x_T=x_T, grid=times, grad=grad, generator=torch.Generator().manual_seed(7),
                 **opts)
    return (w * res.samples).sum()


@pytest.mark.parametrize("name, opts", STEPPED + FIXED_ODE)
def test_gradient_with_respect_to_the_grid(name, opts):
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(5, 2, generator=g, dtype=torch.float64)
    w = torch.randn(5, 2, generator=g, dtype=torch.float64)
    model = mlp_model(tiny_net(), sde)
    times0 = sd.grids.make_grid("logsnr", sde, 4)
    # move every time but T = sde.T (the grid must stay inside (0, sde.T]), t_min too
    v = torch.randn(times0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * times0
    v[0] = 0.0
    times = times0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "converting a tensor with requires_grad=True to a scalar"
        _grid_loss(model, sde, name, opts, times, x_T, w, True).backward()
    directional = float((times.grad * v).sum())
    up = _grid_loss(model, sde, name, opts, times0 + H * v, x_T, w, False)
    down = _grid_loss(model, sde, name, opts, times0 - H * v, x_T, w, False)
    assert directional == pytest.approx(float((up - down) / (2 * H)), rel=RTOL)
    assert directional != 0.0


# ----- dtype ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("parameterization", ["eps", "x0", "score", "v"])
@pytest.mark.parametrize("name, opts", STEPPED)
def test_float32_in_float32_out(name, opts, parameterization):
    sde = sd.VPSDE()
    model = mlp_model(tiny_net(dtype=torch.float32), sde, parameterization)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    for kw in ({}, {"final_denoise": True}):
        res = sample(model, sde, name, 3, x_T=x_T, generator=torch.Generator().manual_seed(1), **opts, **kw)
        assert res.samples.dtype == torch.float32
        # the reference: the same run in float64 agrees to float32 precision
        ref = sample(mlp_model(tiny_net(dtype=torch.float64), sde, parameterization), sde, name, 3,
                     x_T=x_T.double(), generator=torch.Generator().manual_seed(1), **opts, **kw)
        if not SAMPLERS[name](**opts).stochastic:
            torch.testing.assert_close(res.samples.double(), ref.samples, rtol=1e-4, atol=1e-4)


# ----- no host syncs in the step code ----------------------------------------------------------------
class HostReads(TorchDispatchMode):
    """Counts reads of a device tensor's value on the host (``.item()``, ``bool()``, ``float()``, ``.tolist()``)
    and copies off the device, while ``counting``."""

    def __init__(self):
        super().__init__()
        self.count, self.counting = 0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_device = any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)
        off = func is torch.ops.aten._to_copy.default and str(kwargs.get("device", "meta")) != "meta"
        if self.counting and on_device and (func is torch.ops.aten._local_scalar_dense.default or off):
            self.count += 1
        return func(*args, **kwargs)


THRESHOLDING = [pytest.param(n, {"thresholding": True, "max_value": 2.0}, id=f"{n}[thresholding]")
                for n in ("dpm_solver++", "unipc")]


@pytest.mark.parametrize("name, opts", STEPPED + THRESHOLDING)
def test_the_step_code_never_reads_the_state_on_the_host(name, opts):
    # The state lives on the 'meta' device (shapes, no values): a host read there would raise. The network
    # is left out of the count (its syncs are models.py's); the steps, with their noise, are counted.
    sde = sd.VPSDE()
    model = mlp_model(tiny_net(dtype=torch.float32), sde)
    sampler = SAMPLERS[name](**opts)
    schedule = Schedule.from_times(sde, sd.grids.make_grid("logsnr", sde, 6))
    g = torch.Generator().manual_seed(0)
    ctx = SamplingContext(sampler, schedule.t, GeneratorNoise(g), g, record=False, progress=False)
    mode, calls = HostReads(), 0
    with mode:
        mode.counting = True
        driver = drive(sampler, model, schedule, sampler.begin(schedule, torch.empty(4, 2, device="meta"), ctx), ctx)
        state = next(driver)
        try:
            while True:
                mode.counting = False
                output = torch.empty_like(state.x_eval)  # the network's output: its shape, no values
                mode.counting, calls = True, calls + 1
                state = driver.send(output)
        except StopIteration as stop:
            final = stop.value
    assert mode.count == 0
    assert final.x.device.type == "meta" and final.x.dtype == torch.float32
    assert calls == sampler.expected_nfe(schedule.steps)
