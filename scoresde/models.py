r"""One wrapper turns whatever a network predicts into every parameterisation, and counts its calls.

With ``x = alpha x0 + sigma eps`` (alpha, sigma of the SDE at t):

* ``score = -eps / sigma``
* ``x0    = (x - sigma eps) / alpha``
* ``v     = alpha eps - sigma x0`` (Salimans & Ho 2022, for any alpha, sigma)
* ``velocity = alpha' x0 + sigma' eps`` (the flow-matching target d x_t / dt)

Inverting ``v``: ``x0 = (alpha x - sigma v)/(alpha^2 + sigma^2)``,
``eps = (sigma x + alpha v)/(alpha^2 + sigma^2)``. Inverting ``velocity``: solve the 2x2 system
``[alpha sigma; alpha' sigma'] [x0; eps] = [x; u]``.

Every call of the wrapped function increments :attr:`ScoreModel.nfe`, so samplers never count
evaluations by hand (cf. scipy's ``OdeSolver.nfev``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._tensor import append_dims, batch_time
from .sde import SDE

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "velocity")
TIME_CONVENTIONS = ("continuous", "discrete")

__all__ = ["ScoreModel", "PARAMETERIZATIONS", "TIME_CONVENTIONS", "NonFiniteModelOutput"]


class NonFiniteModelOutput(FloatingPointError):
    """The network itself returned NaN or inf (as opposed to a sampler's state becoming non-finite)."""


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
    (``TypeError`` / ``ValueError`` otherwise) and finite (:class:`NonFiniteModelOutput`, a
    ``FloatingPointError``, naming the model and the time otherwise).

    The views :meth:`score`, :meth:`eps`, :meth:`x0`, :meth:`v`, :meth:`velocity` each cost one call;
    :meth:`predict` returns the raw output once so a sampler that needs two views pays one call.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, parameterization: str = "eps",
                 *, time_input: str | Callable[[Tensor], Tensor] = "continuous"):
        if not callable(fn):
            raise ValueError(f"fn: expected a callable fn(x, t), got {type(fn).__name__}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde: expected an instance of scoresde.SDE, got {type(sde).__name__}")
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
        """Raw network output in the model's own parameterisation (one counted call)."""
        t = batch_time(t, x)
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
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteModelOutput(f"the model {self.fn_name} returned NaN/inf at t = {_describe_time(t)}")
        return out

    # ----- conversions (pure, no model call) ---------------------------------------------------
    def _time(self, x: Tensor, t) -> Tensor:
        """A per-sample time becomes ``(B,)`` broadcast over x; a scalar time a 0-d float64 CPU tensor,
        which combines with x on any device without changing x's dtype."""
        if isinstance(t, Tensor) and t.ndim > 0:
            return append_dims(batch_time(t, x), x.ndim)
        return torch.as_tensor(t, dtype=torch.float64).cpu()

    def _coeffs(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t), broadcastable against x."""
        return self.sde.alpha_sigma(self._time(x, t))

    def to_eps(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the noise prediction."""
        p = self.parameterization
        if p == "eps":
            return out
        alpha, sigma = self._coeffs(x, t)
        if p == "score":
            return -sigma * out
        if p == "x0":
            return (x - alpha * out) / sigma
        if p == "v":
            return (sigma * x + alpha * out) / (alpha**2 + sigma**2)
        # velocity u = alpha' x0 + sigma' eps, with alpha' = f alpha
        dalpha, dsigma = self._rates(x, t, alpha)
        return (alpha * out - dalpha * x) / (alpha * dsigma - sigma * dalpha)

    def to_x0(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the data prediction."""
        p = self.parameterization
        if p == "x0":
            return out
        alpha, sigma = self._coeffs(x, t)
        if p == "v":
            return (alpha * x - sigma * out) / (alpha**2 + sigma**2)
        if p == "velocity":
            dalpha, dsigma = self._rates(x, t, alpha)
            return (dsigma * x - sigma * out) / (alpha * dsigma - sigma * dalpha)
        return (x - sigma * self.to_eps(out, x, t)) / alpha

    def to_score(self, out: Tensor, x: Tensor, t) -> Tensor:
        """Convert a raw output ``out`` at (x, t) to the score ``-eps / sigma``."""
        if self.parameterization == "score":
            return out
        _, sigma = self._coeffs(x, t)
        return self.to_eps(out, x, t) / -sigma

    def _rates(self, x: Tensor, t, alpha: Tensor) -> tuple[Tensor, Tensor]:
        t = self._time(x, t)
        return alpha * self.sde.f(t), self.sde.dsigma_dt(t)

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
        out = self.predict(x, t)
        if self.parameterization == "v":
            return out
        alpha, sigma = self._coeffs(x, t)
        eps = self.to_eps(out, x, t)
        return alpha * eps - sigma * (x - sigma * eps) / alpha

    def velocity(self, x: Tensor, t) -> Tensor:
        """Flow-matching velocity alpha' x0 + sigma' eps, which is the probability-flow drift."""
        out = self.predict(x, t)
        if self.parameterization == "velocity":
            return out
        alpha, sigma = self._coeffs(x, t)
        dalpha, dsigma = self._rates(x, t, alpha)
        eps = self.to_eps(out, x, t)
        return dalpha * (x - sigma * eps) / alpha + dsigma * eps

    __call__ = score


def _describe_time(t: Tensor) -> str:
    t = t.detach()
    lo, hi = float(t.min()), float(t.max())
    return f"{lo:.6g}" if lo == hi else f"{lo:.6g} .. {hi:.6g} (per sample)"
