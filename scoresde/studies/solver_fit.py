r"""Fit a few-step solver to a model: the grid and the coefficients of a linear multistep rule, by
gradient descent on the endpoint error against the probability-flow ODE.

The solver is :class:`scoresde.samplers.linear_multistep.LinearMultistep`,
``x_{i+1} = alpha_{i+1}/alpha_i x_i + alpha_{i+1} sum_{j<=i} C_ij eps_theta(x_j, t_j)``. Its
parameters, in the spirit of calibrated solvers (Shaul et al. 2023, "Bespoke Solvers"; Tong et al.
2024, "LD3"; Frankel et al. 2025, "S4S"):

* the grid, through the log-SNR gaps: ``lam_i = lam_T + (lam_min - lam_T) sum_{j<i} softmax(w)_j``
  (both ends pinned, always strictly increasing: :func:`.grid_opt.lam_from_logits`, the optimised grid's
  parametrisation);
* the coefficients, relative to a starting solver's on the current grid,
  ``C = C_start(lam) + R * d_i`` with ``d_i = e^{-lam_{i+1}} - e^{-lam_i}`` the DDIM weight of row ``i``,
  so ``R = 0`` is the starting solver and ``R`` is scale-free. The start is DPM-Solver-2M by default, or any
  registered sampler with a ``coefficient_matrix(schedule)`` (``init_solver``: DEIS and iPNDM of every order,
  whose weights follow the grid as it moves).

**The fit never loses to its start.** The calibration loss of the start is the first iterate, and the best
iterate is returned; with held-out pairs (``x_valid``) the start is returned whenever the fit does not lower
the held-out error too (``config['kept_start']`` says which).

The loss is the mean Euclidean endpoint error over a calibration batch, ``mean_b ||x_b - x_b^ref||``
(the statistic the benchmarks report) of the registered ``linear_multistep`` sampler run through
``scoresde.sample(..., grad=True)`` with the grid tensor and ``coefficients`` carrying the graph, so
the fitted solver is the sampler it is later run as. The model must be differentiable in x and t
(the exact mixture oracle and the networks of :mod:`scoresde.nets` are). Gradients with respect to
the times go through ``t(lam)`` by the implicit-function rule ``dt/dlam = 1 / lam'(t)``. Adam with a cosine-decayed step; the iterate with the lowest calibration
loss is returned. Judge a fitted solver on *other* starting points (``x_valid``): it is fitted to one
model, one step count and one pair of ends, and nothing else.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import grids as _grids
from ..grids import lam_from_logits, logits_of_grid
from ..models import ScoreModel
from ..samplers import get_sampler, sample
from ..samplers.linear_multistep import ddim_increments, dpm_solver_2m_coefficients
from ..schedule import Schedule

__all__ = ["FittedSolver", "fit_linear_multistep", "grid_of_lam"]


@dataclass
class FittedSolver:
    """A fitted grid and coefficient matrix, with how they were obtained.

    ``times``: the grid (float64, T .. t_min); ``coefficients``: C (``(steps, steps)`` float64);
    ``calib_error_initial`` / ``calib_error``: the calibration loss of DPM-Solver-2M on the initial grid
    and of the fit; ``valid_error_initial`` / ``valid_error``: the same on held-out starting points
    (NaN without them); ``history``: the calibration loss per iteration; ``fit_nfe``: the model
    calls the fit spent (batched calls, as the sampler counts them).
    """

    times: Tensor
    coefficients: Tensor
    calib_error_initial: float
    calib_error: float
    valid_error_initial: float = math.nan
    valid_error: float = math.nan
    history: list[float] = field(default_factory=list)
    fit_nfe: int = 0
    config: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.coefficients.shape[0]

    def sample(self, model: ScoreModel, **kwargs):
        """:func:`scoresde.sample` with this grid and these coefficients (``x_T=``, ``shape=`` ... as usual)."""
        return sample(model, model.sde, "linear_multistep", grid=self.times, coefficients=self.coefficients, **kwargs)

    def save(self, path) -> None:
        """Write the solver atomically (a temporary file, then a rename)."""
        from ..training.checkpoints import atomic_save

        atomic_save({"times": self.times, "coefficients": self.coefficients,
                     "calib_error_initial": self.calib_error_initial, "calib_error": self.calib_error,
                     "valid_error_initial": self.valid_error_initial, "valid_error": self.valid_error,
                     "history": list(self.history), "fit_nfe": self.fit_nfe, "config": dict(self.config)}, Path(path))

    @classmethod
    def load(cls, path) -> FittedSolver:
        return cls(**torch.load(Path(path), weights_only=True))


def _t_of_lam(sde, lam: Tensor) -> Tensor:
    """``t(lam)`` with the implicit-function gradient ``dt/dlam = 1 / lam'(t)``."""
    t0 = sde.t_of_lam(lam.detach())
    if not lam.requires_grad:
        return t0
    with torch.enable_grad():
        t_var = t0.clone().requires_grad_(True)
        dlam_dt = torch.autograd.grad(sde.lam(t_var).sum(), t_var)[0]
    return t0 + (lam - lam.detach()) / dlam_dt


def grid_of_lam(sde, lam: Tensor, *, T: float, t_min: float) -> Tensor:
    """The grid with half log-SNRs ``lam`` (``steps + 1`` entries, ``lam(T)`` .. ``lam(t_min)``), its two
    ends pinned to ``T`` and ``t_min`` exactly; differentiable in the interior entries of ``lam``."""
    return torch.cat([torch.tensor([T], dtype=torch.float64), _t_of_lam(sde, lam[1:-1]),
                      torch.tensor([t_min], dtype=torch.float64)])


def _mean_error(x: Tensor, ref: Tensor) -> Tensor:
    return (x - ref).flatten(1).norm(dim=1).mean()


def fit_linear_multistep(model: ScoreModel, steps: int, x_calib: Tensor, ref_calib: Tensor, *,
                         init_grid="logsnr", t_min: float | None = None, T: float | None = None,
                         iterations: int = 300, lr_grid: float = 0.02, lr_coefficients: float = 0.01,
                         fit_grid: bool = True, x_valid: Tensor | None = None, ref_valid: Tensor | None = None,
                         progress: bool = False, init_solver=None) -> FittedSolver:
    """Fit the grid and the coefficients of a ``steps``-step :class:`LinearMultistep` solver.

    Args:
        model: a differentiable :class:`ScoreModel`.
        steps: the number of steps (= model calls) of the fitted solver.
        x_calib, ref_calib: starting points at ``T`` and the PF-ODE solution from them at ``t_min``
            (e.g. :func:`scoresde.studies.references.reference_pf_ode`), float64 for a clean fit.
        init_grid: a grid name or tensor to start from (default: uniform in log-SNR).
        iterations, lr_grid, lr_coefficients: Adam's iterations and initial step sizes (cosine decay).
        fit_grid: also move the interior times (False keeps ``init_grid``).
        x_valid, ref_valid: optional held-out pairs, reported before and after the fit.
        progress: show a tqdm bar.
        init_solver: the solver to start from: None (DPM-Solver-2M), a registered name or a ``(name, options)``
            pair of a sampler with ``coefficient_matrix(schedule)`` and the noise prediction, e.g.
            ``("deis", {"order": 4})``. Its coefficients are recomputed on the grid as the grid moves.
    """
    start_coefficients = _start_solver(init_solver)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, got {iterations!r}")
    for name, lr in (("lr_grid", lr_grid), ("lr_coefficients", lr_coefficients)):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{name}: expected a positive number, got {lr!r}")
    if x_calib.shape != ref_calib.shape:
        raise ValueError(f"ref_calib: shape {tuple(ref_calib.shape)} differs from x_calib's {tuple(x_calib.shape)}")
    if (x_valid is None) != (ref_valid is None):
        raise ValueError("x_valid, ref_valid: give both or neither")
    if x_valid is not None and x_valid.shape != ref_valid.shape:
        raise ValueError(f"ref_valid: shape {tuple(ref_valid.shape)} differs from x_valid's {tuple(x_valid.shape)}")
    sde = model.sde
    times0 = _grids.make_grid(init_grid, sde, steps, t_min=t_min, T=T)
    if len(times0) != steps + 1:
        raise ValueError(f"init_grid: has {len(times0) - 1} steps, expected steps = {steps}")
    T_, t_min_ = float(times0[0]), float(times0[-1])
    lam0 = sde.lam(times0)
    lam_T, lam_min = float(lam0[0]), float(lam0[-1])

    w = logits_of_grid(sde, times0).requires_grad_(fit_grid)
    R = torch.zeros(steps, steps, dtype=torch.float64, requires_grad=True)
    mask = torch.tril(torch.ones(steps, steps, dtype=torch.float64))

    def solver(w_, R_):
        lam = lam_from_logits(w_, lam_T, lam_min)
        C = start_coefficients(sde, lam, T_, t_min_) + (R_ * mask) * ddim_increments(lam)[:, None]
        return lam, C

    def error(x_T, ref, lam, C):
        times = grid_of_lam(sde, lam, T=T_, t_min=t_min_)
        x = sample(model, sde, "linear_multistep", x_T=x_T, grid=times, coefficients=C,
                   grad=torch.is_grad_enabled()).samples
        return _mean_error(x, ref)

    params = [{"params": [R], "lr": lr_coefficients}] + ([{"params": [w], "lr": lr_grid}] if fit_grid else [])
    opt = torch.optim.Adam(params)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(iterations, 1))
    nfe0 = model.nfe
    history: list[float] = []
    best = (math.inf, None, None)
    with torch.enable_grad():
        for _ in tqdm(range(iterations + 1), desc="fit solver", disable=not progress, leave=False):
            lam, C = solver(w, R)
            loss = error(x_calib, ref_calib, lam, C)
            value = float(loss.detach())
            history.append(value)
            if math.isfinite(value) and value < best[0]:
                best = (value, lam.detach().clone(), C.detach().clone())
            if len(history) > iterations:  # the last pass only evaluates the final iterate
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    if best[1] is None:
        raise FloatingPointError("fit_linear_multistep: the calibration loss was never finite")
    _, lam_best, C_best = best
    times = grid_of_lam(sde, lam_best, T=T_, t_min=t_min_)
    fit_nfe = model.nfe - nfe0

    with torch.no_grad():
        C0 = start_coefficients(sde, lam0, T_, t_min_)
        valid0 = valid = math.nan
        if x_valid is not None:
            valid0 = float(error(x_valid, ref_valid, lam0, C0))
            valid = float(error(x_valid, ref_valid, lam_best, C_best))
    model.nfe = nfe0 + fit_nfe  # the validation passes are measurements, not part of the fit's cost
    # the start wins ties and whatever the held-out batch does not confirm (NaN included)
    kept_start = x_valid is not None and not valid < valid0
    if kept_start:
        times, C_best, valid = times0, C0, valid0
    calib = history[0] if kept_start else best[0]
    return FittedSolver(times=times, coefficients=C_best, calib_error_initial=history[0], calib_error=calib,
                        valid_error_initial=valid0, valid_error=valid, history=history, fit_nfe=fit_nfe,
                        config={"steps": steps, "init_grid": init_grid if isinstance(init_grid, str) else "tensor",
                                "iterations": iterations, "lr_grid": lr_grid, "lr_coefficients": lr_coefficients,
                                "fit_grid": fit_grid, "n_calib": int(x_calib.shape[0]),
                                "init_solver": _describe_start(init_solver), "kept_start": kept_start})


def _start_solver(init_solver):
    """``C_start(sde, lam, T, t_min)``: the starting solver's coefficient matrix on the grid with log-SNRs ``lam``."""
    if init_solver is None:
        return lambda sde, lam, T, t_min: dpm_solver_2m_coefficients(lam)
    name, options = (init_solver, {}) if not isinstance(init_solver, tuple) else init_solver
    if not isinstance(options, dict):
        raise ValueError(f"init_solver: expected a sampler name or a (name, options dict) pair, got {init_solver!r}")
    solver = get_sampler(name)(**options)
    if not hasattr(solver, "coefficient_matrix") or getattr(solver, "afs", False):
        raise ValueError(f"init_solver: {init_solver!r} has no linear multistep coefficients to start from; use "
                         "linear_multistep, deis or ipndm (noise prediction, without afs)")
    if getattr(solver, "prediction", "noise") != "noise":
        raise ValueError(f"init_solver: {init_solver!r} uses the data prediction; the fitted form holds the noise "
                         "prediction (prediction='noise')")

    def coefficients(sde, lam, T, t_min):
        return solver.coefficient_matrix(Schedule.from_times(sde, grid_of_lam(sde, lam, T=T, t_min=t_min)))
    return coefficients


def _describe_start(init_solver) -> str:
    if init_solver is None:
        return "linear_multistep"
    if isinstance(init_solver, tuple):
        name, options = init_solver
        return f"{getattr(name, 'name', name)}({', '.join(f'{k}={v!r}' for k, v in options.items())})"
    return str(getattr(init_solver, "name", init_solver))
