r"""``ScoresdeScheduler``: any stepped scoresde sampler inside a diffusers pipeline.

diffusers' protocol is one model call per ``scheduler.step(model_output, timestep, sample)``, at the
timesteps the scheduler lists. A :class:`~scoresde.samplers.base.SteppedSampler` is the same thing
with explicit state: ``step(model, schedule, state, output, ctx)`` consumes the raw network output at
``(state.x_eval, state.t_eval)`` and returns the next state. The scheduler therefore

* builds the scoresde grid and :class:`~scoresde.schedule.Schedule` in ``set_timesteps(n)`` and lists
  one timestep per model call: the network time ``N t_eval - 1`` of every call the sampler will make
  (its ``call_times``, known from the grid alone), then the final denoising call at ``t_min`` when
  ``final_denoise``;
* steps the sampler with the one stepping driver, :func:`~scoresde.samplers.base.drive`, which yields
  the state that waits for the next model output, and returns as ``prev_sample`` that state's model
  input ``x_eval`` (a Heun or singlestep stage point, or the next grid state), and the final state
  after the last call. A multi-call step (Heun: 2 calls, singlestep DPM-Solver-3: 3) is thus 2 or 3
  diffusers steps; a multistep history lives in the state.

Since the network sees exactly the times the sampler asks for, a pipeline run equals
``scoresde.sample`` with the model of :func:`~scoresde.interop.from_diffusers` on the same x_T.
The model input needs no scaling (the state is in the VP frame: ``scale_model_input`` is the
identity) and the run starts from ``init_noise_sigma = sigma(T)`` times a standard normal.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from .. import grids as _grids
from .._tensor import append_dims
from ..models import ScoreModel
from ..samplers.base import GeneratorNoise, SamplingContext, SteppedSampler, drive, get_sampler
from ..schedule import Schedule
from .diffusers import TIME_ROUNDINGS, _parameterization, _snap, diffusers_sde

__all__ = ["ScoresdeScheduler"]

# a pipeline hands back the timestep it was given; allow for its passing through float32
_TIMESTEP_TOL = 1e-3


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


class ScoresdeScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs the registered scoresde sampler ``method`` with ``options``.

    Config (JSON values; ``save_config`` / ``from_config`` round trip): the training schedule
    (``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``, ``trained_betas``,
    ``prediction_type``, read as :func:`~scoresde.interop.from_diffusers` reads them); ``method`` and
    ``options`` (the sampler's constructor arguments); the grid: ``grid`` (a scoresde grid name,
    default ``'logsnr'``) with ``t_min`` (default the SDE's, ``1/N``), or explicit ``times`` (a
    decreasing list from 1 to ``t_min``; then ``set_timesteps`` takes ``len(times) - 1`` steps);
    ``final_denoise`` (default True: end with the data prediction at ``t_min``, one more call);
    ``time_rounding`` (None, 'round', 'floor': snap the listed network times to integers, as
    ``from_diffusers(time_rounding=...)`` does for scoresde's own runs).

    ``pipe.scheduler = ScoresdeScheduler.from_config(pipe.scheduler.config, method='dpm_solver++')``
    swaps it into a pipeline, keeping the pipeline's training schedule. :meth:`from_fitted` runs a
    :class:`~scoresde.studies.solver_fit.FittedSolver`.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: list[float] | None = None,
                 prediction_type: str = "epsilon", method: str = "ddim", options: dict | None = None,
                 grid: str = "logsnr", t_min: float | None = None, times: list[float] | None = None,
                 final_denoise: bool = True, time_rounding: str | None = None):
        if time_rounding not in TIME_ROUNDINGS:
            raise ValueError(f"time_rounding: unknown {time_rounding!r}; allowed: None, 'round', 'floor'")
        if not isinstance(final_denoise, bool):
            raise TypeError(f"final_denoise: expected True or False, got {final_denoise!r}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options: expected a dict of the sampler's options, got {type(options).__name__}")
        cfg = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                   beta_schedule=beta_schedule, trained_betas=trained_betas, prediction_type=prediction_type)
        self.sde = diffusers_sde(cfg)
        self.model = ScoreModel(_never_called, self.sde, _parameterization(cfg), time_input="discrete")
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
        self.sampler: SteppedSampler = cls(**opts)
        self.order = self.sampler.calls_per_step  # diffusers counts progress-bar warm-up steps with it
        self.init_noise_sigma = self.sde.prior_std()
        self.num_inference_steps: int | None = None
        self.timesteps: Tensor | None = None
        self.schedule: Schedule | None = None
        self._listed: list[float] = []
        self._given: list[Tensor] = []  # timesteps handed to step() on an accelerator, read after the last call
        self._k = 0
        self._calls = None  # the driver of the run in progress (None before the first call and after the last)
        self._state = None  # the state that waits for the next model output, or the final one
        self._ctx = None

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
        return _snap(self.sde.discrete_time(torch.as_tensor(t, dtype=torch.float64)), self.config.time_rounding)

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None) -> None:
        """Build the grid of ``num_inference_steps`` steps and list one timestep per model call."""
        times = self.config.times
        if times is not None:
            times = torch.tensor(times, dtype=torch.float64)
            if num_inference_steps is not None and num_inference_steps != times.numel() - 1:
                raise ValueError(f"num_inference_steps: this scheduler's grid has {times.numel() - 1} steps "
                                 f"(config times), got {num_inference_steps!r}")
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps: expected a positive integer, got {num_inference_steps!r}")
            times = _grids.make_grid(self.config.grid, self.sde, num_inference_steps, t_min=self.config.t_min)
        self.schedule = Schedule.from_times(self.sde, times)
        self.num_inference_steps = self.schedule.steps
        call_times = self.sampler.call_times(self.schedule)
        if self.config.final_denoise:
            call_times = torch.cat([call_times, self.schedule.t[-1:]])
        listed = self.network_time(call_times)
        self._listed = listed.tolist()  # on the host, to check what step() is handed
        self.timesteps = listed.to(device or "cpu")
        self._k, self._calls, self._state, self._given = 0, None, None, []
        self._ctx = SamplingContext(self.sampler, self.schedule.t, GeneratorNoise(None), None, False, False)

    def _check_timestep(self, k: int, timestep) -> None:
        """``timestep`` must be the one listed for call ``k``. One on an accelerator is not read per call (a
        host sync): the run's timesteps are read together after its last call (not at all on 'meta')."""
        n_calls = len(self._listed)
        if k >= n_calls:
            raise ValueError(f"timestep: all {n_calls} model calls of this run are done; call set_timesteps again")
        if isinstance(timestep, Tensor) and timestep.device.type != "cpu" and timestep.numel() == 1:
            self._given.append(timestep.detach().reshape(()))
            if k < n_calls - 1 or timestep.device.type == "meta":
                return
            given, self._given = torch.stack(self._given).tolist(), []
        else:
            try:
                given = [float(timestep)]
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"timestep: expected a number or a 0-d tensor, got {type(timestep).__name__}") from None
        for j, value in enumerate(given, start=k + 1 - len(given)):
            if not abs(value - self._listed[j]) <= _TIMESTEP_TOL:
                raise ValueError(f"timestep: {value!r} is not the one this scheduler listed for call {j} of {n_calls} "
                                 f"({self._listed[j]!r}); drive it with its own scheduler.timesteps, in order")

    def _start(self, state) -> None:
        """Step from ``state`` on: a new driver, advanced to the state that waits for the first output."""
        self._calls = drive(self.sampler, self.model, self.schedule, state, self._ctx)
        self._state = next(self._calls)

    # ----- the protocol -----------------------------------------------------------------------
    def scale_model_input(self, sample: Tensor, timestep=None) -> Tensor:
        """The identity: the state is in the VP frame the network was trained in."""
        return sample

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator: torch.Generator | None = None,
             return_dict: bool = True) -> SchedulerOutput | tuple:
        """Hand the network output at the listed ``timestep`` to the sampler; return the next model input."""
        if self.timesteps is None:
            raise RuntimeError("ScoresdeScheduler.step: call set_timesteps(num_inference_steps) first")
        k = self._k
        self._check_timestep(k, timestep)
        if not isinstance(model_output, Tensor) or model_output.shape != sample.shape:
            raise ValueError(f"model_output: expected a tensor of the sample's shape {tuple(sample.shape)}, got "
                             f"{getattr(model_output, 'shape', type(model_output).__name__)}")
        model_output = model_output.to(sample.dtype)
        self._ctx.noise = GeneratorNoise(generator)
        if k == 0:
            # begin() may draw noise before the first call (Heun's churn); the pipeline has made that call
            # at x_T, which is where the grid-start state is for every sampler without churn at T
            self._start(self.sampler.begin(self.schedule, sample, self._ctx))
        state = self._state
        if self._calls is None:  # the run is done: the final denoising call
            prev = self.model.to_x0(model_output, state.x, self.schedule.t[-1])
        else:
            if state.stage == 0 and state.x_eval is state.x and sample is not state.x:
                # the pipeline changed the latents between steps (e.g. inpainting): continue from them
                self._start(dataclasses.replace(state, x=sample, x_eval=sample))
            try:
                self._state = self._calls.send(model_output)
                prev = self._state.x_eval
            except StopIteration as stop:
                self._calls, self._state = None, stop.value
                prev = self._state.x
        self._k = k + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``alpha(t) x0 + sigma(t) noise`` at the network timesteps given (``t = (timestep + 1) / N``)."""
        ts = torch.as_tensor(timesteps, dtype=torch.float64).cpu().reshape(-1)
        alpha, sigma = self.sde.alpha_sigma((ts + 1) / self.sde.N)
        x = original_samples
        alpha = append_dims(alpha.to(device=x.device, dtype=x.dtype), x.ndim)
        sigma = append_dims(sigma.to(device=x.device, dtype=x.dtype), x.ndim)
        return alpha * x + sigma * noise

    def describe(self) -> dict[str, Any]:
        """The sampler's metadata (order, calls per step) and the run's size."""
        return {**self.sampler.describe(), "steps": self.num_inference_steps,
                "model_calls": None if self.timesteps is None else len(self.timesteps)}
