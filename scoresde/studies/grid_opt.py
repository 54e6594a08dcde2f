r"""Step-grid comparison at a fixed NFE budget, and a grid optimised for the endpoint error.

For a deterministic sampler and a budget of NFE model calls (``steps = NFE / calls_per_step``),
the named grids (:mod:`scoresde.grids`: uniform in t, uniform in log-SNR, quadratic, Karras) are
compared by the endpoint error against the PF-ODE reference from the same ``x_T``.

The **optimised grid** keeps both ends and chooses the interior times. It is parametrised by the
log-SNR gaps: with logits ``w`` (one per step),

.. math::  \lambda_i = \lambda_T + (\lambda_{t_{min}} - \lambda_T) \sum_{j < i} \mathrm{softmax}(w)_j ,
           \qquad t_i = t(\lambda_i),

so every ``w`` gives a valid strictly decreasing grid (:func:`scoresde.grids.grid_from_logits`). ``w`` starts from the best named grid (on
the calibration batch) and is refined by Nelder-Mead (scipy) on the mean endpoint error of a
calibration batch; the reported error is measured on a *held-out* batch of starting points. This
is in the spirit of learned/optimised schedules (Watson et al. 2021, "Learning to efficiently
sample from diffusion probabilistic models"; Sabour et al. 2024, "Align your steps"), here with an
exact reference, so the gain is a pure discretisation gain.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import grids as _grids
from ..grids import grid_from_logits, lam_from_logits, logits_of_grid  # re-exported for solver_fit
from ..models import ScoreModel
from ..samplers import sample
from .distances import endpoint_error
from .method_specs import check_grids, check_steps, parse_methods
from .references import reference_pf_ode

__all__ = ["FITTED", "GridComparison", "grid_comparison", "grid_from_logits", "lam_from_logits", "logits_of_grid",
           "optimise_grid"]

FITTED = "linear_multistep (fitted)"  # the method label of the fitted-solver rows


def optimise_grid(model: ScoreModel, method, steps: int, x_calib: Tensor, ref_calib: Tensor, *,
                  init: Tensor | None = None, max_evals: int = 200) -> tuple[Tensor, float, int]:
    """Nelder-Mead on the gap logits minimising the mean endpoint error on the calibration batch.

    Returns the optimised grid, its calibration error and the number of objective evaluations.
    """
    from scipy.optimize import minimize

    sde = model.sde
    m = parse_methods([method])[0]
    T, t_min = float(sde.T), float(sde.t_min)
    w0 = torch.zeros(steps, dtype=torch.float64) if init is None else logits_of_grid(sde, init)
    w0 = w0 - w0.mean()

    def objective(w):
        try:
            times = grid_from_logits(sde, torch.as_tensor(w), t_min, T)
            x = sample(model, sde, m.name, x_T=x_calib, grid=times, **m.opts).samples
        except (ValueError, FloatingPointError):  # a degenerate grid (two equal times) or a blow-up
            return 1e6
        return endpoint_error(x, ref_calib)

    # An explicit simplex: scipy's default perturbs zero coordinates by 2.5e-4 only, so from the even
    # log-SNR grid (all logits 0) it sees no change in the error and stops at once.
    simplex = np.vstack([w0.numpy(), w0.numpy() + 0.25 * np.eye(steps)])
    res = minimize(objective, w0.numpy(), method="Nelder-Mead",
                   options={"maxfev": int(max_evals), "xatol": 1e-4, "fatol": 1e-10, "adaptive": True,
                            "initial_simplex": simplex})
    best = grid_from_logits(sde, torch.as_tensor(res.x), t_min, T)
    return best, float(res.fun), int(res.nfev)


@dataclass
class GridComparison:
    """Rows (method, NFE, grid, test and calibration errors) and the optimised grids."""

    rows: list[dict]
    optimised: dict[tuple[str, int], Tensor] = field(default_factory=dict)
    reference_error: float = 0.0
    config: dict = field(default_factory=dict)

    def gains(self) -> list[dict]:
        """Per (method, NFE): best named grid, its test error, the optimised one and their ratio."""
        out = []
        keys = sorted({(r["method"], r["nfe_budget"]) for r in self.rows})
        for method, nfe in keys:
            sel = [r for r in self.rows if r["method"] == method and r["nfe_budget"] == nfe]
            named = [r for r in sel if r["grid"] not in ("optimised", "fitted")]
            if not named:  # the fitted solver has no named grid to compare with
                continue
            opt = [r for r in sel if r["grid"] == "optimised"]
            best = min(named, key=lambda r: r["error_calib"])  # chosen on calibration data, like the optimiser
            row = {"method": method, "nfe": nfe, "best_named_grid": best["grid"], "best_named_error": best["error_test"]}
            if opt:
                row.update({"optimised_error": opt[0]["error_test"], "gain": best["error_test"] / opt[0]["error_test"]})
            out.append(row)
        return out


def grid_comparison(model: ScoreModel, methods=("ddim", "dpm_solver++"), nfes=(5, 6, 8, 10), *,
                    grids=None, optimise: bool = True, n_calib: int = 128, n_test: int = 256, seed: int = 0,
                    max_evals: int = 200, dim: int = 2, ref_tol: float = 1e-12, fit_solver: bool = False,
                    fit_iterations: int = 300, progress: bool = False) -> GridComparison:
    """Endpoint error of each (deterministic) method under each grid at each NFE budget.

    ``x_T`` for calibration and test are independent prior draws (seeds ``seed`` and ``seed + 1``);
    the PF-ODE reference is solved for both. ``fit_solver=True`` adds, per NFE budget, a
    ``linear_multistep`` solver whose grid and coefficients are fitted on the calibration batch
    (:func:`scoresde.studies.solver_fit.fit_linear_multistep`, ``fit_iterations`` Adam steps), as
    rows with method :data:`FITTED` and grid ``'fitted'``.
    """
    methods = parse_methods(methods)
    for m in methods:
        if m.instance().stochastic:
            raise ValueError(f"methods: {m.label!r} is stochastic; the grid comparison measures the endpoint "
                             "error against the PF ODE, so it takes deterministic samplers only")
    nfes = check_steps(nfes, "nfes")
    grids = check_grids(grids if grids is not None else _grids.available())
    sde = model.sde
    T, t_min = float(sde.T), float(sde.t_min)
    x_cal = sde.prior_sample((n_calib, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x_test = sde.prior_sample((n_test, dim), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ref_cal = reference_pf_ode(model, x_cal, T, t_min, tol=ref_tol)
    ref_test = reference_pf_ode(model, x_test, T, t_min, tol=ref_tol)
    rows, optimised = [], {}
    bar = tqdm(total=len(methods) * len(nfes), desc="grid comparison", disable=not progress)
    for m in methods:
        cps = m.instance().calls_per_step
        for nfe in nfes:
            steps = nfe // cps
            bar.update(1)
            if steps < 1 or steps * cps != nfe:
                continue  # this budget is not a whole number of steps for this sampler
            errs = {}
            for g in grids:
                times = _grids.make_grid(g, sde, steps)
                e_cal = endpoint_error(sample(model, sde, m.name, x_T=x_cal, grid=times, **m.opts).samples, ref_cal.x)
                res = sample(model, sde, m.name, x_T=x_test, grid=times, **m.opts)
                errs[g] = (e_cal, times)
                rows.append({"method": m.label, "nfe_budget": nfe, "steps": steps, "nfe": res.nfe, "grid": g,
                             "error_test": endpoint_error(res.samples, ref_test.x), "error_calib": e_cal})
            if optimise and steps >= 2:
                init = min(errs.values(), key=lambda v: v[0])[1]
                best, e_cal, _ = optimise_grid(model, m, steps, x_cal, ref_cal.x, init=init, max_evals=max_evals)
                res = sample(model, sde, m.name, x_T=x_test, grid=best, **m.opts)
                optimised[(m.label, nfe)] = best
                rows.append({"method": m.label, "nfe_budget": nfe, "steps": steps, "nfe": res.nfe, "grid": "optimised",
                             "error_test": endpoint_error(res.samples, ref_test.x), "error_calib": e_cal,
                             "times": " ".join(f"{float(t):.5g}" for t in best)})
    if fit_solver:
        from .solver_fit import fit_linear_multistep

        for nfe in nfes:
            fs = fit_linear_multistep(model, nfe, x_cal, ref_cal.x, iterations=fit_iterations, x_valid=x_test,
                                      ref_valid=ref_test.x)
            optimised[(FITTED, nfe)] = fs.times
            rows.append({"method": FITTED, "nfe_budget": nfe, "steps": nfe, "nfe": nfe, "grid": "fitted",
                         "error_test": fs.valid_error, "error_calib": fs.calib_error,
                         "times": " ".join(f"{float(t):.5g}" for t in fs.times)})
    bar.close()
    config = {"sde": repr(sde), "n_calib": n_calib, "n_test": n_test, "seed": seed, "max_evals": max_evals,
              "fit_solver": fit_solver, "fit_iterations": fit_iterations}
    return GridComparison(rows, optimised, max(ref_cal.error, ref_test.error), config)
