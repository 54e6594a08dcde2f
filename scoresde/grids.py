"""Time grids: decreasing 1-D float64 tensors from T down to t_min, shared by every sampler.

Each grid function has the signature ``fn(sde, steps, t_min, T) -> Tensor`` of length ``steps + 1``.
The grid is what separates a good sampler from a bad one at low NFE: on mixtures a grid uniform in
log-SNR is often an order of magnitude more accurate than one uniform in t (Lu et al. 2022, sec. 3.4).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sde import SDE

GridFn = Callable[[SDE, int, float, float], Tensor]
GRIDS: dict[str, GridFn] = {}

__all__ = ["GRIDS", "register_grid", "make_grid", "available", "uniform_t", "uniform_logsnr", "quadratic",
           "karras", "validate_grid"]


def register_grid(name: str):
    """Decorator adding a grid function to :data:`GRIDS` under ``name`` (duplicates raise)."""
    def wrap(fn: GridFn) -> GridFn:
        if name in GRIDS:
            raise ValueError(f"grid {name!r} is already registered")
        GRIDS[name] = fn
        return fn
    return wrap


def available() -> list[str]:
    return sorted(GRIDS)


def _f64(x: float) -> Tensor:
    return torch.tensor(float(x), dtype=torch.float64)


@register_grid("uniform")
def uniform_t(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """Uniform in t (DDPM/DDIM's default "linspace" spacing)."""
    return torch.linspace(T, t_min, steps + 1, dtype=torch.float64)


@register_grid("logsnr")
def uniform_logsnr(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """Uniform in the half log-SNR lambda (DPM-Solver's "logSNR" spacing)."""
    lam = torch.linspace(float(sde.lam(_f64(T))), float(sde.lam(_f64(t_min))), steps + 1, dtype=torch.float64)
    t = sde.t_of_lam(lam)
    t[0], t[-1] = T, t_min  # pin the ends exactly; the inverse is only accurate to rounding
    return t


@register_grid("quadratic")
def quadratic(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """Uniform in sqrt(t) (DDIM's "quadratic" spacing, dense near the data)."""
    return torch.linspace(T**0.5, t_min**0.5, steps + 1, dtype=torch.float64) ** 2


@register_grid("karras")
def karras(sde: SDE, steps: int, t_min: float, T: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022, eq. 5) spacing, rho = 7, in the noise level s = sigma/alpha = exp(-lambda)."""
    s_max = torch.exp(-sde.lam(_f64(T)))
    s_min = torch.exp(-sde.lam(_f64(t_min)))
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    t = sde.t_of_lam(-torch.log(s))
    t[0], t[-1] = T, t_min
    return t


def validate_grid(times, sde: SDE) -> Tensor:
    """Check a user-given grid: 1-D, at least two points, finite, strictly decreasing, within (0, T]."""
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if times.ndim != 1 or times.numel() < 2:
        raise ValueError(f"grid: expected a 1-D tensor of at least 2 times, got shape {tuple(times.shape)}")
    if not torch.isfinite(times).all():
        raise ValueError(f"grid: times must be finite, got {times.tolist()[:10]}")
    if not (times[1:] < times[:-1]).all():
        raise ValueError(f"grid: times must be strictly decreasing (from T towards 0), got {times.tolist()[:10]}")
    if float(times[-1]) <= 0 or float(times[0]) > sde.T * (1 + 1e-12):
        raise ValueError(f"grid: times must lie in (0, T={sde.T}], got [{float(times[-1])}, {float(times[0])}]")
    return times


def make_grid(grid, sde: SDE, steps: int | None, *, t_min: float | None = None, T: float | None = None) -> Tensor:
    """Build a grid by name (:data:`GRIDS`), from a callable, or validate a user-given tensor.

    A user-given tensor fixes both ends and the step count (``steps`` must then be None or match).
    """
    if isinstance(grid, (Tensor, list, tuple)):
        times = validate_grid(grid, sde)
        if steps is not None and steps != times.numel() - 1:
            raise ValueError(f"steps: a user-given grid of {times.numel()} times has {times.numel() - 1} steps, got steps={steps}")
        return times
    T = float(sde.T if T is None else T)
    t_min = float(sde.t_min if t_min is None else t_min)
    if not 0 < t_min < T or T > sde.T * (1 + 1e-12):
        raise ValueError(f"t_min: must lie in (0, T={T}) with T <= sde.T={sde.T}, got t_min={t_min}")
    if steps is None or isinstance(steps, bool) or int(steps) != steps or int(steps) < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if callable(grid):
        fn = grid
    elif grid in GRIDS:
        fn = GRIDS[grid]
    else:
        raise ValueError(f"grid: unknown name {grid!r}; known grids: {', '.join(available())}, or pass a decreasing tensor of times")
    return validate_grid(fn(sde, int(steps), t_min, T), sde)
