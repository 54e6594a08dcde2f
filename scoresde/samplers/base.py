"""The sampler contract: one registry, one call signature, one result type.

A sampler is a class with metadata (``name``, ``order``, ``calls_per_step``, ``stochastic``) and a
``run(model, x, times, ctx)`` method that takes the state at ``times[0]`` to ``times[-1]``, calling
``ctx.step(i, x)`` after each grid step. :func:`sample` does everything around it once: validation,
the grid, the prior draw, NFE accounting from the model's own counter, trajectories, the final
denoising step, progress and timing. Adding a sampler is one new file in this package that defines
a subclass decorated with :func:`register`.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import grids as _grids
from ..models import ScoreModel
from ..schedule import Schedule
from ..sde import SDE

__all__ = ["Sampler", "SteppedSampler", "SamplerState", "Schedule", "SampleResult", "SamplingContext", "register", "get_sampler", "available", "sample",
           "SAMPLERS", "GeneratorNoise", "BrownianNoise", "brownian_path", "GridPoint", "grid_points"]

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

    Class attribute: ``name`` (registry key). Attributes an instance may set in ``__init__`` from
    its options (class defaults otherwise): ``adaptive`` (chooses its own steps; ``steps`` may then
    be None), ``stochastic`` (draws noise), ``convergence_order`` (theoretical global order of the deterministic error, or the
    weak order for SDE samplers; None when it has none; a constructor option ``order`` picks a solver's order and may
    differ from it) and ``calls_per_step`` (model evaluations per grid step).
    """

    name: ClassVar[str] = ""
    stochastic: bool = False
    adaptive: bool = False
    convergence_order: float | None = None
    calls_per_step: int = 1

    def expected_nfe(self, steps: int) -> int | None:
        """Model evaluations for ``steps`` grid steps (None where the solver decides, e.g. adaptive)."""
        return self.calls_per_step * steps

    def run(self, model: ScoreModel, x: Tensor, times: Tensor, ctx: SamplingContext) -> Tensor:
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

    ``init(schedule, x)`` gives the state at ``schedule.t[0]``; ``step(model, schedule, state,
    output, ctx)`` consumes the raw network output at ``(state.x_eval, state.t_eval)`` and returns
    the next state. ``run`` is the loop over them; an external loop (a diffusers pipeline) can own
    the model calls instead and hand each output to :meth:`step`. ``model`` is used for its
    conversions (``to_eps``, ``to_x0``) only, never called by ``step``.
    """

    def init(self, schedule: Schedule, x: Tensor) -> SamplerState:
        return SamplerState(x=x, i=0, x_eval=x, t_eval=schedule.t[0])

    def step(self, model: ScoreModel, schedule: Schedule, state: SamplerState, output: Tensor,
             ctx: SamplingContext) -> SamplerState:
        raise NotImplementedError

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        state = self.init(schedule, x)
        while state.i < schedule.steps:
            output = model.predict(state.x_eval, state.t_eval)
            i = state.i
            state = self.step(model, schedule, state, output, ctx)
            if state.i > i:
                ctx.step(i, state.x)
        return state.x


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
    layout of :class:`scoresde.sde.ReverseSDE`; :func:`brownian_path` builds one.
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
    """What :func:`sample` hands a sampler: noise, the per-step hook, and a stats dict."""

    def __init__(self, sampler: Sampler, times: Tensor, noise, generator, record: bool, progress: bool):
        self.sampler = sampler
        self.times = times
        self.noise = noise
        self.generator = generator
        self.stats: dict[str, Any] = {}
        self._record = record
        self._progress = progress
        self._t = times.tolist()  # Python floats: no 0-d tensor per step
        self.trajectory: list[Tensor] = []
        self._bar = tqdm(total=len(times) - 1, desc=sampler.name, disable=not progress, leave=False)

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
        if not _all_finite(x):
            raise FloatingPointError(
                f"{self.sampler.name}: non-finite values after step {i} (t = {self._t[i]:.6g} -> "
                f"{self._t[i + 1]:.6g}); the model returned NaN/inf or the step is unstable")
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


class GridPoint(NamedTuple):
    """A grid time with its SDE coefficients, as float64 Python numbers (no 0-d tensor per step)."""

    t: float
    lam: float
    alpha: float
    sigma: float


def grid_points(sde: SDE, times: Tensor) -> list[GridPoint]:
    """``times`` with lambda, alpha and sigma at each, from one vectorised evaluation of the SDE."""
    times = torch.as_tensor(times, dtype=torch.float64)
    lam = sde.lam(times)
    alpha, sigma = sde.alpha_sigma(times)
    return [GridPoint(*v) for v in zip(times.tolist(), lam.tolist(), alpha.tolist(), sigma.tolist(), strict=True)]


def _all_finite(x: Tensor) -> bool:
    # max |x| is NaN or inf exactly when an entry is: one reduction and one sync, about a fifth of the
    # time of isfinite(x).all() on a CPU
    return x.numel() == 0 or math.isfinite(float(x.abs().amax()))


def _coefficients(sde: SDE, t: float) -> tuple[float, float]:
    if t == 0.0:
        return 1.0, 0.0
    a, s = sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(a), float(s)


def sample(model: ScoreModel, sde: SDE, method, steps: int | None = None, *, x_T: Tensor | None = None,
           shape=None, generator: torch.Generator | None = None, grid="logsnr", t_min: float | None = None,
           T: float | None = None, final_denoise: bool = False, brownian=None, dtype: torch.dtype | None = None,
           return_trajectory: bool = False, progress: bool = False, grad: bool = False, **options) -> SampleResult:
    """Sample from ``model`` by integrating the reverse dynamics of ``sde`` with ``method``.

    Args:
        model: a :class:`ScoreModel` (its ``sde`` must be ``sde``).
        method: a registered name (see :func:`available`) or a :class:`Sampler` subclass.
        steps: number of grid steps (may be None for adaptive solvers).
        x_T: the starting state at T; or give ``shape`` (with ``generator``, ``dtype``) to draw it
            from the prior N(0, sigma(T)^2 I).
        grid: a grid name (``scoresde.grids.available()``), a callable, or a decreasing tensor of times.
        t_min, T: the two ends of the grid (default: the SDE's).
        final_denoise: finish with Tweedie's denoiser x0(x, t_min) (one more model call).
        brownian: a torchsde Brownian path (see :func:`brownian_path`) for stochastic samplers;
            default: increments drawn from ``generator``.
        return_trajectory: keep the state at every grid time.
        progress: show a tqdm progress bar.
        grad: run with autograd on, so that the samples are differentiable with respect to the
            network's parameters, ``x_T`` and tensor-valued sampler options (default: no graph).
        **options: the sampler's own options (``method``'s constructor arguments).
    """
    cls = get_sampler(method)
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if not isinstance(sde, SDE):
        raise ValueError(f"sde: expected a scoresde.SDE, got {type(sde).__name__}")
    if model.sde is not sde and model.sde != sde:
        raise ValueError(f"sde: {sde!r} differs from the model's SDE {model.sde!r}")
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: {cls.name!r} does not accept {', '.join(unknown)}; "
                         f"its options are: {', '.join(allowed) or '(none)'}")
    sampler = cls(**options)

    if steps is None and not sampler.adaptive and not isinstance(grid, (Tensor, list, tuple)):
        raise ValueError(f"steps: {cls.name!r} needs a number of steps (a positive integer)")
    if steps is None and sampler.adaptive and not isinstance(grid, (Tensor, list, tuple)):
        steps = 1  # an adaptive solver only needs the two ends
    times = _grids.make_grid(grid, sde, steps, t_min=t_min, T=T)

    x = _initial_state(sde, x_T, shape, generator, dtype)
    noise = GeneratorNoise(generator) if brownian is None else BrownianNoise(brownian, float(times[0]))
    ctx = SamplingContext(sampler, times, noise, generator, return_trajectory, progress)

    schedule = Schedule.from_times(sde, times)
    nfe0 = model.nfe
    start = time.perf_counter()
    try:
        with torch.set_grad_enabled(grad), model.grid(times):
            ctx.start(x)
            x = sampler.run(model, x, schedule, ctx)
            if final_denoise:
                x = model.x0(x, float(times[-1]))
                if not _all_finite(x):
                    raise FloatingPointError(f"{cls.name}: non-finite values in the final denoising step at t = {float(times[-1]):.6g}")
    finally:
        ctx.close()
    ctx.stats["wall_time"] = time.perf_counter() - start

    t_end = 0.0 if final_denoise else float(times[-1])
    a0, s0 = _coefficients(sde, float(times[0]))
    a1, s1 = _coefficients(sde, t_end)
    return SampleResult(
        samples=x, times=times, nfe=model.nfe - nfe0, method=cls.name, convergence_order=sampler.convergence_order,
        t_start=float(times[0]), t_end=t_end, alpha_start=a0, sigma_start=s0, alpha_end=a1, sigma_end=s1,
        trajectory=torch.stack(ctx.trajectory) if return_trajectory else None, stats=ctx.stats,
    )


def _initial_state(sde: SDE, x_T, shape, generator, dtype) -> Tensor:
    if x_T is None:
        if shape is None:
            raise ValueError("x_T/shape: give the starting state x_T or a shape to draw it from the prior")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape: expected (batch, *event_shape) with positive sizes, got {shape}")
        return sde.prior_sample(shape, generator=generator, dtype=dtype or torch.float32)
    if not isinstance(x_T, Tensor):
        raise ValueError(f"x_T: expected a tensor, got {type(x_T).__name__}")
    if x_T.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"x_T: expected a floating dtype (float16, bfloat16, float32, float64), got {x_T.dtype}")
    if x_T.ndim < 2:
        raise ValueError(f"x_T: expected shape (batch, *event_shape), got {tuple(x_T.shape)}")
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"x_T: shape {tuple(x_T.shape)} differs from shape={tuple(shape)}")
    if dtype is not None and dtype != x_T.dtype:
        raise ValueError(f"x_T: dtype {x_T.dtype} differs from dtype={dtype}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T: contains non-finite values")
    return x_T
