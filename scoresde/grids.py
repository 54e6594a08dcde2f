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
           "karras", "validate_grid", "times_of_lam", "lam_from_logits", "logits_of_grid", "grid_from_logits"]


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


def times_of_lam(sde: SDE, lam: Tensor, t_min: float, T: float) -> Tensor:
    """The times ``t(lam)`` of an increasing half log-SNR grid from ``lam(T)`` to ``lam(t_min)``, ends pinned.

    The inverse ``t_of_lam`` is exact only to rounding, so the first and last times are set to ``T`` and
    ``t_min`` themselves: a grid then starts and ends exactly where the sampler was asked to.
    """
    t = sde.t_of_lam(lam.to(torch.float64)).clone()
    t[0], t[-1] = T, t_min
    return t


@register_grid("uniform")
def uniform_t(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """Uniform in t (DDPM/DDIM's default "linspace" spacing)."""
    return torch.linspace(T, t_min, steps + 1, dtype=torch.float64)


@register_grid("logsnr")
def uniform_logsnr(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """Uniform in the half log-SNR lambda (DPM-Solver's "logSNR" spacing)."""
    lam = torch.linspace(float(sde.lam(_f64(T))), float(sde.lam(_f64(t_min))), steps + 1, dtype=torch.float64)
    return times_of_lam(sde, lam, t_min, T)


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
    return times_of_lam(sde, -torch.log(s), t_min, T)


# ----- a grid parametrised by its log-SNR gaps (optimised grids, fitted solvers) ------------------
def lam_from_logits(w: Tensor, lam_T: float, lam_min: float) -> Tensor:
    r"""``lam_i = lam_T + (lam_min - lam_T) sum_{j<i} softmax(w)_j``, i = 0 .. len(w).

    Every real ``w`` gives a strictly increasing log-SNR grid with both ends pinned; it is
    differentiable in ``w`` (the ends carry no gradient), and adding a constant to ``w`` changes nothing.
    """
    frac = torch.cat([w.new_zeros(1), torch.cumsum(torch.softmax(w, 0), 0)])
    lam = lam_T + (lam_min - lam_T) * frac
    return torch.cat([lam[:1].detach(), lam[1:-1], lam[-1:].detach()])


def logits_of_grid(sde: SDE, times: Tensor) -> Tensor:
    """Logits whose :func:`lam_from_logits` grid is ``times``: the log of its log-SNR gaps."""
    lam = sde.lam(times.to(torch.float64))
    return torch.log(torch.diff(lam).clamp_min(1e-12))


def grid_from_logits(sde: SDE, w: Tensor, t_min: float, T: float) -> Tensor:
    """The time grid whose log-SNR gaps are ``softmax(w)`` times the log-SNR range from ``T`` to ``t_min``."""
    w = torch.as_tensor(w, dtype=torch.float64)
    lam = lam_from_logits(w, float(sde.lam(_f64(T))), float(sde.lam(_f64(t_min))))
    return times_of_lam(sde, lam.detach(), t_min, T)


def validate_grid(times, sde: SDE) -> Tensor:
    """Check a user-given grid: 1-D, at least two points, finite, strictly decreasing, within (0, T]."""
    try:
        times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        shown = repr(times) if len(repr(times)) <= 80 else repr(times)[:77] + "..."
        raise TypeError(f"grid: expected a decreasing 1-D sequence or tensor of numbers (times), got {shown}") from err
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
    A callable ``fn(sde, steps, t_min, T)`` must return a 1-D, finite, strictly decreasing tensor of
    ``steps + 1`` times from ``T`` to ``t_min`` (both ends to 1e-12); anything else is refused here,
    before any sampling, with a ValueError (a TypeError for an output that is no tensor of numbers).
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
        return _check_callable_grid(grid(sde, int(steps), t_min, T), sde, int(steps), t_min, T)
    if isinstance(grid, str) and grid in GRIDS:
        # a named grid is ours, but checked like a user's callable: the run relies on its length and ends
        return _check_callable_grid(GRIDS[grid](sde, int(steps), t_min, T), sde, int(steps), t_min, T)
    raise ValueError(f"grid: unknown name {grid!r}; known grids: {', '.join(available())}, or pass a decreasing tensor of times")


def _check_callable_grid(out, sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
    """What a grid callable ``fn(sde, steps, t_min, T)`` returned, checked against what it was asked for."""
    allowed = f"a 1-D decreasing tensor of steps + 1 = {steps + 1} finite times from T={T} to t_min={t_min}"
    try:
        times = torch.as_tensor(out, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"grid: the callable returned {type(out).__name__} {out!r:.80}; expected {allowed}") from None
    shown = times.tolist()[:10] if times.ndim == 1 else f"a tensor of shape {tuple(times.shape)}"
    if times.ndim != 1:
        raise ValueError(f"grid: the callable returned {shown}; expected {allowed}")
    if times.numel() != steps + 1:
        raise ValueError(f"grid: the callable returned {times.numel()} times for steps={steps}; expected {allowed}")
    if not torch.isfinite(times).all():
        raise ValueError(f"grid: the callable returned non-finite times {shown}; expected {allowed}")
    if not (times[1:] < times[:-1]).all():
        raise ValueError(f"grid: the callable returned times that are not strictly decreasing, {shown}; "
                         f"expected {allowed}")
    for name, got, want in (("T", float(times[0]), T), ("t_min", float(times[-1]), t_min)):
        if abs(got - want) > 1e-12 * max(abs(want), 1.0):
            raise ValueError(f"grid: the callable's grid ends at {got!r} where {name}={want!r} was asked for; "
                             f"expected {allowed}")
    return validate_grid(times, sde)


# ----- polynomial-in-time grids of zju-pi/diff-sampler (Zhou et al. 2024) -------------------------
# diff-sampler's ``time_uniform`` schedule is polynomial in the time of a linear-beta VP SDE fitted to the
# run's two noise levels s = sigma/alpha = e^{-lam} (EDM's sigma), with that time running from 1 at the
# start to VP_TIME_END = 1e-3 at the end (its ``get_schedule`` and DEIS's ``edm2t``). On our default
# VPSDE (beta 0.1 .. 20, T = 1, t_min = 1e-3) that fitted time is our t itself; for any other SDE or
# other ends it is not, and the grids below follow diff-sampler, not our t.
VP_TIME_END = 1e-3


def _vp_fit(lam_T, lam_min) -> tuple[Tensor, Tensor]:
    """``(beta_d, beta_min)`` of the VP SDE with ``log(1 + s(tau)^2) = beta_d tau^2 / 2 + beta_min tau``,
    ``s(1) = e^{-lam_T}``, ``s(VP_TIME_END) = e^{-lam_min}`` (diff-sampler's ``edm2t``). The ends may be
    tensors that carry a gradient (a sampler differentiated in its grid moves the fit with its ends)."""
    L_max = torch.log1p(torch.exp(-2.0 * torch.as_tensor(lam_T, dtype=torch.float64)))
    L_min = torch.log1p(torch.exp(-2.0 * torch.as_tensor(lam_min, dtype=torch.float64)))
    eps = VP_TIME_END
    beta_d = 2 * (L_max - L_min / eps) / (1 - eps)
    return beta_d, L_max - beta_d / 2


def vp_time_of_lam(lam: Tensor, lam_T, lam_min) -> Tensor:
    """The fitted VP time ``tau(lam)`` in ``[VP_TIME_END, 1]`` (1 at ``lam_T``), DEIS's interpolation time.

    ``tau`` solves ``beta_d tau^2 / 2 + beta_min tau = L``, ``L = log(1 + e^{-2 lam})``; written as
    ``2 L / (beta_min + sqrt(beta_min^2 + 2 beta_d L))`` it needs no division by ``beta_d`` (which may be 0).
    """
    beta_d, beta_min = _vp_fit(lam_T, lam_min)
    L = torch.log1p(torch.exp(-2.0 * lam.to(torch.float64)))
    return 2 * L / (beta_min + torch.sqrt(beta_min**2 + 2 * beta_d * L))


def lam_of_vp_time(tau: Tensor, lam_T, lam_min) -> Tensor:
    """Inverse of :func:`vp_time_of_lam`: ``lam = -log(expm1(beta_d tau^2 / 2 + beta_min tau)) / 2``."""
    beta_d, beta_min = _vp_fit(lam_T, lam_min)
    tau = tau.to(torch.float64)
    return -0.5 * torch.log(torch.expm1(0.5 * beta_d * tau**2 + beta_min * tau))


def time_polynomial(sde: SDE, steps: int, t_min: float, T: float, rho: float = 2.0) -> Tensor:
    r"""diff-sampler's ``time_uniform`` schedule: uniform in ``tau^{1/rho}`` for the fitted VP time ``tau``.

    ``tau_i = (1 + i/N (VP_TIME_END^{1/rho} - 1))^rho``, ``i = 0..N``, mapped to log-SNR by
    :func:`lam_of_vp_time` and to our time by ``sde.t_of_lam`` (ends pinned). rho = 1 is uniform in the
    fitted time, rho = 2 (diff-sampler's recommendation for its DEIS/iPNDM) uniform in its square root. Named
    grids: ``time_rho1``, ``time_rho2``, ``time_rho7`` (the values diff-sampler's papers use) and ``time_rho3``
    (denser near the data: the best of this family for several solvers at NFE 5-10 on the mixtures of
    ``benchmarks/samplers.py``'s training-free part).
    """
    lam_T, lam_min = float(sde.lam(_f64(T))), float(sde.lam(_f64(t_min)))
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    tau = (1 + ramp * (VP_TIME_END ** (1 / rho) - 1)) ** rho
    return times_of_lam(sde, lam_of_vp_time(tau, lam_T, lam_min), t_min, T)


def _time_polynomial_rho(rho: float) -> GridFn:
    def grid(sde: SDE, steps: int, t_min: float, T: float) -> Tensor:
        return time_polynomial(sde, steps, t_min, T, rho=rho)
    grid.__name__ = f"time_rho{rho:g}"
    grid.__doc__ = f"diff-sampler's ``time_uniform`` schedule with rho = {rho:g} (see :func:`time_polynomial`)."
    return grid


for _rho in (1.0, 2.0, 3.0, 7.0):
    register_grid(f"time_rho{_rho:g}")(_time_polynomial_rho(_rho))
del _rho

__all__ += ["VP_TIME_END", "vp_time_of_lam", "lam_of_vp_time", "time_polynomial"]
