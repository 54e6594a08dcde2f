r"""Discretisation error against the number of steps, with the fitted empirical order.

For every sampler and step count N, start from the *same* ``x_T`` (and, for a stochastic sampler,
the same torchsde Brownian path) and measure

* the **endpoint error** ``E_N = mean_b |x_N^(b) - x_ref^(b)|`` against a reference solution of the
  same dynamics from the same start: the probability-flow ODE (dopri5, tight tolerance) for a
  deterministic sampler, the reverse SDE on the same Brownian path (fine Euler-Maruyama) for a
  stochastic one (:mod:`scoresde.studies.references`);
* the **distribution error**: exact W2 and sliced W2 against fresh data samples, beside the
  two-sample floor, and for a mixture the mean exact log-density ``E log p_0(x_N)``.

A sampler of global order p has ``E_N ~ C N^{-p}``, so the log-log slope over the asymptotic range
estimates ``-p`` (:mod:`scoresde.studies.orders`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._progress import progress as progress_bar
from ..models import ScoreModel
from ..samplers import brownian_path, sample
from ..sde import SDE
from .distances import distribution_error, endpoint_error, two_sample_level
from .method_specs import Method, check_grids, check_steps, parse_methods
from .orders import OrderFit, fit_order
from .references import Reference, reference_pf_ode, reference_reverse_sde

__all__ = ["error_vs_steps", "ErrorVsSteps"]


@dataclass
class ErrorVsSteps:
    """Rows (one per method, grid and step count), fitted orders, references and the two-sample level.

    ``floors``: ``w2`` and ``sliced_w2`` are the mean distances from independent fresh data sets of the
    same size to the data the samples are compared with, ``w2_sd`` / ``sliced_w2_sd`` their standard
    deviations and ``draws`` how many sets: a converged sampler's distance is one draw from that spread.
    """

    rows: list[dict]
    fits: dict[tuple[str, str], OrderFit | None]
    declared: dict[str, float | None]
    references: dict[str, Reference]
    floors: dict[str, float] = field(default_factory=dict)
    data_log_density: float | None = None
    config: dict = field(default_factory=dict)

    def fit_rows(self) -> list[dict]:
        """One row per (method, grid): the declared order beside the fitted one."""
        out = []
        for (label, grid), fit in self.fits.items():
            out.append({"method": label, "grid": grid, "declared_order": self.declared[label],
                        "fitted_order": None if fit is None else fit.order,
                        "fit_stderr": None if fit is None else fit.stderr,
                        "fit_steps": "" if fit is None else " ".join(map(str, fit.steps_used))})
        return out

    def table(self) -> str:
        """A plain-text table of the rows and the fitted orders."""
        cols = ["method", "grid", "steps", "nfe", "endpoint_error", "w2", "mean_log_density"]
        cols = [c for c in cols if any(c in r for r in self.rows)]
        lines = ["  ".join(f"{c:>16}" for c in cols)]
        for r in self.rows:
            lines.append("  ".join(f"{_cell(r.get(c)):>16}" for c in cols))
        lines.append("")
        lines.append(f"{'method':>24}  {'grid':>8}  {'declared':>8}  {'fitted':>14}")
        for r in self.fit_rows():
            fitted = "n/a" if r["fitted_order"] is None else f"{r['fitted_order']:.2f} +- {r['fit_stderr']:.2f}"
            lines.append(f"{r['method']:>24}  {r['grid']:>8}  {_cell(r['declared_order']):>8}  {fitted:>14}")
        if self.floors:
            lines.append("")
            f = self.floors
            lines.append(f"two-sample level ({f.get('draws', 1):g} fresh data sets vs the data): "
                         + ", ".join(f"{k} {f[k]:.4g} +- {f.get(k + '_sd', 0.0):.2g}" for k in ("w2", "sliced_w2")
                                     if k in f)
                         + ("" if self.data_log_density is None else f"; data mean log-density {self.data_log_density:.4f}"))
        for key, ref in self.references.items():
            lines.append(f"reference ({key}): {ref.kind}, own error <= {ref.error:.2e}")
        return "\n".join(lines)


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def error_vs_steps(model: ScoreModel, methods, steps, *, grids="logsnr", x_T: Tensor | None = None,
                   n: int = 512, data: Tensor | None = None, data_fn: Callable[[int, torch.Generator], Tensor] | None = None,
                   mixture=None, seed: int = 0, distribution: bool = True, ref_tol: float = 1e-12,
                   ref_sde_steps: int = 2048, t_min: float | None = None, level_draws: int = 16,
                   progress: bool = False) -> ErrorVsSteps:
    """Run every method at every step count from the same start and measure the errors.

    Args:
        model: the score model (e.g. ``mixture.model(sde)``); its SDE is the one sampled.
        methods: sampler specs (see :func:`scoresde.studies.method_specs.parse_method`).
        steps: strictly increasing step counts.
        grids: one grid name or several (``scoresde.grids.available()``).
        x_T: the common start (float64 recommended); default ``n`` prior draws from ``seed``.
        data / data_fn / mixture: data samples for the distribution error (``data_fn(n, generator)``
            draws them, ``mixture`` gives both data and the exact log-density). Without any of
            these only the endpoint error is measured.
        distribution: measure W2 / sliced W2 / log-density (the costly part on large batches).
        ref_tol: dopri5 tolerance of the PF-ODE reference; ``ref_sde_steps``: Euler-Maruyama steps
            of the reverse-SDE reference for stochastic samplers.
        level_draws: independent fresh data sets whose distances to the data give the two-sample
            level (``floors``: mean and standard deviation of W2 and sliced W2, see
            :func:`~scoresde.studies.distances.two_sample_level`).
    Returns:
        :class:`ErrorVsSteps`.
    """
    methods: list[Method] = parse_methods(methods)
    steps = check_steps(steps)
    grids = check_grids(grids)
    sde: SDE = model.sde
    t_min = float(sde.t_min if t_min is None else t_min)
    gen = torch.Generator().manual_seed(seed)
    if x_T is None:
        x_T = sde.prior_sample((int(n), mixture.dim if mixture is not None else 2), generator=gen, dtype=torch.float64)
    t_start = float(sde.T)

    # data for the distribution error, and the two-sample level: the same distances from independent
    # fresh data draws to `data`. A converged sampler's distance is one more draw of that random
    # variable (its samples are draws from p_{t_min} ~ p_0), so it lies inside the spread, not above a
    # floor: at 256 points one draw of W2 ranges from about 0.33 to 0.69 (eight Gaussians).
    floors: dict[str, float] = {}
    data_logp = None
    if distribution and data is None and (data_fn is not None or mixture is not None):
        draw = data_fn if data_fn is not None else (lambda k, g: mixture.sample(k, generator=g, dtype=torch.float64))
        data = draw(x_T.shape[0], gen).to(x_T)
        fresh = [draw(x_T.shape[0], gen).to(x_T) for _ in range(level_draws)]
        floors = two_sample_level(fresh, data)
        if mixture is not None:
            data_logp = float(mixture.log_prob(fresh[0].double().cpu()).mean())
    distribution = distribution and data is not None

    stochastic = any(m.instance().stochastic for m in methods)
    # the references are part of the work shown: at tight tolerances they are a good part of it
    bar = progress_bar(total=len(methods) * len(grids) * len(steps) + 1 + int(stochastic), desc="error vs steps",
                       enabled=progress)
    bar.set_postfix_str("PF-ODE reference (dopri5)")
    references: dict[str, Reference] = {"pf_ode": reference_pf_ode(model, x_T, t_start, t_min, tol=ref_tol)}
    bar.update(1)
    bm = None
    if stochastic:
        # one Brownian path on [0, T - t_min] in flipped time, shared by every stochastic run
        bar.set_postfix_str("reverse-SDE reference")
        times = torch.tensor([t_start, t_min], dtype=torch.float64)
        bm = brownian_path(times, x_T.shape, seed=seed + 1, dtype=x_T.dtype, device=x_T.device)
        references["reverse_sde"] = reference_reverse_sde(model, x_T, t_start, t_min, bm, steps=ref_sde_steps)
        bar.update(1)

    rows: list[dict] = []
    declared: dict[str, float | None] = {}
    for m in methods:
        inst = m.instance()
        bar.set_postfix_str(m.label)
        declared[m.label] = inst.convergence_order
        ref = references["reverse_sde" if inst.stochastic else "pf_ode"]
        for grid in grids:
            for N in steps:
                res = sample(model, sde, m.name, N, x_T=x_T, grid=grid, t_min=t_min,
                             brownian=bm if inst.stochastic else None,
                             generator=torch.Generator().manual_seed(seed + 2), **m.opts)
                row = {"method": m.label, "sampler": m.name, "grid": grid, "steps": N, "nfe": res.nfe,
                       "declared_order": inst.convergence_order, "stochastic": inst.stochastic,
                       "reference": "reverse_sde" if inst.stochastic else "pf_ode",
                       "endpoint_error": endpoint_error(res.samples, ref.x)}
                if distribution:
                    row.update(distribution_error(res.samples, data, mixture))
                rows.append(row)
                bar.update(1)
    bar.close()

    fits = {}
    for m in methods:
        for grid in grids:
            sel = [r for r in rows if r["method"] == m.label and r["grid"] == grid]
            ref = references[sel[0]["reference"]]
            fits[(m.label, grid)] = fit_order([r["steps"] for r in sel], [r["endpoint_error"] for r in sel],
                                              floor=ref.error)
    config = {"sde": repr(sde), "n": int(x_T.shape[0]), "seed": seed, "t_min": t_min, "ref_tol": ref_tol}
    return ErrorVsSteps(rows, fits, declared, references, floors, data_logp, config)
