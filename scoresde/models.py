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

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from ._tensor import append_dims, batch_time
from .sde import SDE

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "velocity")
TIME_INPUTS = ("continuous", "discrete")

__all__ = ["ScoreModel", "PARAMETERIZATIONS"]


class ScoreModel:
    """Wrap ``fn(x, t)`` that predicts one of ``'score'``, ``'eps'``, ``'x0'``, ``'v'``, ``'velocity'``.

    ``fn`` receives ``t`` as a ``(B,)`` tensor with ``x``'s dtype. With ``time_input='discrete'``
    (for networks trained on a :class:`~scoresde.sde.DiscreteVPSDE`'s N steps) it receives the
    step index ``N t - 1`` instead.

    The views :meth:`score`, :meth:`eps`, :meth:`x0`, :meth:`v`, :meth:`velocity` each cost one call;
    :meth:`predict` returns the raw output once so a sampler that needs two views pays one call.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], sde: SDE, parameterization: str = "eps",
                 *, time_input: str = "continuous"):
        if not callable(fn):
            raise ValueError(f"fn: expected a callable fn(x, t), got {type(fn).__name__}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde: expected an instance of scoresde.SDE, got {type(sde).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"time_input: unknown {time_input!r}; allowed: {', '.join(TIME_INPUTS)}")
        if time_input == "discrete" and not hasattr(sde, "discrete_time"):
            raise ValueError(f"time_input='discrete' needs an SDE with discrete_time (DiscreteVPSDE), got {sde!r}")
        self.fn = fn
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.nfe = 0
        self._table: dict[float, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"ScoreModel(parameterization={self.parameterization!r}, sde={self.sde!r}, nfe={self.nfe})"

    def reset_nfe(self) -> int:
        """Zero the evaluation counter; return the count it had."""
        n, self.nfe = self.nfe, 0
        return n

    # ----- the one place the network is called ------------------------------------------------
    def predict(self, x: Tensor, t) -> Tensor:
        """Raw network output in the model's own parameterisation (one counted call)."""
        # a number (the samplers' common case) is filled in directly: half the time of batch_time's 0-d
        # tensor and expand
        t = x.new_full((x.shape[0],), float(t)) if isinstance(t, (int, float)) else batch_time(t, x)
        t_in = self.sde.discrete_time(t) if self.time_input == "discrete" else t
        self.nfe += 1
        out = self.fn(x, t_in)
        if out.shape != x.shape:
            raise ValueError(f"fn: output shape {tuple(out.shape)} differs from input shape {tuple(x.shape)}")
        return out

    # ----- conversions (pure, no model call) ---------------------------------------------------
    def _time(self, x: Tensor, t) -> Tensor:
        """A scalar time stays a 0-d tensor (the samplers' common case: coefficients cost a few scalar
        ops, not a pass over the batch); a per-sample time becomes ``(B,)`` broadcast over x."""
        if isinstance(t, Tensor) and t.ndim > 0:
            return append_dims(batch_time(t, x), x.ndim)
        # 0-d float64 on the CPU: it combines with x on any device without promoting x's dtype
        return torch.as_tensor(t, dtype=torch.float64).detach().cpu()

    def _coeffs(self, x: Tensor, t) -> tuple[Tensor, Tensor] | tuple[float, float]:
        """alpha(t), sigma(t): broadcastable tensors for a per-sample t, Python floats for a scalar t
        (a float64 number combines with x on any device exactly as a 0-d float64 CPU tensor does)."""
        if isinstance(t, Tensor) and t.ndim > 0:
            return self.sde.alpha_sigma(self._time(x, t))
        t = float(t)
        coeffs = self._table.get(t)
        if coeffs is None:
            alpha, sigma = self.sde.alpha_sigma(torch.tensor(t, dtype=torch.float64))
            coeffs = float(alpha), float(sigma)
        return coeffs

    @contextmanager
    def grid(self, times) -> Iterator[ScoreModel]:
        """Within the block, conversions at the (scalar) times of ``times`` look alpha and sigma up.

        :func:`scoresde.sample` wraps every sampler run in it: one vectorised SDE evaluation for the
        grid replaces the dozen 0-d tensor operations (about 25 us on a CPU) that each conversion
        would otherwise spend on alpha(t), sigma(t). Other times are computed as usual.
        """
        times = torch.as_tensor(times, dtype=torch.float64).detach().cpu().flatten()
        alpha, sigma = self.sde.alpha_sigma(times)
        saved = self._table
        self._table = {**saved, **dict(zip(times.tolist(), zip(alpha.tolist(), sigma.tolist(), strict=True),
                                           strict=True))}
        try:
            yield self
        finally:
            self._table = saved

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
        if p == "eps" and isinstance(sigma, float):
            # (x - sigma eps) / alpha in two passes over the batch (the second in place on a fresh tensor)
            return torch.add(x, out, alpha=-sigma).div_(alpha)
        if p == "v":
            return (alpha * x - sigma * out) / (alpha**2 + sigma**2)
        if p == "velocity":
            dalpha, dsigma = self._rates(x, t, alpha)
            return (dsigma * x - sigma * out) / (alpha * dsigma - sigma * dalpha)
        return (x - sigma * self.to_eps(out, x, t)) / alpha

    def _rates(self, x: Tensor, t, alpha: Tensor) -> tuple[Tensor, Tensor]:
        t = self._time(x, t)
        return alpha * self.sde.f(t), self.sde.dsigma_dt(t)

    # ----- the views -------------------------------------------------------------------------
    def eps(self, x: Tensor, t) -> Tensor:
        """Noise prediction eps(x, t)."""
        return self.to_eps(self.predict(x, t), x, t)

    def score(self, x: Tensor, t) -> Tensor:
        """Score s(x, t) = -eps / sigma."""
        out = self.predict(x, t)
        if self.parameterization == "score":
            return out
        _, sigma = self._coeffs(x, t)
        return self.to_eps(out, x, t) / -sigma

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
