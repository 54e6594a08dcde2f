r"""Is a model smooth at the scale of a solver's steps? Its spectrum along lambda, and the local order.

A solver of order p assumes the model output ``F(x, lambda)`` has bounded derivatives up to order p
at the scale of the steps ``h = lambda_{i+1} - lambda_i`` (the exponential integrators step in the
half log-SNR exactly). A network whose time features oscillate faster than ``1 / h`` breaks that
assumption and the measured order collapses (issue 18: sinusoidal features at scale 100 on lambda,
period 0.063, against 64 steps about 0.15 apart). Two measurements tell:

* :func:`lambda_spectrum`: ``F(x, lambda)`` at fixed ``x`` on a uniform lambda grid over the SDE's
  range, linearly detrended and Hann-windowed, then the FFT along lambda; the amplitude at angular
  frequency ``omega = 2 pi k / (n d lambda)`` (rad per unit lambda) is ``2 |F_k| / sum(window)``,
  the root mean square over the samples and output components. :meth:`Spectrum.band_rows` sums it
  over frequency bands. A smooth model's spectrum decays fast; a rough one keeps amplitude above
  ``pi / h`` (the highest frequency a grid of step h can follow).
* :func:`local_slopes`: the slope of ``log error`` against ``log steps`` between consecutive step
  counts (the :func:`~.orders.loglog_fit` of each pair), and :func:`order_profile`, the endpoint error
  of fixed-step samplers against a tight probability-flow reference (:func:`~.references.reference_pf_ode`)
  with those slopes: on a smooth model they approach the declared order; on a rough one they fall.

:func:`plot_smoothness` draws both from data and returns a Figure.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models import PARAMETERIZATIONS, ScoreModel
from .distances import endpoint_error
from .orders import loglog_fit
from .references import reference_pf_ode

__all__ = ["Spectrum", "lambda_spectrum", "local_slopes", "order_profile", "plot_smoothness", "DEFAULT_BANDS"]

#: band edges in rad per unit lambda: below EDM's 1/4, the smooth embedding's 1, the issue's 3, ...
DEFAULT_BANDS = (0.0, 1.0, 3.0, 10.0, 30.0, 80.0, math.inf)


@dataclass
class Spectrum:
    """Amplitude of the model output along lambda per angular frequency (rad per unit lambda)."""

    omega: Tensor
    amplitude: Tensor
    lam: Tensor
    output: str
    bands: tuple[float, ...] = DEFAULT_BANDS

    def band_amplitude(self, lo: float, hi: float) -> float:
        """Root of the summed squared amplitude of the frequencies in ``[lo, hi)`` (0 when none)."""
        mask = (self.omega >= lo) & (self.omega < hi)
        return float(self.amplitude[mask].square().sum().sqrt())

    def band_rows(self) -> list[dict]:
        return [{"output": self.output, "omega_lo": lo, "omega_hi": hi, "amplitude": self.band_amplitude(lo, hi)}
                for lo, hi in zip(self.bands[:-1], self.bands[1:], strict=True)]

    def rows(self) -> list[dict]:
        return [{"output": self.output, "omega": float(w), "amplitude": float(a)}
                for w, a in zip(self.omega, self.amplitude, strict=True)]


def lambda_spectrum(model: ScoreModel, x: Tensor, *, n: int = 2048, output: str = "eps",
                    lam_range: tuple[float, float] | None = None, bands: Sequence[float] = DEFAULT_BANDS,
                    batch: int = 256) -> Spectrum:
    """The spectrum of ``model.<output>(x, t(lambda))`` along a uniform lambda grid at fixed ``x``.

    Args:
        model: the score model (its SDE gives lambda and its inverse).
        x: ``(B, *event)`` fixed points at which the output is followed along lambda.
        n: grid points (Nyquist frequency ``pi / d lambda``).
        output: which prediction to follow (``scoresde.PARAMETERIZATIONS``; ``eps`` is what the
            exponential integrators extrapolate).
        lam_range: the lambda interval (default: the SDE's, ``lambda(T)`` to ``lambda(t_min)``).
        bands: increasing band edges for :meth:`Spectrum.band_rows`.
        batch: grid points per model call (each call evaluates ``batch * B`` inputs).
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if not isinstance(x, Tensor) or x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating-point tensor (B, *event), got "
                         f"{type(x).__name__}{tuple(x.shape) if isinstance(x, Tensor) else ''}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 16:
        raise ValueError(f"n: expected an integer >= 16, got {n!r}")
    if output not in PARAMETERIZATIONS:
        raise ValueError(f"output: unknown {output!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    bands = tuple(float(b) for b in bands)
    if len(bands) < 2 or any(b >= c for b, c in zip(bands[:-1], bands[1:], strict=True)):
        raise ValueError(f"bands: expected at least two increasing edges, got {list(bands)}")
    sde = model.sde
    if lam_range is None:
        ends = sde.lam(torch.tensor([float(sde.T), float(sde.t_min)], dtype=torch.float64))
        lam_range = (float(ends[0]), float(ends[1]))
    lo, hi = (float(v) for v in lam_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"lam_range: expected finite (lo, hi) with lo < hi, got {lam_range!r}")

    lam = torch.linspace(lo, hi, n, dtype=torch.float64)
    t = sde.t_of_lam(lam).clamp(float(sde.t_min), float(sde.T))
    B = x.shape[0]
    outs = []
    with torch.no_grad():
        for chunk in t.split(batch):
            xs = x.unsqueeze(0).expand(len(chunk), *x.shape).reshape(len(chunk) * B, *x.shape[1:])
            ts = chunk.to(x.dtype).repeat_interleave(B)
            outs.append(getattr(model, output)(xs, ts).reshape(len(chunk), B, -1))
    f = torch.cat(outs).double().reshape(n, -1)  # (n, B * D)
    # detrend (the ends differ, a jump for the periodic FFT) and window (leakage into high frequencies)
    s = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)[:, None]
    slope = (f * s).sum(0) / s.square().sum()
    f = f - f.mean(0) - s * slope
    window = torch.hann_window(n, periodic=False, dtype=torch.float64)[:, None]
    F = torch.fft.rfft(f * window, dim=0)
    amplitude = (2 * F.abs() / window.sum()).square().mean(1).sqrt()
    omega = 2 * math.pi * torch.fft.rfftfreq(n, d=(hi - lo) / (n - 1), dtype=torch.float64)
    return Spectrum(omega, amplitude, lam, output, bands)


def local_slopes(steps: Sequence[int], errors: Sequence[float]) -> list[float]:
    """``-slope`` of log error against log steps between each pair of consecutive step counts (the local order)."""
    if len(steps) != len(errors) or len(steps) < 2:
        raise ValueError(f"errors: expected one error per step count (at least two), got {len(errors)} for "
                         f"{len(steps)} step counts")
    return [loglog_fit(steps[i:i + 2], errors[i:i + 2]).order for i in range(len(steps) - 1)]


@dataclass
class OrderProfile:
    """Endpoint errors of fixed-step samplers against one tight reference, with their local slopes."""

    steps: list[int]
    errors: dict[str, list[float]]
    reference: object
    slopes: dict[str, list[float]] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        rows = []
        for method, errs in self.errors.items():
            for i, (k, e) in enumerate(zip(self.steps, errs, strict=True)):
                rows.append({"method": method, "steps": k, "error": e,
                             "local_slope": self.slopes[method][i - 1] if i else float("nan")})
        return rows


def order_profile(model: ScoreModel, methods: Sequence[str], steps: Sequence[int], x_T: Tensor, *,
                  tol: float = 1e-10, solver: str = "dopri8", grid=None) -> OrderProfile:
    """Endpoint error against steps for each method from ``x_T`` at T to t_min, against a tight
    probability-flow reference (:func:`~.references.reference_pf_ode` in lambda, rtol = atol = ``tol``),
    with the local slopes (:func:`local_slopes`); ``grid`` as in :func:`scoresde.sample` (None: the SDE's default)."""
    from ..samplers import sample
    from .method_specs import parse_methods

    sde = model.sde
    steps = [int(k) for k in steps]
    specs = parse_methods(list(methods))  # 'unipc:order=3' and the like, checked before any work
    ref = reference_pf_ode(model, x_T, float(sde.T), float(sde.t_min), tol=tol, solver=solver)
    errors: dict[str, list[float]] = {}
    for m in specs:
        errors[m.label] = [endpoint_error(sample(model, sde, m.name, k, x_T=x_T, grid=grid, **m.opts).samples, ref.x)
                           for k in steps]
    return OrderProfile(steps, errors, ref, {m: local_slopes(steps, e) for m, e in errors.items()})


def plot_smoothness(spectra: dict[str, Spectrum], profile: OrderProfile | None = None, *, title: str | None = None):
    """Left: amplitude against frequency along lambda for each labelled spectrum (log-log); right (with a
    profile): endpoint error against steps per method, local slopes in the legend. Returns the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11 if profile is not None else 6, 4.2))
    axes = fig.subplots(1, 2 if profile is not None else 1, squeeze=False)[0]
    ax = axes[0]
    for label, sp in spectra.items():
        keep = sp.omega > 0
        ax.loglog(sp.omega[keep].numpy(), sp.amplitude[keep].clamp_min(1e-300).numpy(), label=label, lw=1)
    ax.set_xlabel("angular frequency along lambda (rad per unit lambda)")
    ax.set_ylabel(f"amplitude of {next(iter(spectra.values())).output if spectra else 'output'}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    if profile is not None:
        ax = axes[1]
        for method, errs in profile.errors.items():
            slopes = ", ".join(f"{s:.2f}" for s in profile.slopes[method])
            ax.loglog(profile.steps, errs, "o-", label=f"{method} (local slopes {slopes})")
        ax.set_xlabel("steps")
        ax.set_ylabel("endpoint error vs reference")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
