r"""One wrapper turns whatever a network predicts into every parameterisation, and counts its calls.

With ``x = alpha x0 + sigma eps`` (alpha, sigma of the SDE at t):

* ``score = -eps / sigma``
* ``x0    = (x - sigma eps) / alpha``
* ``v     = alpha eps - sigma x0`` (Salimans & Ho 2022, for any alpha, sigma)
* ``velocity = alpha' x0 + sigma' eps`` (the flow-matching target d x_t / dt)

Inverting ``v``: ``x0 = (alpha x - sigma v)/(alpha^2 + sigma^2)``,
``eps = (sigma x + alpha v)/(alpha^2 + sigma^2)``. Inverting ``velocity``: solve the 2x2 system
``[alpha sigma; alpha' sigma'] [x0; eps] = [x; u]``.

These formulas are written once, as the tables :data:`TO_EPS`, :data:`TO_X0` and :data:`FROM_PAIR` of pure
functions of ``(output, x, coefficients)`` with the SDE's :class:`~scoresde.sde.Coefficients` record;
the wrapper, the EDM preconditioner and the losses all use them.

Every call of the wrapped function increments :attr:`ScoreModel.nfe`, so samplers never count
evaluations by hand (cf. scipy's ``OdeSolver.nfev``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._tensor import append_dims, batch_time
from .checks import FiniteWatch, NonFiniteModelOutput
from .sde import SDE, Coefficients

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "velocity")
TIME_CONVENTIONS = ("continuous", "discrete")

__all__ = ["ScoreModel", "PARAMETERIZATIONS", "TIME_CONVENTIONS", "NonFiniteModelOutput", "TO_EPS", "TO_X0",
           "FROM_PAIR"]


# ----- the conversion table: pure functions of (output, x, coefficients) ---------------------------
# ``c`` is an :class:`~scoresde.sde.Coefficients` record whose tensors broadcast against x.
def _velocity_det(c: Coefficients) -> Tensor:
    # the determinant of [alpha sigma; alpha' sigma'], which maps (x0, eps) to (x, velocity)
    return c.alpha * c.d_sigma - c.sigma * c.d_alpha


#: raw output in each parameterisation -> the noise prediction eps
TO_EPS: dict[str, Callable[[Tensor, Tensor, Coefficients], Tensor]] = {
    "eps": lambda out, x, c: out,
    "score": lambda out, x, c: -c.sigma * out,
    "x0": lambda out, x, c: (x - c.alpha * out) / c.sigma,
    "v": lambda out, x, c: (c.sigma * x + c.alpha * out) / (c.alpha**2 + c.sigma**2),
    "velocity": lambda out, x, c: (c.alpha * out - c.d_alpha * x) / _velocity_det(c),
}

#: raw output in each parameterisation -> the data prediction x0 (eps and score go through eps)
TO_X0: dict[str, Callable[[Tensor, Tensor, Coefficients], Tensor]] = {
    "x0": lambda out, x, c: out,
    "v": lambda out, x, c: (c.alpha * x - c.sigma * out) / (c.alpha**2 + c.sigma**2),
    "velocity": lambda out, x, c: (c.d_sigma * x - c.sigma * out) / _velocity_det(c),
    "eps": lambda out, x, c: (x - c.sigma * out) / c.alpha,
    "score": lambda out, x, c: (x - c.sigma * TO_EPS["score"](out, x, c)) / c.alpha,
}

#: a consistent pair (x0, eps) -> the prediction in each parameterisation
FROM_PAIR: dict[str, Callable[[Tensor, Tensor, Coefficients], Tensor]] = {
    "eps": lambda x0, eps, c: eps,
    "x0": lambda x0, eps, c: x0,
    "score": lambda x0, eps, c: -eps / c.sigma,
    "v": lambda x0, eps, c: c.alpha * eps - c.sigma * x0,
    "velocity": lambda x0, eps, c: c.d_alpha * x0 + c.d_sigma * eps,
}


class ScoreModel:
    """Wrap ``fn(x, t)`` that predicts one of ``'score'``, ``'eps'``, ``'x0'``, ``'v'``, ``'velocity'``.

    ``time_input`` says what ``fn`` receives as its time, always a ``(B,)`` tensor with ``x``'s dtype
    computed from the continuous time ``t`` of the SDE:

    * ``'continuous'``: ``t`` itself;
    * ``'discrete'``: the step index ``N t - 1`` of a :class:`~scoresde.sde.DiscreteVPSDE` (a DDPM-trained
      network's ``0 .. N-1``);
    * a callable ``t -> network time`` for any other convention, e.g. score_sde's VP networks
      (``lambda t: 999 * t``), its VE networks (``lambda t: sde.sigma(t)``), or integer snapping
      (``lambda t: (sde.N * t - 1).round()``).

    Each call of ``fn`` is counted in :attr:`nfe`; its output must be a tensor shaped like ``x``
    (``TypeError`` / ``ValueError`` otherwise; shapes are host metadata, no sync) and finite: inside a
    run (:func:`~scoresde.sample`, the likelihood) the run's :class:`~scoresde.checks.FiniteWatch` records a
    non-finite output on the device and the run reports it once at its end; a direct call checks at once
    (:class:`NonFiniteModelOutput`, a ``FloatingPointError``, naming the model and the time).

    The views :meth:`score`, :meth:`eps`, :meth:`x0`, :meth:`v`, :meth:`velocity` each cost one call;
    :meth:`predict` returns the raw output once so a sampler that needs two views pays one call.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, parameterization: str = "eps",
                 *, time_input: str | Callable[[Tensor], Tensor] = "continuous"):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable fn(x, t), got {type(fn).__name__}")
        if not isinstance(sde, SDE):
            raise TypeError(f"sde: expected an instance of scoresde.SDE, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
        if not callable(time_input) and time_input not in TIME_CONVENTIONS:
            raise ValueError(f"time_input: unknown {time_input!r}; allowed: {', '.join(TIME_CONVENTIONS)} "
                             "or a callable mapping the continuous time t to the network's time input")
        if time_input == "discrete" and not hasattr(sde, "discrete_time"):
            raise ValueError(f"time_input='discrete' needs an SDE with discrete_time (DiscreteVPSDE), got {sde!r}")
        self.fn = fn
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.nfe = 0
        self._watch: FiniteWatch | None = None

    def __repr__(self) -> str:
        return f"ScoreModel(parameterization={self.parameterization!r}, sde={self.sde!r}, nfe={self.nfe})"

    def reset_nfe(self) -> int:
        """Zero the evaluation counter; return the count it had."""
        n, self.nfe = self.nfe, 0
        return n

    @property
    def fn_name(self) -> str:
        """A readable name of the wrapped network, for messages."""
        return getattr(self.fn, "__qualname__", None) or type(self.fn).__name__

    # ----- the one place the network is called ------------------------------------------------
    def network_time(self, t: Tensor) -> Tensor:
        """The network's time input for the continuous times ``t`` (see ``time_input``)."""
        if self.time_input == "continuous":
            return t
        if self.time_input == "discrete":
            return self.sde.discrete_time(t)
        return self.time_input(t)

    def predict(self, x: Tensor, t) -> Tensor:
        """Raw network output in the model's own parameterisation (one counted call).

        Its finiteness is told to the run's :class:`~scoresde.checks.FiniteWatch` (see :meth:`watching`),
        which records it on the device; without one (a direct call) it is checked at once.
        """
        t = _network_batch_time(t, x)
        _check_network_dtype(self.fn, x)
        self.nfe += 1
        out = self.fn(x, self.network_time(t))
        if not isinstance(out, Tensor):
            hint = ""
            if hasattr(out, "sample"):
                hint = (" with a .sample attribute (a diffusers output such as UNet2DOutput): return its .sample "
                        "(fn = lambda x, t: unet(x, t).sample) or wrap the network with scoresde.interop.from_diffusers")
            raise TypeError(f"fn: returned {type(out).__module__}.{type(out).__qualname__}{hint}; "
                            f"expected a torch.Tensor shaped like x {tuple(x.shape)}")
        if out.shape != x.shape:
            raise ValueError(f"fn: output shape {tuple(out.shape)} differs from input shape {tuple(x.shape)}")
        (self._watch or _CHECK_NOW).output(out, t, self.fn_name)
        return out

    def watching(self, watch: FiniteWatch | None) -> _Watching:
        """``with model.watching(watch):`` tell ``watch`` every output instead of checking each one at once."""
        return _Watching(self, watch)

    # ----- conversions (pure, no model call) ---------------------------------------------------
    def _time(self, x: Tensor, t) -> Tensor:
        """A per-sample time becomes ``(B,)`` broadcast over x; a scalar time a 0-d float64 tensor (on the
        CPU for a number, where it combines with x on any device without changing x's dtype; on its own
        device for a device tensor, which is never read on the host)."""
        if isinstance(t, Tensor) and t.ndim > 0:
            return append_dims(batch_time(t, x), x.ndim)
        return torch.as_tensor(t, dtype=torch.float64)

    def coefficients(self, x: Tensor, t) -> Coefficients:
        """The SDE's coefficients at t, broadcastable against x (unchecked: t comes from a checked run)."""
        return self.sde._coefficients(self._time(x, t))

    def to_eps(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the noise prediction."""
        if self.parameterization == "eps":
            return out
        return TO_EPS[self.parameterization](out, x, self.coefficients(x, t))

    def to_x0(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the data prediction."""
        if self.parameterization == "x0":
            return out
        return TO_X0[self.parameterization](out, x, self.coefficients(x, t))

    def to_score(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the score ``-eps / sigma``."""
        if self.parameterization == "score":
            return out
        c = self.coefficients(x, t)
        return TO_EPS[self.parameterization](out, x, c) / -c.sigma

    def convert(self, out: Tensor, x: Tensor, t, to: str) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the parameterisation ``to`` (one of :data:`PARAMETERIZATIONS`)."""
        if to == self.parameterization:
            return out
        c = self.coefficients(x, t)
        eps = TO_EPS[self.parameterization](out, x, c)
        return FROM_PAIR[to](TO_X0["eps"](eps, x, c), eps, c)

    # ----- the views -------------------------------------------------------------------------
    def eps(self, x: Tensor, t) -> Tensor:
        """Noise prediction eps(x, t)."""
        return self.to_eps(self.predict(x, t), x, t)

    def score(self, x: Tensor, t) -> Tensor:
        """Score s(x, t) = -eps / sigma."""
        return self.to_score(self.predict(x, t), x, t)

    def x0(self, x: Tensor, t) -> Tensor:
        """Data prediction (Tweedie's denoiser) x0(x, t)."""
        return self.to_x0(self.predict(x, t), x, t)

    def v(self, x: Tensor, t) -> Tensor:
        """v prediction alpha eps - sigma x0."""
        return self.convert(self.predict(x, t), x, t, "v")

    def velocity(self, x: Tensor, t) -> Tensor:
        """Flow-matching velocity alpha' x0 + sigma' eps, which is the probability-flow drift."""
        return self.convert(self.predict(x, t), x, t, "velocity")

    __call__ = score


class _Watching:
    def __init__(self, model: ScoreModel, watch: FiniteWatch | None):
        self.model, self.watch = model, watch

    def __enter__(self):
        self.saved, self.model._watch = self.model._watch, self.watch
        return self.watch

    def __exit__(self, *exc):
        self.model._watch = self.saved
        return False


#: what a direct call (no run watching) does: check each output at once
_CHECK_NOW = FiniteWatch("step")


def _network_batch_time(t, x: Tensor) -> Tensor:
    """The ``(B,)`` time handed to the network, in x's dtype on x's device.

    A number or a CPU scalar (a grid time) is written on the device with ``torch.full``, which passes
    the value as a kernel argument: no host-to-device copy per call. A tensor that carries a graph
    (``sample(grad=True)`` with a grid tensor) is copied, so that the gradient reaches the grid.
    """
    if isinstance(t, Tensor) and t.ndim == 0 and t.device.type == "cpu" and x.device.type != "cpu" \
            and not t.requires_grad:
        return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
    return batch_time(t, x)


def _check_network_dtype(fn, x: Tensor) -> None:
    """A network module whose weights are of another floating dtype than x would fail deep inside with
    "mat1 and mat2 must have the same dtype": name it here (metadata only, no host read)."""
    if not isinstance(fn, torch.nn.Module) or not x.is_floating_point():
        return
    weight = next((p for p in fn.parameters() if p.is_floating_point()), None)
    if weight is not None and weight.dtype != x.dtype:
        raise TypeError(f"x: dtype {x.dtype} differs from the network's weights ({weight.dtype}); cast the data "
                        f"(x.to({weight.dtype})) or the network (model.fn.to({x.dtype}))")
