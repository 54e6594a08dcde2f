r"""``ScoresdeScheduler``: any stepped scoresde sampler inside a diffusers pipeline.

diffusers' protocol is one model call per ``scheduler.step(model_output, timestep, sample)``, at the
timesteps the scheduler lists. A :class:`~scoresde.samplers.base.SteppedSampler` is the same thing
with explicit state: ``step(model, schedule, state, output, ctx)`` consumes the raw network output at
``(state.x_eval, state.t_eval)`` and returns the next state. The scheduler therefore

* builds the grid in ``set_timesteps(n)``. By default it is diffusers' own: the ``n`` timesteps a
  native scheduler of the same config lists (``timestep_spacing`` 'leading' / 'trailing' /
  'linspace', ``steps_offset``; the rule of the family the config came from, see
  ``timestep_rule``), placed at ``t = (k + 1) / N``, followed by the final denoising call: ``n``
  inference steps are ``n`` model calls for a one-call method, as in diffusers. A scoresde grid
  (``grid='logsnr'``, ...) or explicit ``times`` are options; ``set_timesteps(timesteps=[...])`` and
  ``set_timesteps(sigmas=[...])`` take a custom grid as diffusers' schedulers do;
* lists one timestep per model call: the network time ``N t_eval - 1`` of every call the sampler
  will make (its ``call_times``, known from the grid alone), then the final denoising call;
* steps the sampler with the one stepping driver, :func:`~scoresde.samplers.base.drive`, which yields
  the state that waits for the next model output, and returns as ``prev_sample`` that state's model
  input ``x_eval`` (a Heun or singlestep stage point, or the next grid state). A multi-call step
  (Heun: 2 calls) is 2 diffusers steps, and ``order`` says so, as diffusers' Heun does.

Partial runs (img2img, inpainting): a run may begin at any step boundary of the listed calls, given by
``set_begin_index(k)`` or found from the first timestep handed to ``step``; the sampler starts there
without history (``begin(..., start=i)``), exactly as ``scoresde.sample`` on the grid's suffix.
``add_noise`` noises to any listed timestep. Latents changed between steps (an inpainting blend) are
stepped on from where the pipeline left them (at step boundaries; a blend between Heun's two calls is not
seen). Options whose default depends on the run's length (``lower_order_final=None``) are decided on the
whole schedule, as diffusers decides them on ``len(timesteps)``.

Since the network sees exactly the times the sampler asks for, a pipeline run equals
``scoresde.sample`` with the model of :func:`~scoresde.interop.from_diffusers` on the same x_T and grid
(``scheduler.schedule.t``). The model input needs no scaling (the state is in the VP frame:
``scale_model_input`` is the identity) and the run starts from ``init_noise_sigma = 1`` times a
standard normal, as diffusers' VP schedulers do (sigma(T) = 1 - 2e-5 on DDPM's schedule).

:meth:`ScoresdeScheduler.from_scheduler` reproduces a native scheduler's run: its grid, final step and
options from :func:`~scoresde.interop.diffusers_equivalent`; where its noise levels lie between the
training knots (Karras, exponential, beta sigmas, ...) the listed timesteps are diffusers' own; for the
sigma-frame schedulers (Euler, Heun) ``init_noise_sigma`` is theirs in the VP frame and a run that ends
above sigma = 0 returns its last state in their frame.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
from torch import Tensor

from .. import grids as _grids
from .._tensor import append_dims
from ..models import ScoreModel
from ..samplers._thresholding import dynamic_threshold
from ..samplers.base import GeneratorNoise, SamplingContext, SteppedSampler, drive, get_sampler
from ..schedule import Schedule
from .diffusers import (
    TIME_ROUNDINGS,
    _config,
    _equivalent,
    _parameterization,
    _snap,
    diffusers_betas,
    diffusers_grid,
    diffusers_sde,
)

__all__ = ["ScoresdeScheduler", "native_timesteps", "TIMESTEP_RULES"]

# a pipeline hands back the timestep it was given; allow for its passing through float32
_TIMESTEP_TOL = 1e-3
SPACINGS = ("leading", "trailing", "linspace")
# how each family of diffusers schedulers places its timesteps (see native_timesteps)
TIMESTEP_RULES = ("ddpm", "multistep", "euler")
_RULE_OF_CLASS = {
    "DDPMScheduler": "ddpm", "DDIMScheduler": "ddpm", "PNDMScheduler": "ddpm",
    "DPMSolverMultistepScheduler": "multistep", "UniPCMultistepScheduler": "multistep",
    "DEISMultistepScheduler": "multistep", "DPMSolverSinglestepScheduler": "multistep",
    "EulerDiscreteScheduler": "euler", "HeunDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler",
    "KDPM2DiscreteScheduler": "euler", "LMSDiscreteScheduler": "euler",
}


def _rule_of(config: Mapping) -> str:
    """The timestep rule of the scheduler a config came from: by its ``_class_name`` when saved, else by
    the keys only that family has (a live scheduler's ``config`` does not carry its class name)."""
    name = config.get("_class_name")
    if name in _RULE_OF_CLASS:
        return _RULE_OF_CLASS[name]
    if "solver_order" in config:
        return "multistep"
    if "use_karras_sigmas" in config:
        return "euler"
    return "ddpm"


def native_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0,
                     rule: str = "ddpm") -> np.ndarray:
    """The ``steps`` timesteps a diffusers scheduler lists (float64, decreasing), by its family's rule.

    'ddpm' (DDPM, DDIM): 'linspace' rounds ``linspace(0, N - 1, steps)``, 'leading' is ``k N // steps
    + steps_offset``, 'trailing' is ``round(N - k N / steps) - 1``. 'multistep' (DPM-Solver, UniPC,
    DEIS) spaces ``steps + 1`` points the same way and drops the smallest ('leading': ``N // (steps +
    1)`` apart). 'euler' (Euler, Heun) is 'ddpm' without rounding 'linspace' (fractional timesteps).
    """
    n, m = num_train_timesteps, steps + (rule == "multistep")
    if spacing == "linspace":
        ts = np.linspace(0, n - 1, m)
        ts = ts if rule == "euler" else ts.round()
        ts = ts[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, m) * (n // m)).round()[::-1] + steps_offset
    else:
        ts = np.arange(n, 0, -n / steps).round() - 1
    return np.array(ts[:steps].tolist(), dtype=np.float64)


_SIGMA_FRAME = ("EulerDiscreteScheduler", "HeunDiscreteScheduler")
# the native schedulers diffusers_equivalent reproduces (others lend their timesteps to a method given)
_EQUIVALENT_CLASSES = ("DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                       "EulerDiscreteScheduler", "HeunDiscreteScheduler")


def _native_init_noise_sigma(native: Mapping, steps: int, t0: Tensor, sde) -> float:
    """The scale of x_T that reproduces a native scheduler's start, in the VP frame. diffusers' sigma-frame
    schedulers (Euler, Heun) hold ``x / alpha`` and draw it with their ``init_noise_sigma`` (``sigma_max``
    for 'linspace' and 'trailing' spacing, ``sqrt(sigma_max^2 + 1)`` otherwise), which is
    ``init_noise_sigma * alpha(t_0)`` here; the others draw in the VP frame, with 1."""
    import diffusers

    name = native.get("_class_name")
    if name not in _SIGMA_FRAME:
        return 1.0
    sched = getattr(diffusers, name).from_config(dict(native))
    sched.set_timesteps(steps)
    alpha = float(sde.alpha(torch.as_tensor(t0, dtype=torch.float64)))
    return float(sched.init_noise_sigma) * alpha


def _never_called(x: Tensor, t: Tensor) -> Tensor:
    raise RuntimeError("ScoresdeScheduler: the sampler called the model; a SteppedSampler's step only converts outputs")


def _stepped_names() -> list[str]:
    from ..samplers.base import SAMPLERS

    return sorted(n for n, c in SAMPLERS.items() if issubclass(c, SteppedSampler))


def _as_option(value):
    # JSON keeps tensors as nested lists: matrices of coefficients come back as float64 tensors
    if isinstance(value, list) and value and isinstance(value[0], (list, float)):
        return torch.tensor(value, dtype=torch.float64)
    return value


def _decreasing(name: str, values, low: float, high: float, what: str) -> Tensor:
    """``values`` as a float64 1-D tensor, strictly decreasing inside [low, high]; a named error if not."""
    try:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64) if not isinstance(values, Tensor) else values,
                            dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected a list of numbers ({what}), got {values!r:.80}") from None
    if t.numel() == 0:
        raise ValueError(f"{name}: expected at least one {what}, got an empty list")
    bad = ~torch.isfinite(t) | (t < low) | (t > high)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{name}: expected {what} in [{low:g}, {high:g}], got {name}[{i}] = {float(t[i])!r}")
    rising = t[1:] >= t[:-1]
    if bool(rising.any()):
        i = int(rising.nonzero()[0]) + 1
        raise ValueError(f"{name}: expected strictly decreasing {what}, but {name}[{i}] = {float(t[i])!r} >= "
                         f"{name}[{i - 1}] = {float(t[i - 1])!r}")
    return t


@dataclasses.dataclass
class _Plan:
    """One ``set_timesteps`` result: the grid, the sampler, and the listed model calls (cached per request)."""

    times: Tensor  # float64 grid, decreasing; one point when only the final denoising call is made
    schedule: Schedule | None
    sampler: SteppedSampler
    listed: list  # network timesteps of the calls, on the host
    timesteps: Tensor  # the same on the host (int64 when all are integers, as diffusers lists them)
    sigmas: Tensor  # diffusers' sigma = sigma/alpha at each call, then 0 after a final denoising call
    sampler_calls: int  # calls the sampler makes (the final denoising call is one more)
    final_denoise: bool
    rounding: str | None = None  # how the listed network times are snapped
    init_noise_sigma: float = 1.0  # the scale of x_T a pipeline draws
    final_scale: float = 1.0  # the last state in the native frame (a sigma-frame run that does not end at 0)
    starts: dict | None = None  # call index -> grid step that begins there (built for partial runs)


class ScoresdeScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs the registered scoresde sampler ``method`` with ``options``.

    Config (JSON values; ``save_config`` / ``from_config`` round trip): the training schedule
    (``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``,
    ``prediction_type``, read as :func:`~scoresde.interop.from_diffusers` reads them); ``method`` and
    ``options`` (the sampler's constructor arguments); the grid: by default diffusers' timesteps
    (``timestep_spacing``, ``steps_offset``, ``timestep_rule`` 'ddpm' / 'multistep' / 'euler', set from
    the config's class by ``from_config``); or ``grid`` (a scoresde grid name; then ``n`` inference
    steps are ``n`` grid steps) with ``t_min``; or explicit ``times`` (a decreasing list from 1 to
    ``t_min``); ``final_denoise`` (default True: end with the data prediction, as diffusers' step to
    sigma = 0 does; False: end at ``t = 1/N``, diffusers' ``alphas_cumprod[0]``); ``time_rounding``
    (None, 'round', 'floor': snap the listed network times to integers); ``native`` (a native
    scheduler's config, set by :meth:`from_scheduler`: its grid and options, step count by step count).

    ``pipe.scheduler = ScoresdeScheduler.from_config(pipe.scheduler.config, method='dpm_solver++')``
    swaps it into a pipeline, keeping the pipeline's training schedule and timestep spacing.
    ``DDIMPipeline`` converts any scheduler given to its constructor into a ``DDIMScheduler``: assign
    ``pipe.scheduler = ...`` after building it. :meth:`from_fitted` runs a
    :class:`~scoresde.studies.solver_fit.FittedSolver`.
    """

    config_name = "scheduler_config.json"
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: list[float] | None = None,
                 prediction_type: str = "epsilon", method: str = "ddim", options: dict | None = None,
                 grid: str | None = None, t_min: float | None = None, times: list[float] | None = None,
                 final_denoise: bool = True, time_rounding: str | None = None, timestep_spacing: str = "leading",
                 steps_offset: int = 0, timestep_rule: str = "ddpm", native: dict | None = None):
        if time_rounding not in TIME_ROUNDINGS:
            raise ValueError(f"time_rounding: unknown {time_rounding!r}; allowed: None, 'round', 'floor'")
        if not isinstance(final_denoise, bool):
            raise TypeError(f"final_denoise: expected True or False, got {final_denoise!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options: expected a dict of the sampler's options, got {type(options).__name__}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing: unknown {timestep_spacing!r}; allowed: {', '.join(SPACINGS)}")
        if timestep_rule not in TIMESTEP_RULES:
            raise ValueError(f"timestep_rule: unknown {timestep_rule!r}; allowed: {', '.join(TIMESTEP_RULES)}")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise ValueError(f"steps_offset: expected an integer >= 0, got {steps_offset!r}")
        if native is not None and not isinstance(native, Mapping):
            raise TypeError(f"native: expected a diffusers scheduler config (a mapping), got {type(native).__name__}")
        if grid is not None and grid not in _grids.available():
            raise ValueError(f"grid: unknown {grid!r}; allowed: None (diffusers' timesteps), "
                             f"{', '.join(_grids.available())}")
        cfg = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                   beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type)
        self.sde = diffusers_sde(cfg)
        if times is not None:
            _decreasing("times", times, 0.0, self.sde.T, "times of the SDE")
        self.model = ScoreModel(_never_called, self.sde, _parameterization(cfg), time_input="discrete")
        self.sampler: SteppedSampler = self._make_sampler(method, options)
        self.order = self.sampler.calls_per_step  # diffusers counts progress-bar warm-up steps with it
        self.init_noise_sigma = 1.0  # diffusers' VP schedulers draw x_T ~ N(0, I) (sigma(T) = 1 - 5e-5)
        self.betas = diffusers_betas(cfg)
        self.alphas_cumprod = self.sde.alphas_cumprod.to(torch.float32) if self.sde.alphas_cumprod is not None \
            else torch.exp(2 * self.sde._log_alpha_knots).to(torch.float32)
        self.alphas = 1.0 - self.betas
        self.num_inference_steps: int | None = None
        # diffusers' default before set_timesteps: every training timestep, from the last
        self.timesteps: Tensor = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.sigmas: Tensor | None = None
        self.schedule: Schedule | None = None
        self._plans: dict = {}
        self._plan: _Plan | None = None
        self._begin_index: int | None = None
        self._reset_run()

    # ----- construction ---------------------------------------------------------------------------
    @staticmethod
    def _make_sampler(method, options) -> SteppedSampler:
        cls = get_sampler(method)
        if not issubclass(cls, SteppedSampler):
            raise ValueError(f"method: {cls.name!r} is not a SteppedSampler, so it cannot be driven one model call "
                             f"at a time; stepped samplers: {', '.join(_stepped_names())}")
        opts = {k: _as_option(v) for k, v in (options or {}).items()}
        allowed = cls.option_names()
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ValueError(f"options: {cls.name!r} does not accept {', '.join(unknown)}; its options are: "
                             f"{', '.join(allowed) or '(none)'}")
        return cls(**opts)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config``; a native scheduler's config also sets ``timestep_rule`` from its class."""
        if isinstance(config, Mapping) and "timestep_rule" not in kwargs and "timestep_rule" not in config:
            kwargs["timestep_rule"] = _rule_of(config)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_scheduler(cls, scheduler, method: str | None = None, options: dict | None = None,
                       **overrides) -> ScoresdeScheduler:
        """A scheduler that reproduces the native diffusers ``scheduler``'s run, step count by step count:
        its timesteps, final step and (unless ``method`` is given) its algorithm and options, from
        :func:`~scoresde.interop.diffusers_equivalent`; options that have no scoresde equivalent are
        refused there, by name. With ``method`` (and ``options``), that sampler runs on the native grid, for any
        native scheduler (e.g. ``DDPMScheduler``'s timesteps with ``method='dpm_solver++'``)."""
        cfg = _config(scheduler)
        name = cfg.get("_class_name")
        native = {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}
        if method is None:  # refuses what cannot be reproduced, before any run
            method, options = _equivalent(cfg, 10)["method"], None
        elif name in _EQUIVALENT_CLASSES:
            _equivalent(cfg, 10)
        else:
            diffusers_grid(cfg, 10)  # any native scheduler's timesteps, for the sampler given
        keep = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                                    "prediction_type", "timestep_spacing", "steps_offset") if k in cfg}
        return cls(**{**keep, "method": method, "options": options, "native": native,
                      "timestep_rule": _RULE_OF_CLASS.get(name, "ddpm"), **overrides})

    @classmethod
    def from_fitted(cls, solver, config=None, **overrides) -> ScoresdeScheduler:
        """A scheduler running a :class:`~scoresde.studies.solver_fit.FittedSolver` (or the path it was
        saved to): ``linear_multistep`` with its coefficients on its grid, no final denoising unless
        asked. ``config``: the training schedule, e.g. ``pipe.scheduler.config`` (it must be the one
        the solver was fitted on; keys this scheduler does not know are ignored); ``overrides`` win."""
        from ..studies.solver_fit import FittedSolver

        if isinstance(solver, (str, os.PathLike)):
            solver = FittedSolver.load(solver)
        if not isinstance(solver, FittedSolver):
            raise TypeError(f"solver: expected a FittedSolver or the path it was saved to, got {type(solver).__name__}")
        overrides.setdefault("final_denoise", False)
        return cls.from_config(dict(config or {}), method="linear_multistep",
                               options={"coefficients": solver.coefficients.tolist()},
                               times=solver.times.to(torch.float64).tolist(), **overrides)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ----- the grid ---------------------------------------------------------------------------
    def network_time(self, t: Tensor) -> Tensor:
        """The timestep the network is called with at continuous time t: ``N t - 1``, snapped if asked."""
        return _snap(self.sde.discrete_time(torch.as_tensor(t, dtype=torch.float64)), self._rounding)

    @property
    def step_index(self) -> int | None:
        """The index (into ``timesteps``) of the next call of the run in progress; None before its first."""
        return self._k

    @property
    def begin_index(self) -> int | None:
        """The index of the first call of a partial run (``set_begin_index``); None: found from the first timestep."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Begin the next run at call ``begin_index`` of ``timesteps`` (diffusers' img2img pipelines call this
        with ``t_start * order``); it must be where a grid step begins."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, numbers.Integral) or begin_index < 0:
            raise ValueError(f"begin_index: expected an integer >= 0, got {begin_index!r}")
        self._begin_index = int(begin_index)

    def _reset_run(self) -> None:
        self._k: int | None = None  # the next call's index; None until a run begins
        self._calls = None  # the driver of the run in progress (None before the first call and after the last)
        self._state = None  # the state that waits for the next model output
        self._ctx = None
        self._sampler = self.sampler  # this run's sampler (eta given to step may change it)
        self._given: list[Tensor] = []  # timesteps handed to step() on an accelerator, read after the last call

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None, sigmas: list[float] | None = None) -> None:
        """Build the grid and list one timestep per model call.

        ``num_inference_steps``: diffusers' count (the native timesteps of this config; with ``grid`` the
        number of grid steps). ``timesteps``: custom decreasing network timesteps in [0, N - 1].
        ``sigmas``: custom decreasing noise levels ``sigma/alpha`` (a last 0 means the final denoising).
        """
        if sum(v is not None for v in (num_inference_steps, timesteps, sigmas)) > 1:
            raise ValueError("set_timesteps: give one of num_inference_steps, timesteps or sigmas")
        key = (num_inference_steps, None if timesteps is None else tuple(np.asarray(timesteps, dtype=np.float64).tolist()),
               None if sigmas is None else tuple(np.asarray(sigmas, dtype=np.float64).tolist()))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(num_inference_steps, timesteps, sigmas)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        self._plan, self.schedule = plan, plan.schedule
        self.num_inference_steps = num_inference_steps if num_inference_steps is not None else \
            len(key[1] if timesteps is not None else key[2] if sigmas is not None else plan.listed)
        self.timesteps = plan.timesteps.to(device) if device is not None else plan.timesteps.clone()
        self.sigmas = plan.sigmas.clone()
        self.init_noise_sigma = plan.init_noise_sigma
        self._begin_index = None
        self._reset_run()

    @property
    def _rounding(self):
        return self.config.time_rounding if self._plan is None else self._plan.rounding

    def _make_plan(self, n, timesteps, sigmas) -> _Plan:
        cfg, N = self.config, self.sde.N
        final = cfg.final_denoise
        sampler, rounding, init, network_times, final_scale = self.sampler, cfg.time_rounding, 1.0, None, 1.0
        if timesteps is not None:
            ts = _decreasing("timesteps", timesteps, 0.0, N - 1, f"network timesteps (num_train_timesteps={N})")
            times = (ts + 1) / N
        elif sigmas is not None:
            s = _decreasing("sigmas", sigmas, 0.0, math.inf, "noise levels sigma/alpha")
            if float(s[-1]) == 0.0:
                s, final = s[:-1], True
                if s.numel() == 0:
                    raise ValueError("sigmas: expected at least one positive noise level before the final 0")
            times = self.sde.t_of_lam(-torch.log(s))
            rounding = rounding or "round"  # diffusers calls the network at the rounded timestep of each sigma
        elif cfg.times is not None:
            times = torch.tensor(cfg.times, dtype=torch.float64)
            if n is not None and n != times.numel() - 1:
                raise ValueError(f"num_inference_steps: this scheduler's grid has {times.numel() - 1} steps "
                                 f"(config times), got {n!r}")
        else:
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ValueError(f"num_inference_steps: expected a positive integer, got {n!r}")
            n = int(n)
            if cfg.native is not None and cfg.native.get("_class_name") not in _EQUIVALENT_CLASSES:
                g = diffusers_grid(cfg.native, n)  # another scheduler's timesteps, for the method given
                times, final = g.times, g.final_denoise
            elif cfg.native is not None:
                eq = _equivalent(cfg.native, n)
                init = _native_init_noise_sigma(cfg.native, n, eq["grid"][0], self.sde)
                times, final = eq.pop("grid"), eq.pop("final_denoise")
                if cfg.native.get("_class_name") in _SIGMA_FRAME and not final:  # they end in their frame x / alpha
                    final_scale = 1.0 / float(self.sde.alpha(times[-1]))
                network_times = eq.pop("network_times", None)
                if cfg.options is None and eq.pop("method") == cfg.method:
                    sampler = self._make_sampler(cfg.method, eq)
            elif cfg.grid is not None:
                times = _grids.make_grid(cfg.grid, self.sde, n, t_min=cfg.t_min)
            else:
                if n > N:
                    raise ValueError(f"num_inference_steps: at most num_train_timesteps = {N} (diffusers' timesteps "
                                     f"are distinct training steps), got {n}")
                ts = torch.from_numpy(native_timesteps(N, n, cfg.timestep_spacing, cfg.steps_offset,
                                                       cfg.timestep_rule))
                if bool((ts > N - 1).any()) or bool((ts < 0).any()):
                    raise ValueError(f"steps_offset: {cfg.steps_offset} puts timesteps outside 0..{N - 1} with "
                                     f"{n} steps ({cfg.timestep_spacing!r} spacing)")
                times = (ts + 1) / N
                if not final and float(times[-1]) > 1.5 / N:  # diffusers' last step to alphas_cumprod[0]
                    times = torch.cat([times, times.new_tensor([1.0 / N])])
        if not final and times.numel() < 2:
            raise ValueError("num_inference_steps: a one-point grid without final_denoise makes no step")
        if rounding is not None:
            snapped = _snap(self.sde.discrete_time(times), rounding)
            same = snapped[1:] == snapped[:-1]
            if bool(same.any()):
                i = int(same.nonzero()[0])
                raise ValueError(f"time_rounding: {rounding!r} maps grid times {float(times[i]):.6g} and "
                                 f"{float(times[i + 1]):.6g} to the same timestep {float(snapped[i]):g}: "
                                 f"{times.numel()} grid times on {N} training timesteps would repeat network "
                                 f"calls; use fewer steps or time_rounding=None")
        schedule = Schedule.from_times(self.sde, times) if times.numel() > 1 else None
        call_times = sampler.call_times(schedule) if schedule is not None else times[:0]
        sampler_calls = call_times.numel()
        if final:
            call_times = torch.cat([call_times, times[-1:]])
        if network_times is None:
            listed = _snap(self.sde.discrete_time(call_times), rounding)
        else:  # the native scheduler's timestep at each grid point (noise levels between training knots)
            at = (call_times[:, None] == times[None, : network_times.numel()]).to(torch.int64)
            if bool((at.sum(1) != 1).any()):
                raise ValueError(f"method: {cfg.method!r} calls the model between grid points, where the native "
                                 "scheduler lists no timestep; use a one-call or Heun method with from_scheduler")
            listed = network_times[at.argmax(1)]
        listed_host = listed.tolist()
        integral = bool((listed == listed.round()).all())
        alpha, sigma = self.sde.alpha_sigma(call_times)
        sig = sigma / alpha
        if final:  # diffusers' last sigma: the 0 its step to the data lands on
            sig = torch.cat([sig, sig.new_zeros(1)])
        return _Plan(times=times, schedule=schedule, sampler=sampler, listed=listed_host,
                     timesteps=listed.round().to(torch.int64) if integral else listed, sigmas=sig.to(torch.float32),
                     sampler_calls=sampler_calls, final_denoise=final, rounding=rounding, init_noise_sigma=init,
                     final_scale=final_scale)

    def _step_starts(self, plan: _Plan) -> dict:
        """Call index -> the grid step that begins with that call (``call_times`` from each step on)."""
        if plan.starts is None:
            total = plan.sampler_calls
            plan.starts = {total - plan.sampler.call_times(plan.schedule, i).numel(): i
                           for i in range(plan.schedule.steps)} if plan.schedule is not None else {}
            plan.starts.setdefault(total, None)  # only the final denoising call left (or nothing)
        return plan.starts

    # ----- the protocol -----------------------------------------------------------------------
    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the state is in the VP frame the network was trained in."""
        return sample

    def _find_begin(self, timestep) -> int:
        """The call a run begins with: ``set_begin_index``'s, or the first listed call at ``timestep``
        (read once per run; on 'meta', where nothing can be read, the first call)."""
        if self._begin_index is not None:
            return self._begin_index
        if isinstance(timestep, Tensor) and timestep.device.type == "meta":
            return 0
        value = self._timestep_value(timestep)
        matches = [j for j, listed in enumerate(self._plan.listed) if abs(value - listed) <= _TIMESTEP_TOL]
        if matches:
            # a timestep listed twice (a two-call step ends where the next begins): the call that begins a step
            starts = self._step_starts(self._plan) if matches[-1] > 0 else {0: 0}
            return next((j for j in matches if j in starts), matches[-1])
        raise ValueError(f"timestep: {value!r} is not one of this scheduler's timesteps "
                         f"({', '.join(f'{v:g}' for v in self._plan.listed[:8])}"
                         f"{', ...' if len(self._plan.listed) > 8 else ''}); drive it with its own scheduler.timesteps")

    @staticmethod
    def _timestep_value(timestep) -> float:
        if isinstance(timestep, Tensor) and timestep.numel() != 1:
            raise TypeError(f"timestep: expected a number or a 0-d tensor, got a tensor of shape {tuple(timestep.shape)}")
        try:
            return float(timestep)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"timestep: expected a number or a 0-d tensor, got {type(timestep).__name__}") from None

    def _check_timestep(self, k: int, timestep) -> None:
        """``timestep`` must be the one listed for call ``k``. One on an accelerator is not read per call (a
        host sync): the run's timesteps are read together after its last call (not at all on 'meta')."""
        listed = self._plan.listed
        n_calls = len(listed)
        if k >= n_calls:
            raise ValueError(f"timestep: all {n_calls} model calls of this run are done; call set_timesteps again")
        if isinstance(timestep, Tensor) and timestep.device.type != "cpu" and timestep.numel() == 1:
            self._given.append(timestep.detach().reshape(()))
            if k < n_calls - 1 or timestep.device.type == "meta":
                return
            given, self._given = torch.stack(self._given).tolist(), []
        else:
            given = [self._timestep_value(timestep)]
        for j, value in enumerate(given, start=k + 1 - len(given)):
            if not abs(value - listed[j]) <= _TIMESTEP_TOL:
                raise ValueError(f"timestep: {value!r} is not the one this scheduler listed for call {j} of {n_calls} "
                                 f"({listed[j]!r}); drive it with its own scheduler.timesteps, in order")

    def _run_sampler(self, eta) -> SteppedSampler:
        """This run's sampler: the planned one, or a DDIM-family one with the ``eta`` a pipeline passes."""
        sampler = self._plan.sampler
        if eta is None:
            return sampler
        eta = float(eta)
        if "eta" in type(sampler).option_names():
            if eta == sampler.eta:
                return sampler
            opts = {k: getattr(sampler, k) for k in type(sampler).option_names() if hasattr(sampler, k)}
            return type(sampler)(**{**opts, "eta": eta})
        if eta != 0.0:
            raise ValueError(f"eta: {type(sampler).name!r} takes no eta (DDIM's noise level), got eta={eta!r}; "
                             "use method='ddim' or leave eta at 0")
        return sampler

    def _begin(self, timestep, sample: Tensor, eta, generator) -> None:
        plan = self._plan
        b = self._find_begin(timestep)
        starts = self._step_starts(plan) if b > 0 else {0: 0 if plan.schedule is not None else None}
        if b not in starts:
            ok = sorted(starts)
            raise ValueError(f"begin_index: call {b} falls inside a {self._plan.sampler.calls_per_step}-call step; "
                             f"a run may begin where a step begins: calls {', '.join(map(str, ok[:12]))}"
                             f"{', ...' if len(ok) > 12 else ''}")
        self._sampler = self._run_sampler(eta)
        self._ctx = SamplingContext(self._sampler, plan.times, GeneratorNoise(generator), None, False, False)
        self._k = b
        i = starts[b]
        if i is not None:
            # begin() may draw noise before the first call (Heun's churn); the pipeline has made that call
            # at the step's start, which is where the state is for every sampler without churn there
            state = self._sampler.begin(plan.schedule, sample, self._ctx, start=i)
            if state.x_eval is not sample and not (isinstance(sample, Tensor) and sample.device.type == "meta") \
                    and float(state.t_eval) != float(plan.schedule.t[i]):
                raise ValueError(f"options: {type(self._sampler).name!r} raises the noise level before the first model "
                                 f"call of a run (t = {float(plan.schedule.t[i]):.6g} -> {float(state.t_eval):.6g}: "
                                 "S_churn), which the pipeline has already made at its latents; begin at t = T "
                                 "(where there is no room to churn) or set S_churn=0 / S_tmax below that noise level")
            self._start(state)

    def _start(self, state) -> None:
        """Step from ``state`` on: a new driver, advanced to the state that waits for the first output."""
        self._calls = drive(self._sampler, self.model, self._plan.schedule, state, self._ctx)
        self._state = next(self._calls)

    def step(self, model_output: Tensor, timestep, sample: Tensor, eta: float | None = None,
             generator: torch.Generator | None = None, return_dict: bool = True, **kwargs) -> SchedulerOutput | tuple:
        """Hand the network output at the listed ``timestep`` to the sampler; return the next model input.

        ``eta``: DDIM's noise level (``method='ddim'``; 0 or None for the others). ``generator``: the noise
        of stochastic samplers. A learned-variance output (2C channels) is split as diffusers does: the first
        C channels are the prediction. Other keyword arguments of diffusers' pipelines are accepted when
        they ask for nothing (None or False)."""
        if self.num_inference_steps is None:
            raise ValueError("ScoresdeScheduler.step: the number of inference steps is unknown; call "
                             "set_timesteps(num_inference_steps) before step")
        for name, value in (("model_output", model_output), ("sample", sample)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__module__}.{type(value).__name__}"
                                f"{' (convert it with torch.from_numpy)' if isinstance(value, np.ndarray) else ''}")
        asked = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if asked:
            raise ValueError(f"step: {', '.join(f'{k}={kwargs[k]!r}' for k in asked)} is not supported by "
                             "ScoresdeScheduler (accepted: eta, generator, return_dict)")
        if (model_output.ndim == sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]
                and model_output.shape[2:] == sample.shape[2:] and model_output.shape[0] == sample.shape[0]):
            model_output = model_output[:, : sample.shape[1]]  # learned variance: diffusers splits it off
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected a tensor of the sample's shape {tuple(sample.shape)}, got "
                             f"{tuple(model_output.shape)}")
        model_output = model_output.to(sample.dtype)
        plan = self._plan
        if self._k is None:
            self._begin(timestep, sample, eta, generator)
        k = self._k
        self._check_timestep(k, timestep)
        self._ctx.noise = GeneratorNoise(generator)
        if k >= plan.sampler_calls:  # the final denoising call, on the latents as the pipeline left them
            t_last = plan.times[-1]
            prev = self.model.to_x0(model_output, sample, t_last)
            sampler = self._sampler
            if getattr(sampler, "clip_sample", False):
                prev = prev.clamp(-sampler.clip_range, sampler.clip_range)  # as DDIM's step to alpha = 1 clips
            if getattr(sampler, "thresholding", False):
                prev = dynamic_threshold(prev, sampler.percentile, sampler.max_value)
            self._calls, self._state = None, None
        else:
            state = self._state
            if state.stage == 0 and state.x_eval is state.x and sample is not state.x:
                # the pipeline changed the latents between steps (e.g. inpainting): continue from them
                self._start(dataclasses.replace(state, x=sample, x_eval=sample))
            try:
                self._state = self._calls.send(model_output)
                prev = self._state.x_eval
            except StopIteration as stop:
                self._calls, self._state = None, stop.value
                prev = self._state.x if plan.final_scale == 1.0 else self._state.x * plan.final_scale
        self._k = k + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at the network timesteps given (``t = (timestep + 1) / N``):
        one timestep, or one per sample."""
        for name, value in (("original_samples", original_samples), ("noise", noise)):
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise: expected the shape of original_samples {tuple(original_samples.shape)}, got "
                             f"{tuple(noise.shape)}")
        try:
            ts = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"timesteps: expected a number or a tensor of timesteps, got {type(timesteps).__name__}") \
                from None
        batch, N = original_samples.shape[0], self.sde.N
        if ts.numel() not in (1, batch):
            raise ValueError(f"timesteps: {ts.numel()} timesteps for a batch of {batch} samples; give one timestep "
                             f"or one per sample")
        bad = ~torch.isfinite(ts) | (ts < 0) | (ts > N - 1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"timesteps: {float(ts[i]):g} is not a training timestep; expected values in "
                             f"[0, {N - 1}] (num_train_timesteps={N})")
        alpha, sigma = self.sde.alpha_sigma((ts + 1) / N)
        x = original_samples
        alpha = append_dims(alpha.to(device=x.device, dtype=x.dtype), x.ndim)
        sigma = append_dims(sigma.to(device=x.device, dtype=x.dtype), x.ndim)
        return alpha * x + sigma * noise

    def describe(self) -> dict[str, Any]:
        """The sampler's metadata (order, calls per step) and the run's size."""
        sampler = self.sampler if self._plan is None else self._plan.sampler
        return {**sampler.describe(), "steps": None if self._plan is None else self._plan.times.numel() - 1,
                "model_calls": None if self._plan is None else len(self._plan.listed)}
