"""The sampler contract: one registry, one call signature, one result type.

A sampler is a class with metadata (``name``, ``convergence_order``, ``calls_per_step``, ``stochastic``)
and a ``run`` method that takes the state at ``t[0] = T`` to ``t[n] = t_min``, calling ``ctx.step(i, x)``
after each grid step. A fixed-grid sampler is a :class:`SteppedSampler`: one update per model call
with explicit state, on the :class:`~scoresde.schedule.Schedule` that :func:`sample` builds once.
:func:`sample` does everything around it once: validation of every argument before any model call,
the grid, the prior draw, NFE accounting from the model's own counter, trajectories, the final
denoising step, progress and timing. Adding a sampler is one new file in this package that defines
a subclass decorated with :func:`register`.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import grids as _grids
from .._progress import progress as progress_bar
from ..checks import (CHECK_FINITE, FiniteWatch, NonFiniteModelOutput, check_bool, check_choice, check_count,
                      check_generator, check_instance, check_shape, check_time)
from ..models import ScoreModel
from ..schedule import Schedule
from ..sde import SDE

__all__ = ["Sampler", "SteppedSampler", "SamplerState", "Schedule", "SampleResult", "SamplingContext", "register", "get_sampler", "available", "sample",
           "SAMPLERS", "drive", "GeneratorNoise", "BrownianNoise", "brownian_path", "MAX_STEPS"]

#: The most grid steps :func:`sample` accepts. Fixed-step samplers converge long before it (their
#: error at 10^4 steps is already at float64 rounding on the oracle); a larger number is a typo.
MAX_STEPS = 100_000

SAMPLERS: dict[str, type[Sampler]] = {}


def register(cls: type[Sampler]) -> type[Sampler]:
    """Class decorator: add ``cls`` to the registry under ``cls.name``. Duplicate names raise."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}: a registered sampler needs a non-empty class attribute 'name'")
    if name in SAMPLERS and SAMPLERS[name] is not cls:
        raise ValueError(f"sampler name {name!r} is already registered by {SAMPLERS[name].__name__}")
    SAMPLERS[name] = cls
    return cls


def available() -> list[str]:
    """Registered sampler names."""
    return sorted(SAMPLERS)


def get_sampler(method) -> type[Sampler]:
    """Resolve a registered name, or accept a :class:`Sampler` subclass as it is."""
    if isinstance(method, type) and issubclass(method, Sampler):
        return method
    if isinstance(method, str) and method in SAMPLERS:
        return SAMPLERS[method]
    raise ValueError(f"method: unknown sampler {method!r}; known samplers: {', '.join(available())} "
                     "(or pass a Sampler subclass)")


class Sampler:
    """Base class of all samplers.

    Class attribute: ``name`` (registry key). Metadata, class attributes or properties computed from
    the options (never state a run changes): ``adaptive`` (chooses its own steps; ``steps`` may then
    be None), ``stochastic`` (draws noise), ``convergence_order`` (theoretical global order of the
    deterministic error, or the weak order for SDE samplers; None when it has none; a constructor option
    ``order`` picks a solver's order and may differ from it; :meth:`convergence_order_for` gives the
    order of a run of a given number of steps) and ``calls_per_step`` (model evaluations per grid step).
    """

    name: ClassVar[str] = ""
    stochastic: bool = False
    adaptive: bool = False
    convergence_order: float | None = None
    calls_per_step: int = 1

    def expected_nfe(self, steps: int) -> int | None:
        """Model evaluations for ``steps`` grid steps (None where the solver decides, e.g. adaptive)."""
        return self.calls_per_step * steps

    def convergence_order_for(self, steps: int) -> float | None:
        """The order of a run of ``steps`` steps (some samplers lower their final steps on short runs)."""
        return self.convergence_order

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        raise NotImplementedError

    @classmethod
    def option_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "convergence_order": self.convergence_order, "calls_per_step": self.calls_per_step,
                "stochastic": self.stochastic, "adaptive": self.adaptive}

    def __repr__(self) -> str:
        opts = {k: getattr(self, k) for k in self.option_names() if hasattr(self, k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


@dataclass(frozen=True)
class SamplerState:
    """Where a :class:`SteppedSampler` stands between two model calls.

    ``x`` is the state at ``schedule.t[i]`` after ``i`` completed grid steps; the next model call is
    at ``(x_eval, t_eval)`` (``x`` and ``t[i]`` for one-call steps; a stage point for Heun or a
    singlestep solver). ``stage`` counts the calls already made within step ``i``; ``history`` holds
    what a multistep method remembers (newest first). A sampler may subclass this to carry more.
    """

    x: Tensor
    i: int
    x_eval: Tensor
    t_eval: Tensor
    stage: int = 0
    history: tuple = ()


class SteppedSampler(Sampler):
    """A fixed-grid sampler written as one update per model call, with explicit state.

    ``init(schedule, x, start)`` gives the state at ``schedule.t[start]``; ``begin(schedule, x, ctx,
    start)`` is ``init`` for samplers that draw noise before their first model call (Heun's churn) and
    is what a loop starts from; ``step(model, schedule, state, output, ctx)`` consumes the raw network
    output at ``(state.x_eval, state.t_eval)`` and returns the next state. :func:`drive` is the one
    loop over them, for :meth:`run` and for an outside loop that owns the model calls (a diffusers
    pipeline); ``call_times`` lists the times of those calls in advance. ``model`` is used for its
    conversions (``to_eps``, ``to_x0``) only, never called by ``step``. A run that starts at a later
    step (``start > 0``) starts without history: a multistep method warms up again from there.
    """

    def init(self, schedule: Schedule, x: Tensor, start: int = 0) -> SamplerState:
        return SamplerState(x=x, i=start, x_eval=x, t_eval=schedule.t[start])

    def begin(self, schedule: Schedule, x: Tensor, ctx: SamplingContext | None, start: int = 0) -> SamplerState:
        """The state a loop starts from (``init``, plus any noise a first step draws up front)."""
        return self.init(schedule, x, start)

    def needs_output(self, state: SamplerState) -> bool:
        """Whether the next :meth:`step` consumes a model output (a final uncorrected UniPC step does not)."""
        return True

    def call_times(self, schedule: Schedule, start: int = 0) -> Tensor:
        """The times of the model calls from step ``start`` to the end, in order (float64, 1-D): what
        :func:`drive` will ask for, known before any call. Default: one call at ``t_i`` per step."""
        if self.calls_per_step != 1:
            raise NotImplementedError(f"{type(self).__name__}: a sampler with {self.calls_per_step} calls per step "
                                      "declares its call times (override call_times)")
        return schedule.t[start:-1]

    def run_stats(self, steps: int) -> dict[str, Any]:
        """What a run of ``steps`` steps records in ``SampleResult.stats`` besides the timing (e.g. step orders)."""
        return {}

    def step(self, model: ScoreModel, schedule: Schedule, state: SamplerState, output: Tensor,
             ctx: SamplingContext) -> SamplerState:
        raise NotImplementedError

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        ctx.stats.update(self.run_stats(schedule.steps))
        calls = drive(self, model, schedule, self.begin(schedule, x, ctx), ctx, on_step=ctx.step)
        try:
            state = next(calls)
            while True:
                state = calls.send(model.predict(state.x_eval, state.t_eval))
        except StopIteration as stop:
            return stop.value.x


def drive(sampler: SteppedSampler, model: ScoreModel, schedule: Schedule, state: SamplerState,
          ctx: SamplingContext | None = None, on_step=None):
    """The stepping loop, as a generator over the model calls of a run from ``state`` to ``t_min``.

    It yields each state that waits for a model output at ``(state.x_eval, state.t_eval)``; ``send``
    it the raw network output there. Steps that need no output are taken in between. It returns (as
    ``StopIteration.value``) the final state. ``on_step(i, x)`` is called when grid step ``i`` is done.
    The state is explicit, so a caller may stop and start another generator from any state.
    """
    while state.i < schedule.steps:
        output = (yield state) if sampler.needs_output(state) else None
        i = state.i
        state = sampler.step(model, schedule, state, output, ctx)
        if on_step is not None and state.i > i:
            on_step(i, state.x)
    return state


# ---------------------------------------------------------------------------------------------
# Noise: from a generator, or from a shared Brownian path so that runs with different grids
# see the same realisation (strong-error studies).
# ---------------------------------------------------------------------------------------------
class GeneratorNoise:
    """Independent Gaussian increments drawn from a ``torch.Generator``."""

    def __init__(self, generator: torch.Generator | None):
        self.generator = generator

    def increment(self, t: float, t_next: float, like: Tensor) -> Tensor:
        # the generator's standard normals times sqrt|dt|, scaled as they are drawn
        z = torch.empty(like.shape, device=like.device, dtype=like.dtype)
        return z.normal_(0.0, math.sqrt(abs(t - t_next)), generator=self.generator)

    def normal(self, t: float, t_next: float, like: Tensor) -> Tensor:
        """The increment over [t_next, t] divided by its standard deviation: a plain standard normal."""
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)


class BrownianNoise:
    """Increments of a torchsde Brownian path in the flipped time ``s = t_start - t``.

    The path must cover ``[0, t_start - t_end]`` and have size ``(B, prod(event_shape))``, the
    layout of :class:`scoresde.dynamics.ReverseSDE`; :func:`brownian_path` builds one.
    """

    def __init__(self, path, t_start: float):
        self.path = path
        self.t_start = float(t_start)

    def increment(self, t: float, t_next: float, like: Tensor) -> Tensor:
        # Clamp into the path's span: times that went through float32 can land a rounding error outside.
        lo, hi = float(getattr(self.path, "_start", -math.inf)), float(getattr(self.path, "_end", math.inf))
        s_a = min(max(self.t_start - t, lo), hi)
        s_b = min(max(self.t_start - t_next, lo), hi)
        dw = self.path(s_a, s_b)
        return dw.reshape(like.shape).to(like.dtype)

    def normal(self, t: float, t_next: float, like: Tensor) -> Tensor:
        """The increment over [t_next, t] divided by its standard deviation."""
        return self.increment(t, t_next, like) / math.sqrt(abs(t - t_next))


def brownian_path(times: Tensor, shape, *, seed: int = 0, dtype=torch.float64, device=None,
                  levy_area_approximation: str = "none"):
    """A torchsde ``BrownianInterval`` for sampling over ``times`` (T .. t_min), shareable between grids
    with the same two ends. ``shape`` is the full batch shape of x."""
    import torchsde

    times = torch.as_tensor(times, dtype=torch.float64)
    shape = tuple(shape)
    size = (shape[0], math.prod(shape[1:]))
    return torchsde.BrownianInterval(t0=0.0, t1=float(times[0] - times[-1]), size=size, dtype=dtype,
                                     device=device, entropy=seed, levy_area_approximation=levy_area_approximation)


# ---------------------------------------------------------------------------------------------
@dataclass
class SampleResult:
    """What every sampler returns.

    ``times`` is the grid actually used (float64), ``trajectory`` the state at every grid time
    (``(len(times), *x.shape)``) when asked. ``t_start``/``t_end`` with alpha and sigma there record
    exactly where the sampler started and ended: an error is comparable against a reference only
    with the same two ends (a final denoising step ends at t = 0, alpha = 1, sigma = 0).
    """

    samples: Tensor
    times: Tensor
    nfe: int
    method: str
    convergence_order: float | None
    t_start: float
    t_end: float
    alpha_start: float
    sigma_start: float
    alpha_end: float
    sigma_end: float
    trajectory: Tensor | None = None
    stats: dict = field(default_factory=dict)


class SamplingContext:
    """What :func:`sample` hands a sampler: noise, the per-step hook, and a stats dict.

    ``watch`` (a :class:`~scoresde.checks.FiniteWatch`) is told the state after every step; by default
    one that records without reading, so the hook never waits for the device.
    """

    def __init__(self, sampler: Sampler, times: Tensor, noise, generator, record: bool, progress: bool,
                 watch: FiniteWatch | None = None):
        self.sampler = sampler
        self.watch = FiniteWatch("off", label=sampler.name) if watch is None else watch
        self.times = times
        self.noise = noise
        self.generator = generator
        self.stats: dict[str, Any] = {}
        self._record = record
        self._progress = progress
        self._t = times.tolist()
        self.current_step = 0  # the grid step in progress, for messages
        self.trajectory: list[Tensor] = []
        # the one progress helper: a bar on a terminal, plain lines in a log, nothing when off
        self._bar = progress_bar(total=len(times) - 1, desc=sampler.name, enabled=progress, leave=False)

    @property
    def observed(self) -> bool:
        """Whether anyone looks at the state of every grid step (a trajectory or a progress bar).

        When not, a solver whose grid states are only interpolated outputs (the adaptive ODE solvers)
        may solve between the two ends and report the last step alone.
        """
        return self._record or self._progress

    def start(self, x: Tensor) -> None:
        if self._record:
            self.trajectory.append(x.detach().clone())

    def step(self, i: int, x: Tensor) -> None:
        """Report that step ``i`` (from times[i] to times[i+1]) is done with state ``x``."""
        self.watch.state(i, x)  # recorded on the device; read after the run (or now, with check_finite='step')
        self.current_step = i + 1
        if self._record:
            self.trajectory.append(x.detach().clone())
        if self._progress:
            self._bar.update(1)

    def brownian_increment(self, i: int, like: Tensor) -> Tensor:
        """Brownian increment over step i (variance |times[i] - times[i+1]|), shaped like ``like``."""
        return self.noise.increment(self._t[i], self._t[i + 1], like)

    def normal(self, i: int, like: Tensor) -> Tensor:
        """The standard normal of step i: the Brownian increment divided by sqrt(step length)."""
        return self.noise.normal(self._t[i], self._t[i + 1], like)

    def randn_like(self, like: Tensor) -> Tensor:
        """Extra Gaussian noise off the Brownian path (e.g. for corrector steps)."""
        return torch.randn(like.shape, generator=self.generator, device=like.device, dtype=like.dtype)

    def close(self):
        self._bar.close()


def _all_finite(x: Tensor) -> bool:
    """A host read of the whole tensor: for checks at the boundary or an adaptive solver, never per step."""
    return bool(torch.isfinite(x).all())


def sample(model: ScoreModel, sde: SDE, method, steps: int | None = None, *, x_T: Tensor | None = None,
           shape: tuple[int, ...] | None = None, generator: torch.Generator | None = None, grid=None,
           t_min: float | None = None, T: float | None = None, final_denoise: bool = False, brownian=None,
           dtype: torch.dtype | None = None, return_trajectory: bool = False, progress: bool = False,
           grad: bool = False, check_finite: str = "end", **options) -> SampleResult:
    """Sample from ``model`` by integrating the reverse dynamics of ``sde`` with ``method``.

    Every argument is checked before the first model call; a bad one raises a ``ValueError`` or
    ``TypeError`` naming it, the value given and what is allowed.

    Args:
        model: a :class:`ScoreModel` (its ``sde`` must be ``sde``).
        method: a registered name (see :func:`available`), a :class:`Sampler` subclass, or the path of a
            tuned sampler (``.json``, written by :func:`scoresde.studies.tune.tune` / ``scoresde tune``: its
            method, options and grid).
        steps: number of grid steps, an integer in ``[1, MAX_STEPS]`` (may be None for adaptive solvers
            or with a grid tensor).
        x_T: the starting state at ``T`` (``(batch, *event_shape)``, floating, finite, batch >= 1); or
            give ``shape`` (a tuple of positive ints, with ``generator`` and a floating ``dtype``) to draw
            it from the prior N(0, sigma(T)^2 I) at the ``T`` the run starts from.
        generator: a ``torch.Generator`` for the prior draw and the sampler's noise.
        grid: a grid name (``scoresde.grids.available()``), a callable ``fn(sde, steps, t_min, T)``
            returning ``steps + 1`` decreasing times from ``T`` to ``t_min``, or a decreasing tensor of
            times in ``(0, sde.T]`` (which fixes both ends and the step count). None: the SDE's
            ``default_grid`` (``'logsnr'``; ``'quadratic'`` for the flow-matching path).
        t_min, T: the two ends of the grid (default: the SDE's).
        final_denoise: finish with Tweedie's denoiser x0(x, t_min) (one more model call).
        brownian: a torchsde Brownian path (see :func:`brownian_path`) for stochastic samplers, of size
            ``(batch, prod(event_shape))`` covering ``[0, T - t_min]``; default: noise from ``generator``.
        return_trajectory: keep the state at every grid time (detached).
        progress: show a tqdm progress bar.
        grad: run with autograd on, so that the samples are differentiable with respect to the
            network's parameters, ``x_T``, a grid tensor and tensor-valued sampler options (default: no graph).
        check_finite: when a non-finite model output or state is looked for. ``'end'`` (default): each is
            recorded on the device as the run goes (which call and which step first went bad) and read once
            at the end, which then raises; ``'record'``: the same without raising, the record (or None) in
            ``stats['non_finite']``; ``'step'``: every output and state is read as it is produced, raising at
            the first bad one (for debugging: a host-device synchronisation per model call); ``'off'``.
        **options: the sampler's own options (``method``'s constructor arguments).

    Raises:
        NonFiniteModelOutput: (a ``FloatingPointError``) the network returned NaN/inf; the message
            names the step and the time.
        FloatingPointError: the state became non-finite with finite model outputs (an unstable step).
    """
    if (isinstance(method, str) or hasattr(method, "__fspath__")) and str(method).endswith(".json"):  # scoresde tune
        from ..studies.tune import resolve_tuned

        method, grid, options = resolve_tuned(method, sde, steps, options)
        steps = None
    cls = get_sampler(method)
    check_instance("model", model, ScoreModel, "a scoresde.ScoreModel")
    check_instance("sde", sde, SDE, "a scoresde.SDE")
    if model.sde is not sde and model.sde != sde:
        raise ValueError(f"sde: {sde!r} differs from the model's SDE {model.sde!r}")
    if grid is None:
        grid = sde.default_grid
    for name, flag in (("final_denoise", final_denoise), ("return_trajectory", return_trajectory),
                       ("progress", progress), ("grad", grad)):
        check_bool(name, flag)
    check_generator("generator", generator)
    check_choice("check_finite", check_finite, CHECK_FINITE)
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: {cls.name!r} does not accept {', '.join(unknown)}; "
                         f"its options are: {', '.join(allowed) or '(none)'}")
    sampler = cls(**options)

    user_grid = isinstance(grid, (Tensor, list, tuple))
    if steps is not None:
        steps = check_count("steps", steps, maximum=MAX_STEPS)
    elif not user_grid:
        if not sampler.adaptive:
            raise ValueError(f"steps: {cls.name!r} needs a number of steps (a positive integer), got None")
        steps = 1  # an adaptive solver only needs the two ends
    t_min, T = check_time("t_min", t_min), check_time("T", T)
    times = _make_times(grid, sde, steps, t_min, T)

    t_start, t_last = float(times[0].detach()), float(times[-1].detach())
    x = _initial_state(sde, x_T, shape, generator, dtype, T=t_start)
    if brownian is not None:
        _check_brownian(brownian, x, times.detach())
    noise = GeneratorNoise(generator) if brownian is None else BrownianNoise(brownian, t_start)
    grid_times = times.detach().tolist()
    watch = FiniteWatch(check_finite, label=cls.name, times=grid_times)
    ctx = SamplingContext(sampler, times.detach(), noise, generator, return_trajectory, progress, watch)

    schedule = Schedule.from_times(sde, times)
    nfe0 = model.nfe
    start = time.perf_counter()
    try:
        with torch.set_grad_enabled(grad), model.watching(watch):
            ctx.start(x)
            try:
                x = sampler.run(model, x, schedule, ctx)
            except NonFiniteModelOutput as e:  # check_finite='step'
                i = min(ctx.current_step, schedule.steps - 1)
                raise NonFiniteModelOutput(f"{cls.name}: {_during_step(i, grid_times)}: {e}") from None
            except FloatingPointError:  # a solver's own check (an adaptive one cannot go on): the record says why
                failure = watch.read()
                if failure is None:
                    raise
                raise watch.error(failure) from None
            if final_denoise:
                try:
                    x = model.x0(x, schedule.t[-1])
                    if getattr(sampler, "clip_sample", False):  # DDIM's clipping holds for its step to alpha = 1
                        x = x.clamp(-sampler.clip_range, sampler.clip_range)
                    if getattr(sampler, "thresholding", False):  # so does the thresholding of the data prediction
                        from ._thresholding import dynamic_threshold
                        x = dynamic_threshold(x, sampler.percentile, sampler.max_value)
                except NonFiniteModelOutput as e:
                    raise NonFiniteModelOutput(f"{cls.name}: in the final denoising step: {e}") from None
                watch.state(schedule.steps, x)
    finally:
        ctx.close()
    # failures as data: the one read of the record, after the run
    failure = watch.read()
    if check_finite in ("end", "record"):
        ctx.stats["non_finite"] = failure
    if failure is not None and check_finite == "end":
        raise watch.error(failure)
    ctx.stats["wall_time"] = time.perf_counter() - start

    t_end = 0.0 if final_denoise else t_last
    a1, s1 = (1.0, 0.0) if final_denoise else (float(schedule.alpha[-1].detach()), float(schedule.sigma[-1].detach()))
    return SampleResult(
        samples=x, times=times.detach(), nfe=model.nfe - nfe0, method=cls.name,
        convergence_order=_declared_order(sampler, schedule.steps), t_start=t_start, t_end=t_end,
        alpha_start=float(schedule.alpha[0].detach()), sigma_start=float(schedule.sigma[0].detach()), alpha_end=a1, sigma_end=s1,
        trajectory=torch.stack(ctx.trajectory) if return_trajectory else None, stats=ctx.stats,
    )


# ----- checks at the boundary of sample() ------------------------------------------------------------
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _during_step(i: int, times: list[float]) -> str:
    return f"during step {i} (t = {times[i]:.6g} -> {times[i + 1]:.6g})"


def _make_times(grid, sde: SDE, steps: int | None, t_min: float | None, T: float | None) -> Tensor:
    """The grid, checked: strictly decreasing from T to t_min inside (0, sde.T], steps + 1 points."""
    if isinstance(grid, (Tensor, list, tuple)):
        times = _grids.make_grid(grid, sde, steps)
        for name, given, end in (("T", T, float(times[0])), ("t_min", t_min, float(times[-1]))):
            if given is not None and not math.isclose(given, end, rel_tol=1e-12):
                raise ValueError(f"{name}: {given!r} differs from the grid tensor's end {end!r}; a grid tensor fixes "
                                 "both ends (leave T and t_min out)")
        if isinstance(grid, Tensor) and grid.requires_grad:
            return grid.to(torch.float64).cpu()  # the same values, with the graph kept for grad=True
        return times
    if T is not None and not 0 < T <= sde.T * (1 + 1e-12):
        raise ValueError(f"T: expected a start time in (0, sde.T = {sde.T}], got {T!r}")
    # make_grid checks the grid it builds (steps + 1 strictly decreasing times from T to t_min in (0, sde.T])
    return _grids.make_grid(grid, sde, steps, t_min=t_min, T=T)


def _declared_order(sampler: Sampler, steps: int) -> float | None:
    # Some samplers lower their order on short runs (lower_order_final): the run's own order is recorded.
    order_for = getattr(sampler, "convergence_order_for", None)
    return order_for(steps) if order_for is not None else sampler.convergence_order


def _initial_state(sde: SDE, x_T, shape, generator, dtype, *, T: float) -> Tensor:
    if shape is not None:
        shape = check_shape("shape", shape)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype: expected a torch.dtype ({', '.join(map(str, FLOAT_DTYPES))}), got {dtype!r}")
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype: the prior draw needs a floating dtype ({', '.join(map(str, FLOAT_DTYPES))}), "
                             f"got {dtype}")
    if x_T is None:
        if shape is None:
            raise ValueError("x_T/shape: give the starting state x_T or a shape to draw it from the prior")
        return sde.prior_sample(shape, generator=generator, dtype=dtype or torch.float32, T=T)
    check_instance("x_T", x_T, Tensor, "a tensor")
    if x_T.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x_T: expected a floating dtype ({', '.join(map(str, FLOAT_DTYPES))}), got {x_T.dtype}")
    if x_T.ndim < 2:
        raise ValueError(f"x_T: expected shape (batch, *event_shape), got {tuple(x_T.shape)}")
    if x_T.shape[0] == 0:
        raise ValueError(f"x_T: an empty batch, shape {tuple(x_T.shape)}; give at least one sample")
    if shape is not None and shape != tuple(x_T.shape):
        raise ValueError(f"x_T: shape {tuple(x_T.shape)} differs from shape={shape}")
    if dtype is not None and dtype != x_T.dtype:
        raise ValueError(f"x_T: dtype {x_T.dtype} differs from dtype={dtype}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T: contains non-finite values")
    return x_T


def _check_brownian(path, x: Tensor, times: Tensor) -> None:
    size = getattr(path, "shape", None)
    expected = (x.shape[0], math.prod(x.shape[1:]))
    if not callable(path):
        raise TypeError(f"brownian: expected a Brownian path path(s_a, s_b) -> increment (see brownian_path), "
                        f"got {type(path).__name__}")
    if size is not None and tuple(size) != expected:
        raise ValueError(f"brownian: the path has size {tuple(size)}, the batch needs {expected} "
                         f"(build it with brownian_path(times, x.shape))")
    # torchsde keeps a BrownianInterval's ends as _start and _end; other paths are trusted
    lo, hi = getattr(path, "_start", None), getattr(path, "_end", None)
    span = float(times[0] - times[-1])
    if lo is not None and hi is not None and (float(lo) > 1e-12 * span or float(hi) < span * (1 - 1e-9)):
        raise ValueError(f"brownian: the path covers s in [{float(lo):.6g}, {float(hi):.6g}], the run needs "
                         f"[0, T - t_min] = [0, {span:.6g}] (build it with brownian_path(times, x.shape))")
