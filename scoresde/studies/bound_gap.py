r"""How tight is the variational bound? Its gap to the exact NLL against the number of steps N, on the oracle.

For data from a Gaussian mixture with the exact score, the discrete bound of
:func:`scoresde.bounds.variational_bound` is compared point by point with the exact ``-log p_0(x)``:
the batch mean of ``bound - exact`` and its standard error, for N from 10 to 1000, both reverse
variances, under several SDEs. Beside it, the same gap for the continuous-time bound (the N -> infinity
limit of the posterior-variance bound on the same [t_min, T]) and for the probability-flow ODE
(``-log p_{t_min}`` with the SDE's Gaussian prior: t_min smoothing and prior mismatch only).

Expected (and measured): the bound's gap is positive and shrinks with N (with the posterior variance
towards the continuous limit); the ODE's gap is orders of magnitude smaller (it is not a bound, it is the density).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.ticker
import numpy as np
import torch

from ..bounds import continuous_bound, variational_bound
from ..likelihood import log_likelihood
from ..sde import SDE, VPSDE, CosineVPSDE, SubVPSDE
from ..toy import GaussianMixture
from .output import write_csv

__all__ = ["BoundGap", "bound_gap", "plot_bound_gap", "job_bound_gap", "DEFAULT_STEPS"]

DEFAULT_STEPS = (10, 20, 50, 100, 200, 500, 1000)


@dataclass
class BoundGap:
    """Rows ``{sde, method, N, reverse_variance, gap, se}``: method is 'discrete', 'continuous' or 'pf_ode'."""

    rows: list[dict] = field(default_factory=list)
    n: int = 0
    dim: int = 0

    def select(self, **match) -> list[dict]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in match.items())]


def _paired(diff: torch.Tensor) -> tuple[float, float]:
    d = diff.double()
    return float(d.mean()), float(d.std()) / math.sqrt(d.numel())


def bound_gap(mixture: GaussianMixture, sdes: dict[str, SDE] | None = None, *, steps=DEFAULT_STEPS, n: int = 500,
              reverse_variances=("beta", "posterior"), continuous_n_t: int = 256, ode_tol: float = 1e-6,
              seed: int = 0, progress: bool = False) -> BoundGap:
    """Gap ``bound - (-log p_0)`` (nats, batch mean and s.e.) of the exact oracle's bounds; see the module docstring."""
    sdes = sdes or {"vp": VPSDE(), "subvp": SubVPSDE(), "cosine": CosineVPSDE()}
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = -mixture.log_prob(x0)
    study = BoundGap(n=n, dim=mixture.dim)
    for name, sde in sdes.items():
        model = mixture.model(sde)
        for rv in reverse_variances:
            for N in steps:
                res = variational_bound(model, x0, steps=N, reverse_variance=rv,
                                        generator=torch.Generator().manual_seed(seed + N))
                gap, se = _paired(res.nll - exact)
                study.rows.append({"sde": name, "method": "discrete", "N": N, "reverse_variance": rv,
                                   "gap": gap, "se": se, "bound": res.mean})
                if progress:
                    print(f"  {name:7s} {rv:9s} N {N:5d}: gap {gap:.4f} +- {se:.4f} nats", flush=True)
        res = continuous_bound(model, x0, n_t=continuous_n_t, generator=torch.Generator().manual_seed(seed + 1))
        gap, se = _paired(res.nll - exact)
        study.rows.append({"sde": name, "method": "continuous", "N": "", "reverse_variance": "",
                           "gap": gap, "se": se, "bound": res.mean})
        ode = log_likelihood(model, x0, rtol=ode_tol, atol=ode_tol)
        gap, se = _paired(ode.nll - exact)
        study.rows.append({"sde": name, "method": "pf_ode", "N": "", "reverse_variance": "",
                           "gap": gap, "se": se, "bound": float(ode.nll.mean())})
    return study


def plot_bound_gap(study: BoundGap, *, title: str | None = None):
    """Gap against N, one panel per reverse variance; the continuous-time bound and the PF-ODE at two
    extra positions right of the largest N (the N -> infinity limit and the density itself).

    The y axis is symlog (linear within 1e-2 of zero: the gaps' noise crosses zero) and spans only the
    values drawn, error bars included. The SDEs are offset slightly in x so equal values stay apart.
    """
    from matplotlib.lines import Line2D

    from ..plotting import _colors, _figure

    rvs = sorted({r["reverse_variance"] for r in study.select(method="discrete")})
    sdes = list(dict.fromkeys(r["sde"] for r in study.rows))
    fig = _figure(figsize=(5.4 * len(rvs), 4.8))
    axes = fig.subplots(1, len(rvs), squeeze=False)
    colors = _colors(len(sdes))
    markers = "osD^v"
    steps = sorted({r["N"] for r in study.select(method="discrete")})
    x_cont, x_ode = steps[-1] * 3, steps[-1] * 9  # two extra columns: N = infinity and the PF-ODE
    linthresh = 1e-2
    for ax, rv in zip(axes[0], rvs, strict=True):
        lo, hi = 0.0, linthresh
        for k, (c, name) in enumerate(zip(colors, sdes, strict=False)):
            shift = 1.08 ** (k - (len(sdes) - 1) / 2)  # a small x offset per SDE
            rows = study.select(sde=name, method="discrete", reverse_variance=rv)
            N = np.array([r["N"] for r in rows], float) * shift
            gap = np.array([r["gap"] for r in rows])
            err = 2 * np.array([r["se"] for r in rows])
            ax.errorbar(N, gap, yerr=err, color=c, marker=markers[k % len(markers)], ms=4, capsize=2, lw=1.3,
                        label=name)
            lo, hi = min(lo, float((gap - err).min())), max(hi, float((gap + err).max()))
            for method, x, mk in (("continuous", x_cont, markers[k % len(markers)]), ("pf_ode", x_ode, "*")):
                (r,) = study.select(sde=name, method=method)
                ax.errorbar([x * shift], [r["gap"]], yerr=[2 * r["se"]], color=c, marker=mk, ms=6, capsize=2,
                            ls="none", label="_nolegend_")
                lo, hi = min(lo, r["gap"] - 2 * r["se"]), max(hi, r["gap"] + 2 * r["se"])
        ax.axhline(0, color="0.3", lw=0.8, label="_nolegend_")
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=linthresh)
        # only the values drawn: below zero no further than the lowest error bar reaches
        ax.set_ylim(1.5 * lo if lo < 0 else -0.5 * linthresh, 3 * hi)
        ax.axvline(steps[-1] * 1.7, color="0.6", lw=0.8, ls=":", label="_nolegend_")
        ax.set_xticks([*steps, x_cont, x_ode], [*map(str, steps), "cont.", "PF-ODE"])
        ax.set_xlim(steps[0] / 1.6, x_ode * 1.6)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel("steps N of the discrete bound (cont.: N -> infinity)")
        ax.set_ylabel("mean (bound - exact NLL) [nats]")
        ax.set_title(f"reverse variance: {rv}")
        ax.grid(True, which="major", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], color="0.4", marker="*", ls="none", ms=7))
        labels.append("PF-ODE: density, not a bound")
        ax.legend(handles, labels, fontsize=8, loc="lower left", title="SDE (+- 2 s.e.)", title_fontsize=8)
    fig.suptitle(title or f"variational bound gap to the exact NLL ({study.n} points, D = {study.dim})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def job_bound_gap(out, mixture: GaussianMixture, *, name: str = "bound_gap", progress: bool = False,
                  **kw) -> tuple[list[Path], BoundGap]:
    """Run :func:`bound_gap`, save ``<name>.png`` and ``<name>.csv`` into ``out``."""
    out = Path(out)
    study = bound_gap(mixture, progress=progress, **kw)
    fig = plot_bound_gap(study)
    png = out / f"{name}.png"
    fig.savefig(png, dpi=110)
    return [png, write_csv(study.rows, out / f"{name}.csv")], study
