r"""The log-log slope fitter: the empirical order of convergence from errors at several step counts.

A method of global order p has ``E_N ~ C N^{-p}``, so ``log E_N = log C - p log N`` and the
least-squares slope of ``log E`` against ``log N`` estimates ``-p`` (diffrax's ``test_ode_order``;
Hairer, Norsett & Wanner, *Solving ODEs I*, II.4). The fit is only honest in the asymptotic range,
where the leading error term dominates and the errors stay well above the reference's own error.

* :func:`loglog_fit`: the fit over the points given (scipy's ``linregress``), with its standard error;
* :func:`fit_order`: the fit over the asymptotic range a study measured (the largest step counts whose
  error is well above a floor), or None when too few points qualify;
* :func:`empirical_order`: ``-slope`` over all points given, for tests that chose their step counts;
* :func:`median_order`: the median over a batch of per-sample orders, for batches in which a few
  samples leave the asymptotic range later than the rest.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["OrderFit", "loglog_fit", "fit_order", "empirical_order", "median_order"]


@dataclass
class OrderFit:
    """Log-log slope of error against steps (``slope``, about ``-order``) and its standard error."""

    slope: float
    stderr: float
    intercept: float
    steps_used: list[int] = field(default_factory=list)

    @property
    def order(self) -> float:
        return -self.slope


def loglog_fit(steps: Sequence[float], errors: Sequence[float]) -> OrderFit:
    """Least squares ``log error = intercept + slope log steps`` over every point given.

    Needs at least two points with positive, finite errors and two distinct step counts.
    """
    from scipy.stats import linregress

    n = np.asarray(steps, dtype=float)
    e = np.asarray(errors, dtype=float)
    if n.ndim != 1 or n.shape != e.shape or n.size < 2:
        raise ValueError(f"errors: expected one error per step count (at least two), got {e.size} errors for "
                         f"{n.size} step counts")
    if not (np.isfinite(e).all() and (e > 0).all()):
        raise ValueError(f"errors: expected positive finite errors, got {e.tolist()}")
    if not (np.isfinite(n).all() and (n > 0).all()) or len(set(n.tolist())) < 2:
        raise ValueError(f"steps: expected at least two distinct positive step counts, got {n.tolist()}")
    fit = linregress(np.log(n), np.log(e))
    return OrderFit(float(fit.slope), float(fit.stderr), float(fit.intercept), [int(v) for v in n])


def fit_order(steps: Sequence[int], errors: Sequence[float], *, floor: float = 0.0,
              min_points: int = 3, max_points: int = 4) -> OrderFit | None:
    """:func:`loglog_fit` over the asymptotic range of a measured sequence.

    The asymptotic range is the (up to ``max_points``) largest step counts whose error stays above
    ``10 * floor`` (the reference's own error: near it the differences measure the reference,
    not the sampler). Returns None when fewer than ``min_points`` points qualify.
    """
    pts = [(n, e) for n, e in zip(steps, errors, strict=True) if math.isfinite(e) and e > max(10 * floor, 1e-300)]
    pts = pts[-max_points:]
    if len(pts) < max(min_points, 2):
        return None
    return loglog_fit([n for n, _ in pts], [e for _, e in pts])


def empirical_order(steps: Sequence[float], errors: Sequence[float]) -> float:
    """``-slope`` of :func:`loglog_fit` over every point given: the measured order of convergence."""
    return loglog_fit(steps, errors).order


def median_order(steps: Sequence[float], errors) -> float:
    """The median over samples of each sample's :func:`empirical_order`.

    ``errors`` has one row per step count and one column per sample (shape ``(len(steps), B)``).
    """
    e = np.asarray(errors, dtype=float)
    if e.ndim != 2 or e.shape[0] != len(steps):
        raise ValueError(f"errors: expected shape (len(steps)={len(steps)}, batch), got {e.shape}")
    return float(np.median([empirical_order(steps, e[:, b]) for b in range(e.shape[1])]))
