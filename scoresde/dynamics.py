r"""The reverse-time dynamics of an SDE of the family, and the bridges to the ODE/SDE integrators.

For ``dx = f(t) x dt + g(t) dw`` with score ``s(x, t) = grad log p_t(x)`` (Song et al. 2021, "Score-Based
Generative Modeling through SDEs"):

* the Anderson reverse-time SDE (eq. 6), drift :func:`reverse_drift`
  ``f(t) x - g(t)^2 s(x, t)``, and as objects for ``torchsde.sdeint``: :class:`ReverseSDE` (in the
  flipped time ``s = t_start - t``; :class:`AdditiveReverseSDE` for torchsde's additive-noise schemes)
  and :class:`ForwardSDE`;
* the probability-flow ODE (eq. 13), drift :func:`probability_flow_drift` ``f(t) x - g(t)^2 s / 2``, as a
  module for ``torchdiffeq.odeint`` (:class:`ProbabilityFlowODE`), in the SDE's time t or, for
  ``y = x / alpha``, in the half log-SNR lam (Lu et al. 2022, "DPM-Solver", eq. 3.4).

The two integrators every ODE user here shares:

* :func:`odeint_in_lam`: ``torchdiffeq.odeint`` over a grid of lam values, landing exactly on the last one
  (the ``ode`` sampler's adaptive solves, :meth:`ProbabilityFlowODE.solve` and the likelihood);
* :func:`solve_ivp`: a torch field integrated by ``scipy.integrate.solve_ivp`` on the flattened float64
  state (the ``scipy_ode`` sampler and the likelihood's scipy backend).

Dtypes: the schedule (f, g^2, alpha, sigma at t) is computed in float64; the state, the score and the
drift stay in the caller's dtype, so a float32 state stays float32. Nothing here reads a tensor's value
on the host per model call; the adaptive solvers read theirs for step control, as they must.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ._tensor import append_dims

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class SDE(Protocol):
    """What the dynamics read of a :class:`scoresde.sde.SDE` (sde.py imports this module, not the reverse)."""

    T: float

    def f(self, t) -> Tensor: ...
    def g2(self, t) -> Tensor: ...
    def g(self, t) -> Tensor: ...
    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]: ...
    def alpha(self, t) -> Tensor: ...
    def lam(self, t) -> Tensor: ...
    def t_of_lam(self, lam) -> Tensor: ...
    def _alpha_sigma(self, t) -> tuple[Tensor, Tensor]: ...  # unchecked twins, for the per-call path
    def _t_of_lam(self, lam) -> Tensor: ...

__all__ = ["reverse_drift", "probability_flow_drift", "ProbabilityFlowODE", "ReverseSDE", "AdditiveReverseSDE",
           "ForwardSDE",
           "odeint_in_t", "odeint_in_lam", "solve_ivp", "schedule_time"]


def schedule_time(t, x: Tensor) -> Tensor:
    """``t`` (a number, a 0-d or a per-sample ``(B,)`` tensor) as float64, to evaluate the schedule at.

    A 0-d tensor stays where it is (a CPU scalar combines with x on any device); a per-sample one is
    moved to x's device. A number becomes a 0-d float64 CPU tensor.
    """
    if not isinstance(t, Tensor):
        return torch.tensor(float(t), dtype=torch.float64)
    if t.ndim == 0:
        return t.to(torch.float64)
    return t.to(device=x.device, dtype=torch.float64)


def _coefficient(value: Tensor, x: Tensor) -> Tensor:
    """A float64 schedule value at 0-d or per-sample t, broadcast against x and cast to x's dtype."""
    return append_dims(value, x.ndim).to(x.dtype)


def reverse_drift(sde: SDE, x: Tensor, t, score: Tensor) -> Tensor:
    """Drift of the Anderson reverse-time SDE, ``f(t) x - g(t)^2 s`` (Song et al. 2021, eq. 6)."""
    t = schedule_time(t, x)
    return _coefficient(sde.f(t), x) * x - _coefficient(sde.g2(t), x) * score


def probability_flow_drift(sde: SDE, x: Tensor, t, score: Tensor) -> Tensor:
    """Drift of the probability-flow ODE, ``f(t) x - g(t)^2 s / 2`` (Song et al. 2021, eq. 13)."""
    t = schedule_time(t, x)
    return _coefficient(sde.f(t), x) * x - 0.5 * _coefficient(sde.g2(t), x) * score


# ---------------------------------------------------------------------------------------------
# The probability-flow ODE for torchdiffeq
# ---------------------------------------------------------------------------------------------
class ProbabilityFlowODE(torch.nn.Module):
    r"""The probability-flow ODE of ``sde`` with score ``score_fn`` (Song et al. 2021, eq. 13), in two variables.

    In the SDE's time t (:meth:`forward`, the signature ``torchdiffeq.odeint`` takes):

    .. math::  \frac{dx}{dt} = f(t)\, x - \tfrac12 g(t)^2\, s(x, t).

    In the half log-SNR lam, for ``y = x / alpha`` (:meth:`lambda_drift`; Lu et al. 2022, "DPM-Solver",
    eq. 3.4, whose exponential integrators discretise the same form):

    .. math::  \frac{dy}{d\lambda} = -e^{-\lambda}\, \varepsilon(\alpha y, t(\lambda))
               = \frac{\sigma^2}{\alpha}\, s(\alpha y, t(\lambda)),

    with alpha, sigma taken at ``t(lam) = sde.t_of_lam(lam)``. Every SDE of the family has
    ``x_t / alpha_t = x_0 + e^{-lam} eps``, so the marginals of y, and this field, depend on t only through
    lam: it is smooth in lam even where the schedule is not smooth in t (DiscreteVPSDE's piecewise-linear
    log alpha, whose f jumps at each of its N knots).

    ``t_range = (lo, hi)``: the times handed to ``score_fn`` are clamped into it. Solvers look a little
    outside the interval they integrate (a stage time a rounding error past an end; the first-step
    heuristic of an adaptive solver, Hairer et al. "Solving ODEs I" II.4, much further), where alpha and
    sigma may not exist; there the field is held at its value at the nearest end, and the score is never
    evaluated outside the interval. :meth:`solve` sets it to the span of its times. The clamp passes
    gradients at the ends themselves, so a run is differentiable with respect to its grid.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, t_range: tuple[float, float] | None = None):
        super().__init__()
        self.sde = sde
        self.score_fn = score_fn
        self.t_range = None if t_range is None else (float(min(t_range)), float(max(t_range)))

    def _time(self, t: Tensor) -> Tensor:
        return t if self.t_range is None else t.clamp(*self.t_range)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        """dx/dt at ``(x, t)``: :func:`probability_flow_drift` with the score."""
        t = self._time(schedule_time(t, x))
        return probability_flow_drift(self.sde, x, t, self.score_fn(x, t))

    def lambda_drift(self, lam: Tensor, y: Tensor) -> Tensor:
        """dy/dlam at ``(y, lam)`` for ``y = x / alpha``: ``(sigma^2 / alpha) s(alpha y, t(lam))``."""
        # the unchecked evaluators: the ends were checked once, where the solve began (no host read per call)
        t = self._time(self.sde._t_of_lam(schedule_time(lam, y)))
        alpha, sigma = self.sde._alpha_sigma(t)
        return _coefficient(sigma**2 / alpha, y) * self.score_fn(_coefficient(alpha, y) * y, t)

    def solve(self, x: Tensor, times, *, method: str = "dopri5", rtol: float = 1e-10, atol: float = 1e-10,
              **options) -> Tensor:
        """Integrate from ``times[0]`` through ``times`` (monotone) with ``torchdiffeq.odeint``; x at every time.

        A fixed-step ``method`` (:data:`scoresde.integrators.TORCHDIFFEQ_FIXED`) steps in t, one step per
        interval of ``times`` (or ``options['step_size']``, in t), and is differentiable with respect to
        ``times``. An adaptive one integrates :meth:`lambda_drift` in lam between ``lam(times)``
        (:func:`odeint_in_lam`), with ``rtol``/``atol`` on y = x / alpha (at the data end alpha ~ 1, so on
        x), and lands exactly on the last time; x = alpha y at each time. The score is only evaluated
        at times between ``times[0]`` and ``times[-1]``.
        """
        from .integrators import is_adaptive

        times = torch.as_tensor(times, dtype=torch.float64)
        ends = times[[0, -1]].detach().cpu()
        flow = ProbabilityFlowODE(self.sde, self.score_fn, t_range=(float(ends[0]), float(ends[1])))
        if not is_adaptive(method):
            return odeint_in_t(flow, x, times.to(x.device), method=method, options=options)
        times = times.cpu()
        lam, alpha = self.sde.lam(times), self.sde.alpha(times)
        ys = odeint_in_lam(flow.lambda_drift, x / alpha[0], lam, method=method, rtol=rtol, atol=atol,
                           options=options)
        return append_dims(alpha.to(x.device, x.dtype), ys.ndim) * ys


def odeint_in_t(flow: ProbabilityFlowODE, x: Tensor, times: Tensor, *, method: str,
                options: dict | None = None) -> Tensor:
    """A fixed-step ``torchdiffeq.odeint`` of ``flow`` in t through ``times`` (already on x's device).

    One step per interval of ``times`` (unless ``options['step_size']``); gradients flow to x, the
    score's parameters and ``times``.
    """
    import torchdiffeq

    kwargs = {"options": options} if options else {}
    return torchdiffeq.odeint(flow, x, times, method=method, **kwargs)


def odeint_in_lam(field: Callable, state0, lam: Tensor, *, method: str = "dopri5", rtol: float = 1e-10,
                  atol: float = 1e-10, options: dict | None = None):
    """``torchdiffeq.odeint(field, state0, lam)``: the state (a tensor or a tuple) at every value of ``lam``.

    ``lam`` (float64, monotone) is moved to the state's device once. An adaptive method is told to land
    on ``lam[-1]`` exactly (``step_t``) instead of stepping past it, where t(lam) may not exist; a
    fixed-step one takes ``options['step_size']`` in lam, or one step per interval of ``lam``.
    """
    import torchdiffeq

    from .integrators import is_adaptive

    device = (state0[0] if isinstance(state0, tuple) else state0).device
    lam = lam.to(device)
    options = dict(options or {})
    if is_adaptive(method):
        options = {"step_t": lam[-1:], **options}
    kwargs = {"options": options} if options else {}
    return torchdiffeq.odeint(field, state0, lam, method=method, rtol=rtol, atol=atol, **kwargs)


# ---------------------------------------------------------------------------------------------
# The scipy bridge
# ---------------------------------------------------------------------------------------------
def solve_ivp(field: Callable, state0: tuple[Tensor, ...], span: tuple[float, float], *, method: str,
              rtol: float, atol: float, dtype: torch.dtype | None = None, t_eval=None, **options):
    """``scipy.integrate.solve_ivp`` of a torch field on the flattened float64 state; evaluation only.

    ``field(s, state) -> derivative``: ``s`` a 0-d float64 tensor (the independent variable, e.g. lam),
    ``state`` and the derivative tuples of tensors shaped like ``state0``, on its device, in ``dtype``
    (default ``state0[0]``'s). It runs under ``no_grad``; scipy sees one flat float64 vector.
    Returns ``(sol, unflatten)``: the ``OdeResult`` and a function from a column of ``sol.y`` to the
    state as tensors on the device, in ``dtype``.
    """
    import numpy as np
    from scipy.integrate import solve_ivp as _solve_ivp

    shapes = [s.shape for s in state0]
    sizes = [s.numel() for s in state0]
    device = state0[0].device
    dtype = state0[0].dtype if dtype is None else dtype

    def unflatten(y: np.ndarray, dtype: torch.dtype = dtype) -> tuple[Tensor, ...]:
        flat = torch.from_numpy(np.ascontiguousarray(y)).to(device=device, dtype=dtype)
        return tuple(part.reshape(shape) for part, shape in zip(flat.split(sizes), shapes, strict=True))

    def rhs(s: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = field(torch.tensor(s, dtype=torch.float64), unflatten(y))
        return np.concatenate([o.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy() for o in out])

    y0 = np.concatenate([s.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy() for s in state0])
    sol = _solve_ivp(rhs, (float(span[0]), float(span[1])), y0, method=method, rtol=rtol, atol=atol,
                     t_eval=t_eval, **options)
    return sol, unflatten


# ---------------------------------------------------------------------------------------------
# The reverse and forward SDEs for torchsde
# ---------------------------------------------------------------------------------------------
class AdditiveReverseSDE(torch.nn.Module):
    """The Anderson reverse-time SDE ``dx = [f x - g^2 s] dt + g dw_bar`` for ``torchsde.sdeint``.

    torchsde integrates forward in time only, so this object runs in the flipped time
    ``s = t_start - t``: integrate s from 0 to ``t_start - t_end``. In s the drift changes sign,
    the diffusion does not. States are flattened to ``(B, D)`` as torchsde requires; give
    ``event_shape`` (the per-sample shape) to have the score called on unflattened tensors.

    The noise is additive (g depends on t only) and given as ``g_prod(s, y, v) = g(t) v``, what
    torchsde's additive-noise schemes take; :class:`ReverseSDE` also gives the diagonal ``g(s, y)``.
    ``sde_type``: ``'ito'``, or ``'stratonovich'`` for a Stratonovich scheme (the same SDE: with additive
    noise the two coincide). ``t_end``: the times handed to the score are clamped into
    ``[t_end, t_start]`` (``t_start - (t_start - t_i)`` can land a rounding error outside a grid).
    """

    noise_type = "additive"

    def __init__(self, sde: SDE, score_fn: ScoreFn, event_shape=None, t_start: float | None = None,
                 t_end: float | None = None, *, sde_type: str = "ito"):
        super().__init__()
        self.sde = sde
        self.score_fn = score_fn
        self.event_shape = None if event_shape is None else tuple(event_shape)
        self.t_start = float(sde.T if t_start is None else t_start)
        self.t_end = None if t_end is None else float(t_end)
        self.sde_type = sde_type

    def time(self, s: Tensor) -> Tensor:
        return self.t_start - s

    def _unflatten(self, y: Tensor) -> Tensor:
        return y if self.event_shape is None else y.reshape(y.shape[0], *self.event_shape)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        t = self.time(schedule_time(s, y))
        if self.t_end is not None:
            t = t.clamp(self.t_end, self.t_start)
        x = self._unflatten(y)
        return -reverse_drift(self.sde, x, t, self.score_fn(x, t)).reshape(y.shape)

    def g_prod(self, s: Tensor, y: Tensor, v: Tensor) -> Tensor:
        return _coefficient(self.sde.g(self.time(schedule_time(s, y))), v) * v


class ReverseSDE(AdditiveReverseSDE):
    """:class:`AdditiveReverseSDE` with its diffusion also as the diagonal ``g(s, y)`` (``noise_type='diagonal'``),
    which every torchsde scheme accepts (reversible Heun asks for g itself)."""

    noise_type = "diagonal"

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        return _coefficient(self.sde.g(self.time(schedule_time(s, y))), y).expand_as(y)


class ForwardSDE(torch.nn.Module):
    """The forward SDE ``dx = f(t) x dt + g(t) dw`` for ``torchsde.sdeint`` (t from 0 to T)."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, sde: SDE, event_shape=None):
        super().__init__()
        self.sde = sde
        self.event_shape = event_shape

    def f(self, t: Tensor, y: Tensor) -> Tensor:
        return _coefficient(self.sde.f(schedule_time(t, y)), y) * y

    def g(self, t: Tensor, y: Tensor) -> Tensor:
        return _coefficient(self.sde.g(schedule_time(t, y)), y).expand_as(y)
