r"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2).

Along the probability-flow ODE ``dx/dt = v(x, t) = f(t) x - g(t)^2 s(x, t) / 2`` the log-density
obeys the instantaneous change of variables (Chen et al. 2018, "Neural ODEs", thm. 1)
``d log p_t(x(t)) / dt = -div v(x(t), t)``, hence

.. math::  \log p_{t_{min}}(x) = \log p_T(x(T)) + \int_{t_{min}}^{T} \nabla\cdot v(x(t), t)\, dt,

where ``x(t)`` solves the ODE forward from ``x(t_min) = x``. We integrate it in the half log-SNR
lam, where it is smooth for every schedule of the family, for ``y = x / alpha``
(:class:`scoresde.dynamics.ProbabilityFlowODE`): ``dy/dlam = u(y, lam) = (sigma^2/alpha) s(alpha y, t(lam))``,
with ``div_y u = sigma^2 div_x s``. Since ``div_x v dt = D f dt + div_y u dlam`` and ``f = d log alpha/dt``,

.. math::  \log p_{t_{min}}(x) = \log p_T(x(T)) + D \log\frac{\alpha_T}{\alpha_{t_{min}}}
           + \int_{\lambda(t_{min})}^{\lambda(T)} \nabla_y\cdot u\, d\lambda:

the augmented state ``(y, l)`` with ``dl/dlam = div_y u`` runs from ``lam(t_min)`` down to ``lam(T)``
and the prior log-density is taken at the latent ``x(T) = alpha_T y``. The score is only evaluated at
times in [t_min, T]. The divergence is either

* ``'exact'``: the trace of the Jacobian by reverse-mode autograd, one backward pass per
  dimension on one forward pass (the default up to :data:`EXACT_MAX_DIM` dimensions), or
* ``'hutchinson'``: the Skilling-Hutchinson estimator ``E[eps^T (dv/dx) eps]`` with Rademacher or
  Gaussian probes ``eps`` drawn once per solve from a ``torch.Generator`` and held fixed along the
  trajectory (Grathwohl et al. 2019, "FFJORD"); ``n_probes`` probes are averaged, one backward
  pass each. The integrated estimate is unbiased for the integrated exact trace.

Both assume samples do not interact inside the model (no batch statistics), so the Jacobian of the
batched function is block diagonal.

The default backend is ``torchdiffeq.odeint`` (any method and tolerance; differentiable with
``differentiable=True``). ``backend='scipy'`` uses ``scipy.integrate.solve_ivp``: evaluation only,
no gradients flow through it, and it runs on the CPU in float64 between model calls.

Discrete data (values on a lattice of spacing ``bin_width``) have a probability mass, not a density.
With uniform dequantisation (Theis et al. 2016; Ho et al. 2020) the point is moved to
``y = x + bin_width * u``, ``u ~ U[0, 1)^D`` (the lattice point is the lower corner of its cell, the
score_sde convention ``(k + u)/256``), and ``log p(y) + D log(bin_width)`` is, in expectation over
u, a lower bound on ``log P(x)`` (Jensen). Bits per dimension are ``-log P / (D log 2)``; they are
refused for discrete data evaluated without dequantisation, where a density has no such meaning.

Images and other data with a known number of values are given by ``levels`` instead: the data lie on
``-1 + 2k/(levels - 1)`` in [-1, 1] (checked), the cell of each value is centred on it,
``y = x + (2/(levels - 1)) (u - 1/2)`` (the bins of the discretised decoder of :mod:`scoresde.bounds`),
and ``bin_width = 2/(levels - 1)``. Points of any event shape ``(B, C, H, W)`` are accepted; above
:data:`EXACT_MAX_DIM` dimensions the trace is Hutchinson's with ``n_probes`` probes.

The variational bounds on the same quantity live in :mod:`scoresde.bounds` and are re-exported here:
:func:`variational_bound` (DDPM's discrete-time bound) and :func:`continuous_bound`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._tensor import check_finite_number
from .bounds import BoundResult, continuous_bound, variational_bound
from .bounds.gaussian import check_levels, check_on_lattice
from .checks import FiniteWatch
from .dynamics import ProbabilityFlowODE, odeint_in_lam, solve_ivp
from .integrators import is_adaptive
from .models import ScoreModel

__all__ = ["LikelihoodResult", "log_likelihood", "divergence", "draw_probes", "bits_per_dim",
           "ESTIMATORS", "PROBES", "BACKENDS", "EXACT_MAX_DIM", "variational_bound", "continuous_bound",
           "BoundResult"]

ESTIMATORS = ("auto", "exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
BACKENDS = ("torchdiffeq", "scipy")
#: ``estimator='auto'`` uses the exact trace up to this many dimensions per sample.
EXACT_MAX_DIM = 32


@dataclass
class LikelihoodResult:
    """Per-sample log-likelihoods from the probability-flow ODE.

    ``log_likelihood = prior_log_prob + delta_log_p`` is log p_{t_min} at ``points`` in nats, shape
    ``(B,)``; ``points`` are the inputs, or their dequantised versions. ``latent`` is x(T).
    """

    log_likelihood: Tensor
    prior_log_prob: Tensor
    delta_log_p: Tensor
    latent: Tensor
    points: Tensor
    nfe: int
    dim: int
    t_min: float
    T: float
    estimator: str
    n_probes: int
    backend: str
    bin_width: float | None = None
    dequantized: bool = False

    @property
    def nll(self) -> Tensor:
        """Negative log-likelihood in nats, ``(B,)``."""
        return -self.log_likelihood

    def log_prob_discrete(self) -> Tensor:
        """For dequantised discrete data: the lower bound ``log p(y) + D log(bin_width)`` on log P(x)."""
        if self.bin_width is None:
            raise ValueError("log_prob_discrete: the data were treated as continuous (bin_width=None)")
        if not self.dequantized:
            raise ValueError(f"log_prob_discrete: the data are discrete (bin_width={self.bin_width}) but were not "
                             "dequantised; rerun with dequantize=True")
        return self.log_likelihood + self.dim * math.log(self.bin_width)

    def bits_per_dim(self) -> Tensor:
        """``-log p / (D log 2)`` per sample; for discrete data the dequantised bound on log P(x)."""
        return bits_per_dim(self.log_likelihood, self.dim, bin_width=self.bin_width, dequantized=self.dequantized)


def bits_per_dim(log_likelihood: Tensor, dim: int, *, bin_width: float | None = None,
                 dequantized: bool = False) -> Tensor:
    """Bits per dimension from nats: ``-(log p + D log bin_width) / (D log 2)``.

    ``bin_width=None`` means continuous data (then the value is a differential entropy rate and may
    be negative). Discrete data must have been dequantised, else a ValueError.
    """
    if bin_width is None:
        return -log_likelihood / (dim * math.log(2))
    if not dequantized:
        raise ValueError(f"bits_per_dim: the data are discrete (bin_width={bin_width}) but were not dequantised; "
                         "a density at lattice points is not a probability; rerun with dequantize=True")
    return -(log_likelihood + dim * math.log(bin_width)) / (dim * math.log(2))


# ---------------------------------------------------------------------------------------------
# Divergence estimators
# ---------------------------------------------------------------------------------------------
def draw_probes(like: Tensor, n_probes: int, probe: str = "rademacher",
                generator: torch.Generator | None = None) -> Tensor:
    """``n_probes`` probe vectors shaped ``(n_probes, *like.shape)`` with E[eps eps^T] = I.

    Drawn on the generator's device (reproducible there) and moved to ``like``'s device and dtype.
    """
    n_probes = _check_n_probes(n_probes)
    if probe not in PROBES:
        raise ValueError(f"probe: unknown {probe!r}; allowed: {', '.join(PROBES)}")
    device = generator.device if generator is not None else like.device
    shape = (n_probes, *like.shape)
    if probe == "gaussian":
        eps = torch.randn(shape, generator=generator, device=device, dtype=like.dtype)
    else:
        eps = torch.randint(0, 2, shape, generator=generator, device=device).to(like.dtype) * 2 - 1
    return eps.to(like.device)


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, *, probes: Tensor | None = None,
               create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """``(fn(x), div fn(x))`` per sample: the exact Jacobian trace, or Hutchinson's with ``probes``.

    ``fn`` maps ``(B, *event)`` to the same shape and must treat samples independently. Exact:
    ``sum_i d fn_i / d x_i`` with one backward pass per event dimension. Hutchinson: the mean over
    the probes ``eps`` (``(n, B, *event)``) of ``eps^T (d fn / d x) eps``, one backward pass each.
    ``create_graph`` keeps the graph for differentiating the result (second derivatives).
    """
    with torch.enable_grad():
        x_in = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        out = fn(x_in)
        if not out.requires_grad:  # fn does not depend on x (e.g. a constant drift): zero divergence
            return out, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if probes is None:
            flat_dim = x[0].numel()
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i in range(flat_dim):
                e_i = torch.zeros_like(out).reshape(out.shape[0], flat_dim)
                e_i[:, i] = 1
                (vjp,) = torch.autograd.grad(out, x_in, e_i.reshape(out.shape), retain_graph=True,
                                             create_graph=create_graph)
                div = div + vjp.reshape(x.shape[0], flat_dim)[:, i]
        else:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for eps in probes:
                (vjp,) = torch.autograd.grad(out, x_in, eps, retain_graph=True, create_graph=create_graph)
                div = div + (vjp * eps).reshape(x.shape[0], -1).sum(1)
            div = div / probes.shape[0]
    if not create_graph:
        out, div = out.detach(), div.detach()
    return out, div


class _AugmentedFlow(torch.nn.Module):
    """``(dy/dlam, dl/dlam) = (u(y, lam), div_y u(y, lam))`` for ``torchdiffeq.odeint`` on the tuple state."""

    def __init__(self, model: ScoreModel, probes: Tensor | None, create_graph: bool, t_range: tuple[float, float]):
        super().__init__()
        self.model = model
        self.flow = ProbabilityFlowODE(model.sde, model.score, t_range=t_range)
        self.probes = probes
        self.create_graph = create_graph

    def forward(self, lam: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0]
        return divergence(lambda y_: self.flow.lambda_drift(lam, y_), y, probes=self.probes,
                          create_graph=self.create_graph)


class _FiniteDrift(torch.nn.Module):
    """Records, on the device, the first lambda where the drift or the divergence is not finite, and
    :meth:`check` raises a named error once the solve is over. A NaN network output is caught by the
    model wrapper; this catches finite outputs whose drift or divergence overflows. With ``stop_at_once``
    (an adaptive or scipy solve, which reads its state on the host every step anyway) the first bad
    evaluation stops the solve, instead of letting the solver shrink its step until "underflow in dt";
    a fixed-step solve is not read per call."""

    def __init__(self, flow: torch.nn.Module, stop_at_once: bool):
        super().__init__()
        self.flow = flow
        self.stop_at_once = stop_at_once
        self.bad_lam: Tensor | None = None  # lambda of the first non-finite evaluation (NaN: none yet)
        self.bad_count: Tensor | None = None  # how many drift values were not finite there

    def forward(self, lam: Tensor, state):
        dx, dl = self.flow(lam, state)
        bad = ~torch.isfinite(dx)
        first = (bad.any() | ~torch.isfinite(dl).all())
        if self.bad_lam is None:
            self.bad_lam = torch.full((), math.nan, dtype=torch.float64, device=dx.device)
            self.bad_count = torch.zeros((), dtype=torch.long, device=dx.device)
        first = first & self.bad_lam.isnan()
        self.bad_lam = torch.where(first, lam.detach().to(self.bad_lam), self.bad_lam)
        self.bad_count = torch.where(first, bad.sum(), self.bad_count)
        if self.stop_at_once:
            self.check()
        return dx, dl

    def check(self) -> None:
        """Raise FloatingPointError if any evaluation was not finite (one host read per solve)."""
        if self.bad_lam is not None and not bool(self.bad_lam.isnan()):
            raise FloatingPointError(f"model: the probability-flow drift or its divergence is not finite at "
                                     f"lambda = {float(self.bad_lam):.6g} ({int(self.bad_count)} drift values); "
                                     "the model's outputs overflow there")


# ---------------------------------------------------------------------------------------------
def log_likelihood(model: ScoreModel, x: Tensor, *, t_min: float | None = None, T: float | None = None,
                   estimator: str = "auto", n_probes: int = 1, probe: str = "rademacher",
                   generator: torch.Generator | None = None, backend: str = "torchdiffeq",
                   method: str | None = None, rtol: float = 1e-5, atol: float = 1e-5, options: dict | None = None,
                   prior_log_prob: Callable[[Tensor], Tensor] | None = None, bin_width: float | None = None,
                   dequantize: bool = True, differentiable: bool = False,
                   exact_max_dim: int = EXACT_MAX_DIM, levels: int | None = None) -> LikelihoodResult:
    """log p_{t_min}(x) per sample by integrating the probability-flow ODE of ``model`` from t_min to T.

    Args:
        model: a :class:`~scoresde.models.ScoreModel`; its ``nfe`` counter gives the result's NFE.
        x: points ``(B, *event_shape)``, finite, floating.
        t_min, T: the two ends (default: the SDE's); the result is the density of x_{t_min}.
        estimator: ``'exact'`` (autograd trace), ``'hutchinson'``, or ``'auto'`` (exact up to
            ``exact_max_dim`` dimensions per sample).
        n_probes, probe, generator: Hutchinson's probes (``'rademacher'`` or ``'gaussian'``), drawn
            once from ``generator`` and held fixed along the trajectory. ``generator`` also draws
            the dequantisation noise.
        backend: ``'torchdiffeq'`` (default; ``method`` default ``'dopri5'``, ``options`` passed on;
            the independent variable is lam, so e.g. a fixed-step ``step_size`` is in lam)
            or ``'scipy'`` (``solve_ivp``, method default ``'RK45'``; evaluation only, no gradients).
        rtol, atol: solver tolerances on the augmented state ``(x / alpha, l)``.
        prior_log_prob: log-density of x(T), ``(B, *event) -> (B,)``; default the Gaussian prior
            ``N(0, sigma(T)^2 I)`` at this run's ``T``. Pass the exact log p_T to separate the prior
            mismatch from the ODE error.
        bin_width, dequantize: discrete data on a lattice of spacing ``bin_width`` are dequantised
            uniformly (``x + bin_width * U[0, 1)``) unless ``dequantize=False``.
        levels: instead of ``bin_width``, the number of values of data scaled to [-1, 1] (256 for
            8-bit images, 17 for the digits): the data are checked to lie on that lattice and are
            dequantised over centred cells, ``x + (2/(levels - 1)) (U[0, 1) - 1/2)``.
        differentiable: keep the autograd graph through the solve (torchdiffeq only), e.g. to
            train by maximum likelihood; otherwise every result is detached.
    """
    x = _check_points(x)
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    sde = model.sde
    t_min = sde.t_min if t_min is None else check_finite_number("t_min", t_min, positive=True)
    T = sde.T if T is None else check_finite_number("T", T, positive=True)
    if not t_min < T <= sde.T * (1 + 1e-12):
        raise ValueError(f"t_min/T: need 0 < t_min < T <= sde.T={sde.T}, got t_min={t_min}, T={T}")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: unknown {estimator!r}; allowed: {', '.join(ESTIMATORS)}")
    n_probes = _check_n_probes(n_probes)
    if probe not in PROBES:
        raise ValueError(f"probe: unknown {probe!r}; allowed: {', '.join(PROBES)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown {backend!r}; allowed: {', '.join(BACKENDS)}")
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)
    if differentiable and backend == "scipy":
        raise ValueError("differentiable: the scipy backend is evaluation-only; use backend='torchdiffeq'")
    if bin_width is not None:
        bin_width = check_finite_number("bin_width", bin_width, positive=True)
    if levels is not None:
        if bin_width is not None:
            raise ValueError(f"levels: give levels (data in [-1, 1]) or bin_width (any lattice), not both; "
                             f"got levels={levels!r}, bin_width={bin_width}")
        levels = check_levels(levels)
        check_on_lattice(x, levels, name="x")
        bin_width = 2.0 / (levels - 1)

    dim = x[0].numel()
    if estimator == "auto":
        estimator = "exact" if dim <= exact_max_dim else "hutchinson"
    points = x
    if bin_width is not None and dequantize:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype,
                       device=generator.device if generator is not None else x.device)
        # levels: the cell centred on each value (the decoder's bins); bin_width: the value is the lower corner
        points = x + bin_width * (u.to(x.device) - (0.5 if levels is not None else 0.0))
    probes = draw_probes(points, n_probes, probe, generator) if estimator == "hutchinson" else None

    stop_at_once = backend == "scipy" or is_adaptive(method or "dopri5")
    flow = _FiniteDrift(_AugmentedFlow(model, probes, create_graph=differentiable, t_range=(t_min, T)), stop_at_once)
    ends = torch.tensor([t_min, T], dtype=torch.float64)
    lam, (alpha_min, alpha_T) = sde.lam(ends), sde.alpha(ends)
    nfe0 = model.nfe
    # Two records on the device, each read once after the solve: the model wrapper's (a non-finite network
    # output: a bad model) and the drift's (finite outputs whose drift or divergence overflows)
    watch = FiniteWatch("end")
    try:
        with model.watching(watch):
            if backend == "torchdiffeq":
                y_T, integral = _solve_torchdiffeq(flow, points / alpha_min, lam, method or "dopri5", rtol, atol,
                                                   options or {}, differentiable)
            else:
                y_T, integral = _solve_scipy(flow, points / alpha_min, lam, method or "RK45", rtol, atol,
                                             options or {})
    except (AssertionError, RuntimeError, FloatingPointError):  # underflow in dt, scipy's failure, a bad drift:
        failure = watch.read()  # a non-finite network output is the model's fault, named as such
        if failure is not None:
            raise watch.error(failure) from None
        flow.check()
        raise
    failure = watch.read()
    if failure is not None:
        raise watch.error(failure)
    flow.check()
    nfe = model.nfe - nfe0
    latent = alpha_T * y_T
    delta = integral + dim * torch.log(alpha_T / alpha_min)

    with torch.set_grad_enabled(differentiable):
        # the prior at the T this run ends at (sample() draws it there too), not the SDE's
        prior = sde.prior_log_prob(latent, T) if prior_log_prob is None else prior_log_prob(latent)
    if prior.shape != (x.shape[0],):
        raise ValueError(f"prior_log_prob: expected shape ({x.shape[0]},), got {tuple(prior.shape)}")
    prior = prior.to(delta.dtype)
    return LikelihoodResult(
        log_likelihood=prior + delta, prior_log_prob=prior, delta_log_p=delta, latent=latent, points=points,
        nfe=nfe, dim=dim, t_min=float(t_min), T=float(T), estimator=estimator,
        n_probes=n_probes if estimator == "hutchinson" else 0, backend=backend, bin_width=bin_width,
        dequantized=bin_width is not None and dequantize,
    )


def _solve_torchdiffeq(flow, y, lam, method, rtol, atol, options, differentiable):
    """``(y, l)`` at ``lam[1]`` from ``(y, 0)`` at ``lam[0]``."""
    state0 = (y, torch.zeros(y.shape[0], dtype=y.dtype, device=y.device))
    with torch.set_grad_enabled(differentiable):
        ys, ls = odeint_in_lam(flow, state0, lam, method=method, rtol=rtol, atol=atol, options=options)
    return ys[-1], ls[-1]


def _solve_scipy(flow, y, lam, method, rtol, atol, options):
    """``(y, l)`` at ``lam[1]`` by ``solve_ivp`` on the flattened float64 state; evaluation only."""
    state0 = (y, torch.zeros(y.shape[0], dtype=y.dtype, device=y.device))
    sol, unflatten = solve_ivp(flow, state0, (float(lam[0]), float(lam[1])), method=method, rtol=rtol, atol=atol,
                               **options)
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
    return unflatten(sol.y[:, -1])


def _check_points(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"x: expected a tensor of points (B, *event_shape), got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}; convert discrete data to float "
                         "and give bin_width")
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x: expected shape (B, *event_shape) with B >= 1, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x: expected float32 or float64 points, got {x.dtype} (an adaptive solve in half "
                         "precision cannot reach its tolerance); convert with x.float()")
    if not torch.isfinite(x).all():
        raise ValueError(f"x: contains {int((~torch.isfinite(x)).sum())} non-finite values")
    return x


def _check_n_probes(n_probes) -> int:
    if isinstance(n_probes, bool) or not isinstance(n_probes, int | float) or int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes: expected an integer >= 1, got {n_probes!r}")
    return int(n_probes)
