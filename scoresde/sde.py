r"""The forward SDE family, defined by its Gaussian marginals.

Every SDE here is linear, ``dx = f(t) x dt + g(t) dw``, with marginals

.. math::  x_t = \alpha(t)\, x_0 + \sigma(t)\, \varepsilon, \qquad \varepsilon \sim N(0, I).

A subclass gives closed forms of ``log_alpha(t)`` and ``sigma(t)``; :class:`SDE` derives the rest
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", eqs. 5-6 and 13;
Kingma et al. 2021, "Variational Diffusion Models", appendix on the SNR):

* drift coefficient ``f(t) = d log alpha / dt``,
* squared diffusion ``g^2(t) = d sigma^2/dt - 2 f(t) sigma^2(t)``,
* half log-SNR ``lam(t) = log alpha(t) - log sigma(t)`` and its inverse ``t_of_lam``,
* the prior ``N(0, sigma(T)^2 I)``.

The reverse-time SDE and the probability-flow ODE that follow from them live in :mod:`scoresde.dynamics`
(reached through ``sde.reverse_drift``, ``sde.probability_flow``, ``sde.reverse_sde``, ...).

The base class derives ``f`` and ``g^2`` by forward-mode differentiation of the closed forms and
inverts ``lam`` by bisection, so a new SDE needs two methods; the shipped SDEs override these with
closed forms for speed (the tests check both against finite differences).

All methods are pure functions of ``t``: device and dtype follow ``t``. Python numbers are turned
into float64 tensors. Nothing is cached on a fixed device.

Domains (checked with one reduction per call of a public evaluator; NaN fails the check). The check reads a
tensor on the host, so each public evaluator has an unchecked twin (``_sigma``, ``_alpha_sigma``, ``_lam``,
``_t_of_lam``, ``_coefficients``) that the model wrapper, the networks and the losses call per model evaluation,
with times that the boundary (``sample()``, the trainer, the likelihood) checked once:

* the closed-form evaluators ``alpha``, ``sigma``, ``alpha_sigma`` and ``lam`` accept every t in the
  closed form's natural domain ``sde.domain``: ``[0, inf)`` for VP and sub-VP, ``[0, t_max]`` for VE
  (t_max: where sigma(t)^2 reaches e^700, near the float64 limit), ``[0, 1]`` for the cosine schedule,
  the flow-matching path and the discrete schedule (alpha vanishes or the knots end at 1), and
  ``[0, T]`` for a new subclass;
* the process on ``[0, T]``: ``marginal``, ``perturb``, ``drift`` and ``validate_time``;
* ``t_of_lam`` accepts any finite half log-SNR.

A constructor refuses parameters of the wrong type (TypeError) or outside their range (ValueError),
and parameters whose schedule leaves float64 (alpha(T) underflowing to 0, sigma(T)^2 overflowing, an
infinite log-SNR, f or g^2 at t_min or T), naming them, so that no evaluation later returns NaN or inf.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import dynamics
from ._tensor import append_dims, as_time, broadcast_time, check_finite_number

ScoreFn = Callable[[Tensor, Tensor], Tensor]

__all__ = [
    "SDE",
    "Coefficients",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "DiscreteVPSDE",
    "FlowMatchingSDE",
    "sde_arguments",
    "check_sde_kwargs",
]

# log alpha(T) or log sigma(t_min) below this, or log sigma(T) above minus half of it (sigma^2 and g^2 ~ sigma^2
# must stay finite), leaves float64 (exp underflows near -745 and overflows near 709)
_LOG_FLOAT64_LIMIT = -700.0


def sde_arguments(cls: type) -> tuple[str, ...]:
    """The constructor arguments of an SDE dataclass (what ``sde_kwargs`` may hold)."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def check_sde_kwargs(cls: type, kwargs: dict, name: str = "sde_kwargs") -> dict:
    """Refuse keys ``cls`` does not take, listing the ones it does (instead of the dataclass's TypeError)."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"{name}: expected a mapping of argument names to values, got {kwargs!r}")
    allowed = sde_arguments(cls)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                         f"allowed: {', '.join(allowed) or 'none'}")
    return kwargs


def _derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Elementwise derivative of an elementwise function by forward-mode AD (works under no_grad)."""
    _, d = torch.func.jvp(fn, (t,), (torch.ones_like(t),))
    return d


def _check_sample_shape(shape) -> tuple[int, ...]:
    """The shape of a prior draw: a tuple of non-negative ints (refused here, not as torch's 'negative dimension')."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list, torch.Size)) or any(
            isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in shape):
        raise TypeError(f"shape: expected a tuple of non-negative ints (batch, *event_shape), got {shape!r}")
    if any(n < 0 for n in shape):
        raise ValueError(f"shape: expected non-negative sizes (batch, *event_shape), got {tuple(shape)}")
    return tuple(int(n) for n in shape)


def _check_points(name: str, x) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.ndim == 0:
        raise ValueError(f"{name}: expected a floating-point tensor with a batch dimension, got shape "
                         f"{tuple(x.shape)} of {x.dtype}")


class Coefficients:
    r"""The marginal coefficients of an SDE at times ``t``, as one record (read-only).

    ``alpha``, ``sigma``, their time derivatives ``d_alpha = alpha f`` and ``d_sigma``, and the half
    log-SNR ``lam = log alpha - log sigma``, each a tensor shaped like ``t`` (facebookresearch/flow_matching
    returns the same four from one scheduler call, its ``SchedulerOutput``). Each is computed when first
    read and kept, so a conversion that needs alpha and sigma does not pay for the derivatives. The
    times are not checked here: :meth:`SDE.coefficients` checks them, ``SDE._coefficients`` does not.
    """

    __slots__ = ("sde", "t", "_alpha", "_sigma", "_d_alpha", "_d_sigma", "_lam")

    def __init__(self, sde: SDE, t: Tensor):
        self.sde, self.t = sde, t
        self._alpha = self._sigma = self._d_alpha = self._d_sigma = self._lam = None

    @property
    def alpha(self) -> Tensor:
        if self._alpha is None:
            self._alpha = torch.exp(self.sde.log_alpha(self.t))
        return self._alpha

    @property
    def sigma(self) -> Tensor:
        if self._sigma is None:
            self._sigma = self.sde._sigma(self.t)
        return self._sigma

    @property
    def d_alpha(self) -> Tensor:
        """d alpha / dt = alpha f (f = d log alpha / dt)."""
        if self._d_alpha is None:
            self._d_alpha = self.alpha * self.sde.f(self.t)
        return self._d_alpha

    @property
    def d_sigma(self) -> Tensor:
        """d sigma / dt."""
        if self._d_sigma is None:
            self._d_sigma = self.sde.dsigma_dt(self.t)
        return self._d_sigma

    @property
    def lam(self) -> Tensor:
        if self._lam is None:
            self._lam = self.sde._lam(self.t)
        return self._lam


class SDE(ABC):
    """A linear forward SDE with Gaussian marginals ``x_t = alpha(t) x_0 + sigma(t) eps``.

    Subclasses define :meth:`log_alpha` and :meth:`sigma` (closed forms) and the attributes
    ``T`` (end of the forward process) and ``t_min`` (the default smallest sampling time).
    ``default_grid`` names the time grid :func:`scoresde.sample` uses when given none.
    """

    #: the grid a sampler uses when none is given (uniform in the half log-SNR, DPM-Solver's choice)
    default_grid: ClassVar[str] = "logsnr"

    T: float
    t_min: float

    # ----- what a subclass must give -----------------------------------------------------------
    @abstractmethod
    def log_alpha(self, t: Tensor) -> Tensor:
        """log of the mean coefficient alpha(t)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Marginal standard deviation sigma(t) of the noise part."""

    # ----- the domain of the closed forms -------------------------------------------------------
    @property
    def domain(self) -> tuple[float, float]:
        """Closed interval of times where the closed forms hold (a new subclass: ``[0, T]``)."""
        return 0.0, float(self.T)

    def _in_domain(self, t, name: str = "t") -> Tensor:
        """``t`` as a tensor, checked to lie in :attr:`domain` with one reduction (NaN fails it)."""
        t = as_time(t)
        lo, hi = self.domain
        if not bool(((t >= lo) & (t <= hi)).all()):
            bad = t.detach().flatten()
            bad = bad[~((bad >= lo) & (bad <= hi))][:4].tolist()
            interval = f"[{lo:g}, {hi:g}]" if math.isfinite(hi) else f"[{lo:g}, inf)"
            raise ValueError(f"{name}: times must lie in {interval} (the domain of {type(self).__name__}'s "
                             f"closed forms), got {bad}")
        return t

    def _check_schedule(self, params: str) -> None:
        """Refuse parameters (named in ``params``) whose schedule leaves float64 on [t_min, T].

        alpha(T) underflowing to 0 makes x_0 unrecoverable at T (every sampler would blame the model),
        sigma(T) overflowing makes the prior infinite, and an infinite lambda breaks every log-SNR grid.
        """
        ends = torch.tensor([float(self.t_min), float(self.T)], dtype=torch.float64)
        log_alpha, log_sigma = self.log_alpha(ends), self.log_sigma(ends)
        lam = log_alpha - log_sigma
        problem = None
        if not bool(torch.isfinite(log_alpha).all() & torch.isfinite(log_sigma).all() & torch.isfinite(lam).all()):
            problem = (f"log alpha = {log_alpha.tolist()}, log sigma = {log_sigma.tolist()} at (t_min, T) are not "
                       "all finite")
        elif float(log_alpha[1]) < _LOG_FLOAT64_LIMIT:
            problem = f"alpha(T) = exp({float(log_alpha[1]):.4g}) underflows to 0 in float64"
        elif float(log_sigma[1]) > -0.5 * _LOG_FLOAT64_LIMIT:
            problem = f"sigma(T)^2 = exp({2 * float(log_sigma[1]):.4g}) overflows float64"
        elif float(log_sigma[0]) < _LOG_FLOAT64_LIMIT:
            problem = f"sigma(t_min) = exp({float(log_sigma[0]):.4g}) underflows to 0 in float64"
        else:  # the ends lie in the domain now, so f and g^2 can be evaluated there
            f, g2 = self.f(ends), self.g2(ends)
            if not bool(torch.isfinite(f).all() & torch.isfinite(g2).all()):
                problem = f"f = {f.tolist()}, g^2 = {g2.tolist()} at (t_min, T) are not all finite"
        if problem is not None:
            raise ValueError(f"{params}: the schedule leaves float64 ({problem}); allowed: parameters with "
                             f"log alpha(T) and log sigma(t_min) above {_LOG_FLOAT64_LIMIT:g}, log sigma(T) "
                             f"below {-0.5 * _LOG_FLOAT64_LIMIT:g} and finite f, g^2 at t_min and T")

    # ----- derived quantities (subclasses may override with closed forms) ----------------------
    # A public evaluator checks its times against the domain (one host read, for a user's call); the
    # underscored one does not, and is what the model wrapper, the networks and the losses call per
    # model evaluation, with times that sample(), the trainer or the likelihood checked once.
    def _sigma(self, t) -> Tensor:
        """sigma(t) without the domain check (a new subclass's ``sigma`` is its unchecked closed form)."""
        return self.sigma(t)

    def alpha(self, t) -> Tensor:
        """Mean coefficient alpha(t) = exp(log_alpha(t)), for t in :attr:`domain`."""
        return torch.exp(self.log_alpha(self._in_domain(t)))

    def log_sigma(self, t) -> Tensor:
        return torch.log(self._sigma(as_time(t)))

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        """alpha(t) and sigma(t) for t in :attr:`domain`."""
        return self._alpha_sigma(self._in_domain(t))

    def _alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        t = as_time(t)
        return torch.exp(self.log_alpha(t)), self._sigma(t)

    def coefficients(self, t) -> Coefficients:
        """alpha, sigma, d alpha/dt, d sigma/dt and lam at t (in :attr:`domain`) as one record."""
        return Coefficients(self, self._in_domain(t))

    def _coefficients(self, t) -> Coefficients:
        return Coefficients(self, as_time(t))

    def f(self, t) -> Tensor:
        """Drift coefficient f(t) = d log alpha(t) / dt (the drift is f(t) x)."""
        return _derivative(self.log_alpha, as_time(t))

    def g2(self, t) -> Tensor:
        """Squared diffusion g(t)^2 = d sigma^2 / dt - 2 f(t) sigma(t)^2."""
        t = as_time(t)
        d_var = _derivative(lambda s: self._sigma(s) ** 2, t)
        return d_var - 2 * self.f(t) * self._sigma(t) ** 2

    def g(self, t) -> Tensor:
        """Diffusion coefficient g(t)."""
        return torch.sqrt(self.g2(t))

    def lam(self, t) -> Tensor:
        """Half log-SNR lambda(t) = log alpha(t) - log sigma(t), strictly decreasing in t (t in :attr:`domain`)."""
        return self._lam(self._in_domain(t))

    def _lam(self, t) -> Tensor:
        t = as_time(t)
        return self.log_alpha(t) - self.log_sigma(t)

    def log_snr(self, t) -> Tensor:
        """log SNR = log(alpha^2 / sigma^2) = 2 lambda(t)."""
        return 2 * self.lam(t)

    def _finite_lam(self, lam) -> Tensor:
        """``lam`` as a tensor, checked finite with one reduction (a NaN time would follow silently)."""
        lam = as_time(lam)
        if not bool(torch.isfinite(lam).all()):
            bad = lam.detach().flatten()
            raise ValueError(f"lam: expected finite half log-SNR values, got {bad[~torch.isfinite(bad)][:4].tolist()}")
        return lam

    def t_of_lam(self, lam) -> Tensor:
        """Inverse of :meth:`lam`: the time at which the half log-SNR equals ``lam`` (finite).

        Default: vectorised bisection on [0, T] in float64 (lam is monotone), 100 halvings,
        which pins t to float64 resolution. Values beyond the range clamp to 0 or T.
        """
        return self._t_of_lam(self._finite_lam(lam))

    def _t_of_lam(self, lam: Tensor) -> Tensor:
        lam = as_time(lam)
        target = lam.to(torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, float(self.T))
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            above = self.log_alpha(mid) - self.log_sigma(mid) > target  # lam decreases with t: the root is right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def dsigma_dt(self, t) -> Tensor:
        """d sigma / dt, from g^2 = d sigma^2/dt - 2 f sigma^2."""
        t = as_time(t)
        s = self._sigma(t)
        return (self.g2(t) + 2 * self.f(t) * s**2) / (2 * s)

    # ----- marginals and prior -----------------------------------------------------------------
    def validate_time(self, t, name: str = "t") -> Tensor:
        """Check that times are finite and within [0, T] (T as rounded to t's dtype); return them as a tensor."""
        t = as_time(t)
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: times must be finite, got {t.flatten()[:8].tolist()}")
        lo, hi = float(t.min()), float(t.max())
        # T rounded to t's dtype (0.999 is 0.99900001 in float32) is T
        T = max(self.T, float(torch.tensor(self.T, dtype=t.dtype))) if t.is_floating_point() else self.T
        if lo < 0 or hi > T * (1 + 1e-12):
            raise ValueError(f"{name}: times must lie in [0, T={self.T}] for {self!r}, got range [{lo}, {hi}]")
        return t

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x0`` and std ``sigma(t)`` (broadcast to x0's shape) of p(x_t | x_0), t in [0, T]."""
        _check_points("x0", x0)
        t = self.validate_time(as_time(t, like=x0))
        t = t.to(x0.dtype)
        broadcast_time(t, x0)
        alpha, sigma = self.alpha_sigma(t)
        mean = append_dims(alpha, x0.ndim) * x0
        std = append_dims(sigma, x0.ndim).expand_as(x0)
        return mean, std

    def perturb(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """Sample x_t = alpha(t) x0 + sigma(t) noise for given noise (same shape as x0), t in [0, T]."""
        _check_points("x0", x0)
        _check_points("noise", noise)
        if noise.shape != x0.shape:
            raise ValueError(f"noise: expected shape {tuple(x0.shape)} like x0, got {tuple(noise.shape)}")
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def prior_std(self, T: float | None = None) -> float:
        """sigma(T) of the prior N(0, sigma(T)^2 I) at the time ``T`` a run starts from (default: the SDE's T)."""
        T = self.T if T is None else float(T)
        return float(self.sigma(torch.tensor(T, dtype=torch.float64)))

    def prior_sample(self, shape, *, generator: torch.Generator | None = None,
                     device=None, dtype: torch.dtype = torch.float32, T: float | None = None) -> Tensor:
        """Draw from the prior N(0, sigma(T)^2 I) at ``T`` (default: the SDE's T)."""
        shape = _check_sample_shape(shape)
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_std(T) * z

    def prior_log_prob(self, x: Tensor, T: float | None = None) -> Tensor:
        """log N(x; 0, sigma(T)^2 I) at ``T`` (default: the SDE's T), summed over all non-batch dimensions: ``(B,)``."""
        s = self.prior_std(T)
        d = x[0].numel()
        sq = x.reshape(x.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    # ----- dynamics (scoresde.dynamics; these methods are the documented way in) ---------------
    def drift(self, x: Tensor, t) -> Tensor:
        """Forward drift f(t) x, with per-sample t broadcast over x, t in [0, T]."""
        _check_points("x", x)
        t = self.validate_time(as_time(t, like=x)).to(x.dtype)
        return broadcast_time(self.f(t), x) * x

    def reverse_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """Drift of the Anderson reverse-time SDE, ``f(t) x - g(t)^2 s`` (:func:`scoresde.dynamics.reverse_drift`)."""
        return dynamics.reverse_drift(self, x, t, score)

    def probability_flow_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        """Drift of the probability-flow ODE, ``f(t) x - g(t)^2 s / 2`` (:func:`scoresde.dynamics.probability_flow_drift`)."""
        return dynamics.probability_flow_drift(self, x, t, score)

    def probability_flow(self, score_fn: ScoreFn) -> dynamics.ProbabilityFlowODE:
        """The probability-flow ODE of this SDE with score ``score_fn`` (:class:`scoresde.dynamics.ProbabilityFlowODE`)."""
        return dynamics.ProbabilityFlowODE(self, score_fn)

    def reverse_sde(self, score_fn: ScoreFn, event_shape=None, *, t_start: float | None = None) -> dynamics.ReverseSDE:
        """The Anderson reverse-time SDE as an object ``torchsde.sdeint`` accepts (:class:`scoresde.dynamics.ReverseSDE`)."""
        return dynamics.ReverseSDE(self, score_fn, event_shape=event_shape,
                                   t_start=self.T if t_start is None else t_start)

    def forward_sde(self, event_shape=None) -> dynamics.ForwardSDE:
        """The forward SDE dx = f x dt + g dw as an object ``torchsde.sdeint`` accepts."""
        return dynamics.ForwardSDE(self, event_shape=event_shape)


# ---------------------------------------------------------------------------------------------
# Variance-preserving family: alpha^2 + sigma^2 = 1, hence g^2 = -2 f and closed-form lam inverse.
# ---------------------------------------------------------------------------------------------
class _VariancePreserving(SDE):
    """Shared closed forms for SDEs with alpha(t)^2 + sigma(t)^2 = 1."""

    @abstractmethod
    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Inverse of log_alpha(t)."""

    def sigma(self, t) -> Tensor:
        return self._sigma(self._in_domain(t))

    def _sigma(self, t) -> Tensor:
        # sigma^2 = 1 - alpha^2; expm1 keeps precision when alpha is close to 1 (small t).
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(as_time(t))))

    def log_sigma(self, t) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(as_time(t))))

    def g2(self, t) -> Tensor:
        return -2 * self.f(t)

    def _t_of_lam(self, lam) -> Tensor:
        lam = as_time(lam)
        # alpha^2 = sigmoid(2 lam)  =>  log alpha = -softplus(-2 lam) / 2
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * lam)
        return self.t_of_log_alpha(log_alpha)


def _check_dataclass_types(sde) -> None:
    """Refuse strings, booleans and other non-numbers for the float fields (``beta_min='0.1'``, ``T=True``)."""
    for f in dataclasses.fields(sde):
        if f.init and f.type in ("float", float):
            check_finite_number(f.name, getattr(sde, f.name))


def _check_beta_range(beta_min, beta_max):
    bmin = check_finite_number("beta_min", beta_min, positive=True)
    bmax = check_finite_number("beta_max", beta_max, positive=True)
    if bmin >= bmax:
        raise ValueError(f"beta_min must be smaller than beta_max, got beta_min={beta_min}, beta_max={beta_max}")
    return bmin, bmax


def _check_times(T, t_min):
    T = check_finite_number("T", T, positive=True)
    t_min = check_finite_number("t_min", t_min, positive=True)
    if not t_min < T:
        raise ValueError(f"t_min must lie in (0, T={T}), got t_min={t_min}")
    return T, t_min


class _LinearBeta:
    """log alpha for a linear beta(t) = beta_min + t (beta_max - beta_min) and its inverse."""

    beta_min: float
    beta_max: float

    def beta(self, t) -> Tensor:
        t = as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t) -> Tensor:
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def f(self, t) -> Tensor:
        return -0.5 * self.beta(t)

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        # Root of a t^2 + b t - c = 0 with c = -log alpha >= 0, in the cancellation-free form
        # 2c / (b + sqrt(b^2 + 4ac)), divided through by sqrt(c) so that no square overflows for huge c.
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        c = -log_alpha
        root_c = torch.sqrt(c)
        return torch.where(c > 0, 2 * root_c / (b / root_c + torch.sqrt(b * b / c + 4 * a)), torch.zeros_like(c))


@dataclass(frozen=True)
class VPSDE(_LinearBeta, _VariancePreserving):
    """Variance-preserving SDE (DDPM in continuous time; Song et al. 2021, eq. 11).

    ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw`` with ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``log alpha(t) = -t^2 (beta_max - beta_min)/4 - t beta_min/2``, ``sigma^2 = 1 - alpha^2``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    t_min: float = 1e-3

    def __post_init__(self):
        _check_dataclass_types(self)
        _check_beta_range(self.beta_min, self.beta_max)
        _check_times(self.T, self.t_min)
        self._check_schedule(f"beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, t_min={self.t_min}")

    @property
    def domain(self) -> tuple[float, float]:
        return 0.0, math.inf


@dataclass(frozen=True)
class SubVPSDE(_LinearBeta, SDE):
    """Sub-VP SDE (Song et al. 2021, eq. 13): VP's mean with ``sigma(t) = 1 - alpha(t)^2``.

    ``dx = -beta/2 x dt + sqrt(beta (1 - alpha^4)) dw``; its variance stays below the VP one.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    t_min: float = 1e-3

    def __post_init__(self):
        _check_dataclass_types(self)
        _check_beta_range(self.beta_min, self.beta_max)
        _check_times(self.T, self.t_min)
        self._check_schedule(f"beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}, t_min={self.t_min}")

    @property
    def domain(self) -> tuple[float, float]:
        return 0.0, math.inf

    def sigma(self, t) -> Tensor:
        return self._sigma(self._in_domain(t))

    def _sigma(self, t) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(as_time(t)))

    def log_sigma(self, t) -> Tensor:
        return torch.log(-torch.expm1(2 * self.log_alpha(as_time(t))))

    def g2(self, t) -> Tensor:
        t = as_time(t)
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def _t_of_lam(self, lam) -> Tensor:
        lam = as_time(lam)
        # e^lam = alpha / (1 - alpha^2)  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam})).
        # In logs, with the square root written as e^lam * sqrt(e^{-2 lam} + 4) for large lam.
        log_root = torch.where(
            lam < 0,
            torch.log1p(torch.sqrt(1 + 4 * torch.exp(2 * lam))),
            lam + torch.log(torch.exp(-lam) + torch.sqrt(torch.exp(-2 * lam) + 4)),
        )
        log_alpha = math.log(2.0) + lam - log_root
        return self.t_of_log_alpha(log_alpha)


@dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE (SMLD / NCSN in continuous time; Song et al. 2021, eq. 9).

    ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``,
    ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    t_min: float = 1e-5

    def __post_init__(self):
        _check_dataclass_types(self)
        smin = check_finite_number("sigma_min", self.sigma_min, positive=True)
        smax = check_finite_number("sigma_max", self.sigma_max, positive=True)
        if smin >= smax:
            raise ValueError(f"sigma_min must be smaller than sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        _check_times(self.T, self.t_min)
        self._check_schedule(f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, t_min={self.t_min}")

    @property
    def domain(self) -> tuple[float, float]:
        # sigma(t) = sigma_min (sigma_max / sigma_min)^t and g^2 ~ sigma^2 stay float64 numbers up to t_max
        return 0.0, (-0.5 * _LOG_FLOAT64_LIMIT - math.log(self.sigma_min)) / self._log_ratio

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(as_time(t))

    def alpha(self, t) -> Tensor:
        return torch.ones_like(self._in_domain(t))

    def log_sigma(self, t) -> Tensor:
        return math.log(self.sigma_min) + as_time(t) * self._log_ratio

    def sigma(self, t) -> Tensor:
        return self._sigma(self._in_domain(t))

    def _sigma(self, t) -> Tensor:
        return torch.exp(self.log_sigma(t))

    def f(self, t) -> Tensor:
        return torch.zeros_like(as_time(t))

    def g2(self, t) -> Tensor:
        return 2 * self._log_ratio * self._sigma(t) ** 2

    def _t_of_lam(self, lam) -> Tensor:
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio


@dataclass(frozen=True)
class CosineVPSDE(_VariancePreserving):
    """VP SDE with the cosine schedule (Nichol & Dhariwal 2021, eq. 17), in continuous time.

    ``alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s))``. alpha reaches 0 at t = 1, so the
    default T = 0.9946 keeps lambda(T) finite (the value DPM-Solver uses).
    """

    s: float = 0.008
    T: float = 0.9946
    t_min: float = 1e-3

    def __post_init__(self):
        _check_dataclass_types(self)
        check_finite_number("s", self.s, positive=True)
        _check_times(self.T, self.t_min)
        if self.T >= 1:
            raise ValueError(f"T must be below 1 for the cosine schedule (alpha(1) = 0), got T={self.T}")
        self._check_schedule(f"s={self.s}, T={self.T}, t_min={self.t_min}")

    @property
    def domain(self) -> tuple[float, float]:
        return 0.0, 1.0  # alpha(1) = 0; past 1 the cosine turns negative

    def _phase(self, t) -> Tensor:
        return 0.5 * math.pi * (as_time(t) + self.s) / (1 + self.s)

    @property
    def _log_alpha0(self) -> float:
        return math.log(math.cos(0.5 * math.pi * self.s / (1 + self.s)))

    def log_alpha(self, t) -> Tensor:
        # cos(a + d)/cos(a) = 1 - 2 sin^2(d/2) - tan(a) sin(d): log1p of a small number, with no
        # cancellation at small t (the difference of two logs loses float32 digits there).
        d = 0.5 * math.pi * as_time(t) / (1 + self.s)
        tan_a = math.tan(0.5 * math.pi * self.s / (1 + self.s))
        return torch.log1p(-2 * torch.sin(0.5 * d) ** 2 - tan_a * torch.sin(d))

    def f(self, t) -> Tensor:
        return -torch.tan(self._phase(t)) * (0.5 * math.pi / (1 + self.s))

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        phase = torch.arccos(torch.exp(log_alpha + self._log_alpha0))
        return phase * (2 * (1 + self.s) / math.pi) - self.s


@dataclass(frozen=True)
class FlowMatchingSDE(SDE):
    """The rectified-flow / conditional flow-matching path ``alpha = 1 - t``, ``sigma = t``.

    Its drift is ``f = -1/(1 - t)`` and ``g^2 = 2 t / (1 - t)``; the probability-flow ODE of this
    SDE is the flow-matching velocity field, so flow-matching models run on every solver.
    alpha(1) = 0, so the default T = 0.999 keeps lambda(T) finite.

    **Convention.** Data sit at ``t = 0`` and noise at ``t = 1``, and the velocity ``d x_t / dt =
    eps - x_0`` points from data to noise: the reverse of Lipman et al. (2023), Liu et al. (2023) and
    facebookresearch/flow_matching, whose ``CondOTProbPath`` has ``x_s = s x_1 + (1 - s) x_0`` with
    data ``x_1`` at ``s = 1`` and velocity ``x_1 - x_0``. With ``s = 1 - t`` the paths agree and the
    velocities are negatives: ``u_ours(x, t) = -u_lipman(x, 1 - t)``
    (:func:`scoresde.interop.flow_matching.from_lipman` adapts a network trained in their convention).

    **Default grid.** ``default_grid = 'quadratic'`` (uniform in sqrt(t), dense near the data), not
    the log-SNR grid: lambda = log((1 - t) / t) spends its steps near both ends, and on the exact
    eight-Gaussians oracle (256 common x_T, dopri5 reference at 1e-10) the mean endpoint error at
    10 / 80 steps was, log-SNR vs quadratic: DDIM 0.154 / 0.0156 vs 0.058 / 0.0071, DPM-Solver++(2M)
    0.183 / 0.0014 vs 0.0093 / 0.0005, UniPC 0.328 / 1.8e-4 vs 0.051 / 4.0e-5; uniform in t was best
    for DDIM (0.037 / 0.0054) but unstable for the multistep solvers (UniPC 0.09 at 20 and 0.03 at 80
    steps). On the 2-D two-component mixture the log-SNR grid left DDIM at 80 steps a maximum error of
    0.865 (quadratic 0.123; mean 0.050 vs 0.025), and UniPC at 80 steps a mean 2.4e-4 (quadratic 4.3e-5).
    EDM's Heun prefers log-SNR (eight Gaussians 0.227 / 0.0013 against 1.49 / 0.0033 at 10 / 80 steps;
    the 2-D mixture 0.45 / 0.0040 against 7.2 / 0.016): pass ``grid='logsnr'`` for it.
    """

    default_grid: ClassVar[str] = "quadratic"
    T: float = 0.999
    t_min: float = 1e-3

    def __post_init__(self):
        _check_dataclass_types(self)
        _check_times(self.T, self.t_min)
        if self.T >= 1:
            raise ValueError(f"T must be below 1 for the flow-matching path (alpha(1) = 0), got T={self.T}")
        self._check_schedule(f"T={self.T}, t_min={self.t_min}")

    @property
    def domain(self) -> tuple[float, float]:
        return 0.0, 1.0  # alpha = 1 - t reaches 0 at t = 1

    def log_alpha(self, t) -> Tensor:
        return torch.log1p(-as_time(t))

    def sigma(self, t) -> Tensor:
        return self._sigma(self._in_domain(t))

    def _sigma(self, t) -> Tensor:
        return as_time(t).clone()

    def f(self, t) -> Tensor:
        return -1 / (1 - as_time(t))

    def g2(self, t) -> Tensor:
        t = as_time(t)
        return 2 * t / (1 - t)

    def _t_of_lam(self, lam) -> Tensor:
        # (1 - t)/t = e^lam  =>  t = 1/(1 + e^lam) = sigmoid(-lam)
        return torch.sigmoid(-as_time(lam))


def _as_schedule_tensor(name: str, values) -> Tensor:
    """A 1-D float64 CPU tensor of schedule values; a TypeError naming ``name`` for anything else, a
    ValueError for a tensor of another shape (a (10, 100) table is not a schedule of 1000 steps)."""
    if isinstance(values, (str, bytes, dict)) or (isinstance(values, Tensor) and (values.is_complex()
                                                                                  or values.dtype == torch.bool)):
        raise TypeError(f"{name}: expected a 1-D sequence or tensor of real numbers, got {type(values).__name__}")
    try:
        tensor = torch.as_tensor(values, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected a 1-D sequence or tensor of real numbers, got {values!r:.80}") from None
    if tensor.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D schedule (one value per step), got shape {tuple(tensor.shape)}")
    return tensor


def _check_open_unit(name: str, values: Tensor) -> None:
    """At least 2 values, each finite and in (0, 1); else a ValueError naming the first bad one."""
    if values.numel() < 2:
        raise ValueError(f"{name}: expected at least 2 values in the open interval (0, 1), got {values.numel()}")
    bad = ~(torch.isfinite(values) & (values > 0) & (values < 1))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"{name}: expected values in the open interval (0, 1), got {name}[{i}] = "
                         f"{float(values[i])!r} ({int(bad.sum())} of {values.numel()} outside)")


@dataclass(frozen=True, eq=False)
class DiscreteVPSDE(_VariancePreserving):
    """A discrete N-step DDPM schedule placed in continuous time, as the DPM-Solver reference does.

    Knot i (i = 0..N-1) sits at ``t_i = (i + 1)/N`` with ``log alpha(t_i) = log(alphas_cumprod[i]) / 2``;
    log alpha is piecewise linear in t between knots, and on [0, 1/N] it runs linearly to
    alpha(0) = 1 (the reference implementation extrapolates there instead, which can make alpha > 1). A network
    trained on the discrete steps is called with ``t_discrete = N t - 1`` (:meth:`discrete_time`).
    Give ``betas`` or ``alphas_cumprod`` (not both); the default is DDPM's linear schedule,
    betas from 1e-4 to 0.02 over 1000 steps.
    """

    betas: Tensor | None = None
    alphas_cumprod: Tensor | None = None
    t_min: float | None = None
    _log_alpha_knots: Tensor = field(init=False, repr=False)
    _knots_on: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self):
        if self.betas is not None and self.alphas_cumprod is not None:
            raise ValueError("DiscreteVPSDE: give betas or alphas_cumprod, not both")
        if self.alphas_cumprod is None:
            betas = self.betas if self.betas is not None else torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
            betas = _as_schedule_tensor("betas", betas)
            _check_open_unit("betas", betas)
            log_ac = torch.cumsum(torch.log1p(-betas), 0)
        else:
            ac = _as_schedule_tensor("alphas_cumprod", self.alphas_cumprod)
            _check_open_unit("alphas_cumprod", ac)
            rising = ac[1:] >= ac[:-1]
            if bool(rising.any()):
                i = int(rising.nonzero()[0]) + 1
                raise ValueError(f"alphas_cumprod: must be strictly decreasing, but alphas_cumprod[{i}] = "
                                 f"{float(ac[i])!r} >= alphas_cumprod[{i - 1}] = {float(ac[i - 1])!r}")
            log_ac = torch.log(ac)
        object.__setattr__(self, "_log_alpha_knots", 0.5 * log_ac)
        if self.t_min is None:
            object.__setattr__(self, "t_min", 1.0 / self.N)
        _check_times(self.T, self.t_min)
        self._check_schedule(f"{'alphas_cumprod' if self.alphas_cumprod is not None else 'betas'} "
                             f"(N={self.N}), t_min={self.t_min}")

    @property
    def N(self) -> int:
        return self._log_alpha_knots.numel()

    @property
    def T(self) -> float:  # the last knot
        return 1.0

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(N={self.N}, t_min={self.t_min})"

    def __eq__(self, other) -> bool:
        # by value: two SDEs built from the same schedule (two from_diffusers calls) are the same SDE
        if not isinstance(other, DiscreteVPSDE):
            return NotImplemented
        return self.t_min == other.t_min and torch.equal(self._log_alpha_knots, other._log_alpha_knots)

    def __hash__(self) -> int:
        return hash((DiscreteVPSDE, self.t_min, self.N, float(self._log_alpha_knots[-1])))

    def _knots(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """log alpha at t = 0, 1/N, ..., 1 (a knot at t = 0 with alpha = 1 closes the schedule) and the
        slopes between them, on ``like``'s device and dtype."""
        key = (like.device, like.dtype)
        if key not in self._knots_on:  # one copy per device and dtype, not a host-to-device copy per call
            la = torch.cat([self._log_alpha_knots.new_zeros(1), self._log_alpha_knots])
            la = la.to(device=like.device, dtype=like.dtype)
            self._knots_on[key] = (la, (la[1:] - la[:-1]) * self.N)
        return self._knots_on[key]

    def _segment(self, t: Tensor) -> Tensor:
        # in a half dtype N - 1 itself may round up (999 -> 1000 in bfloat16): index in float32 at least
        t = t if t.dtype in (torch.float32, torch.float64) else t.float()
        return torch.clamp(torch.floor(t * self.N), 0, self.N - 1).long()

    def log_alpha(self, t) -> Tensor:
        t = as_time(t)
        la, slope = self._knots(t)
        j = self._segment(t)
        return la[j] + (t - j.to(t.dtype) / self.N) * slope[j]

    def f(self, t) -> Tensor:
        t = as_time(t)
        _, slope = self._knots(t)
        return slope[self._segment(t)]

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        la, slope = self._knots(log_alpha)
        # -la increases with t: the segment is the last knot at or before the target.
        j = torch.searchsorted(-la, (-log_alpha).contiguous(), right=True) - 1
        j = torch.clamp(j, 0, self.N - 1)
        return j.to(log_alpha.dtype) / self.N + (log_alpha - la[j]) / slope[j]

    def discrete_time(self, t) -> Tensor:
        """The discrete step index (as a float) a network trained on this schedule expects."""
        return self.N * as_time(t) - 1
