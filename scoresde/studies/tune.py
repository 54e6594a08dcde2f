r"""Tune a sampler for one model at one budget: the best registered sampler, grid and fitted solver.

``tune(model, sde, budgets)`` answers "for *this* model, at N network calls, what should I run?" with
the endpoint error against the model's own probability-flow ODE (the error a sampler adds to the model):

1. two independent batches of starting points ``x_T`` from the prior, a *calibration* batch and a
   *held-out* batch, and for each a tight PF-ODE reference at ``T -> t_min``
   (:func:`~.references.reference_pf_ode`, dopri5 in log-SNR);
2. **the zoo**: every deterministic stepped sampler configuration of ``methods`` (default
   :data:`DEFAULT_METHODS`; ``'all'``: every registered deterministic stepped sampler with each of its
   conformance option sets) on every named grid, each at the largest step count whose declared NFE fits
   the budget (a 2-call sampler takes half the steps; DEIS/iPNDM with ``afs`` one more);
3. **grid optimisation** (:func:`~.grid_opt.optimise_grid`, Nelder-Mead on the log-SNR gaps) of the
   ``n_grid_opt`` best zoo configurations, started from their best named grid;
4. **a fitted solver** (:func:`~.solver_fit.fit_linear_multistep`): grid and coefficients of a linear
   multistep rule, started from the best candidate that has linear multistep coefficients (DEIS, iPNDM
   with the noise prediction and without ``afs``; else DPM-Solver-2M) on that candidate's grid. It never
   loses to its start on the held-out batch (the fit keeps its start otherwise).

The zoo and the grid optimiser rank on the calibration batch; the configuration returned per budget is
the candidate (zoo, optimised grid, fit) with the lowest *held-out* error, so it is never worse there than
the best zoo entry. Every model call is counted (``calls``: references, zoo, optimiser, fit) with the
wall time. The result prints as a table, draws as a figure (:func:`plot_tune`) and saves a small JSON
artifact per budget (:class:`TunedSampler`) that :func:`scoresde.sample` runs by path and
:class:`~scoresde.interop.scheduler.ScoresdeScheduler` loads (:meth:`TunedSampler.scheduler`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import grids as _grids
from .._progress import progress as _progress
from .._progress import stage as _stage
from ..models import ScoreModel
from ..samplers import get_sampler, sample
from ..samplers.base import SAMPLERS, SteppedSampler
from .distances import endpoint_error
from .references import reference_pf_ode

__all__ = ["DEFAULT_METHODS", "FORMAT", "TuneResult", "TunedSampler", "load_tuned", "plot_tune", "tune",
           "zoo_configs"]

FORMAT = "scoresde.tuned/1"  # the artifact's format tag

#: the zoo by default: the strongest training-free configurations of each family (benchmarks/samplers.py)
DEFAULT_METHODS: tuple[tuple[str, dict], ...] = (
    ("ddim", {}),
    ("heun", {}),
    ("dpm_solver", {"order": 2, "lower_order_final": False}),
    ("dpm_solver", {"order": 3, "lower_order_final": False}),
    ("dpm_solver++", {"order": 2, "lower_order_final": False}),
    ("dpm_solver++", {"order": 3, "lower_order_final": False}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
    *[("deis", {"order": k, "afs": afs}) for k in (2, 3, 4) for afs in (False, True)],
    ("deis", {"order": 3, "variable": "lam", "prediction": "data"}),
    ("deis", {"order": 4, "variable": "lam", "prediction": "data"}),
    *[("ipndm", {"order": k}) for k in (2, 3, 4)],
    # iPNDM with its published (fixed-step) weights: the best peer at NFE 5-15 on the mixtures of issue 23
    *[("ipndm", {"order": k, "weights": "published", "afs": afs}) for k in (2, 3) for afs in (False, True)],
)

#: the quick zoo (``quick=True`` in the command): one or two configurations per family
QUICK_METHODS: tuple[tuple[str, dict], ...] = (
    ("ddim", {}),
    ("dpm_solver++", {"order": 2, "lower_order_final": False}),
    ("unipc", {"order": 3}),
    ("deis", {"order": 3}),
    ("ipndm", {"order": 3}),
)


def _deterministic_stepped(name: str, opts: dict) -> bool:
    cls = SAMPLERS.get(name)
    if cls is None or not issubclass(cls, SteppedSampler) or "coefficients" in cls.option_names():
        return False
    try:
        s = cls(**opts)
    except (TypeError, ValueError):
        return False
    return not s.stochastic and s.expected_nfe(1) is not None


def zoo_configs(methods=None) -> list[tuple[str, dict]]:
    """The zoo's (name, options) pairs: ``None`` -> :data:`DEFAULT_METHODS` (those registered), ``'quick'``
    -> :data:`QUICK_METHODS`, ``'all'`` -> every registered deterministic stepped sampler with each of its
    ``conformance_options`` (and DEIS/iPNDM also with ``afs``), or a list of names / (name, options) pairs."""
    if methods is None:
        out = [(n, dict(o)) for n, o in DEFAULT_METHODS if n in SAMPLERS]
    elif methods == "quick":
        out = [(n, dict(o)) for n, o in QUICK_METHODS if n in SAMPLERS]
    elif methods == "all":
        out = []
        for name in sorted(SAMPLERS):
            option_sets = list(getattr(SAMPLERS[name], "conformance_options", None) or [{}])
            if "afs" in SAMPLERS[name].option_names():
                option_sets += [{**o, "afs": True} for o in option_sets]
            out += [(name, dict(o)) for o in option_sets if "thresholding" not in o]
    else:
        if isinstance(methods, (str, bytes)) or not hasattr(methods, "__iter__"):
            raise ValueError(f"methods: expected None, 'quick', 'all' or a list of sampler names / (name, options) "
                             f"pairs, got {methods!r}")
        out = []
        for m in methods:
            name, opts = (m, {}) if isinstance(m, str) else tuple(m)
            get_sampler(name)  # an unknown name raises, listing the known ones
            if not isinstance(opts, dict):
                raise ValueError(f"methods: options of {name!r} must be a dict, got {opts!r}")
            if not _deterministic_stepped(name, opts):
                raise ValueError(f"methods: {name!r} with {opts} is not a deterministic stepped sampler that runs "
                                 "without fitted coefficients; the tuner compares endpoint errors against the PF ODE")
            out.append((name, dict(opts)))
    out = [(n, o) for n, o in out if _deterministic_stepped(n, o)]
    seen, unique = set(), []
    for n, o in out:
        key = (n, json.dumps(o, sort_keys=True))
        if key not in seen:
            seen.add(key)
            unique.append((n, o))
    if not unique:
        raise ValueError(f"methods: no deterministic stepped sampler in {methods!r}")
    return unique


def _label(name: str, opts: dict) -> str:
    shown = {k: v for k, v in opts.items() if k != "coefficients"}
    return name + ("(" + ",".join(f"{k}={v}" for k, v in shown.items()) + ")" if shown else "")


def _steps_for(sampler, nfe: int) -> int | None:
    """The largest step count whose declared NFE fits ``nfe`` (None if even one step does not)."""
    best = None
    for steps in range(1, nfe + 2):  # DEIS/iPNDM with afs save a call: nfe + 1 steps may fit
        e = sampler.expected_nfe(steps)
        if e is None or e > nfe:
            break
        best = steps
    return best


def _json_option(v):
    return v.detach().to(torch.float64).cpu().tolist() if isinstance(v, Tensor) else v


# ----- the artifact --------------------------------------------------------------------------------
@dataclass
class TunedSampler:
    """A tuned configuration: run ``method`` with ``options`` on the grid ``times`` (T .. t_min, float64).

    ``lam``: the same grid in half log-SNR; ``nfe``: the budget it was tuned for (``nfe_used``: the calls
    one run makes); ``source``: 'zoo', 'grid_opt' or 'fit'; ``model_id`` and ``sde``: what it was tuned
    on; ``errors``: its held-out and calibration errors and the best zoo entry's held-out error.
    """

    method: str
    options: dict
    times: list[float]
    nfe: int
    nfe_used: int
    source: str
    sde: str
    model_id: str = ""
    lam: list[float] = field(default_factory=list)
    label: str = ""
    errors: dict = field(default_factory=dict)

    def sample_options(self) -> dict[str, Any]:
        """The ``method``, ``grid`` (a float64 tensor) and sampler options to pass to :func:`scoresde.sample`."""
        opts = {k: torch.tensor(v, dtype=torch.float64) if k == "coefficients" else v for k, v in self.options.items()}
        return {"method": self.method, "grid": torch.tensor(self.times, dtype=torch.float64), **opts}

    def check_sde(self, sde) -> None:
        if repr(sde) != self.sde:
            raise ValueError(f"sde: the tuned sampler was made for {self.sde}, got {sde!r}")

    def sample(self, model: ScoreModel, sde=None, **kwargs):
        """:func:`scoresde.sample` with this configuration (``x_T=`` or ``shape=``, ``generator=`` as usual)."""
        sde = model.sde if sde is None else sde
        self.check_sde(sde)
        opts = self.sample_options()
        return sample(model, sde, opts.pop("method"), **opts, **kwargs)

    def scheduler(self, config=None, **overrides):
        """A :class:`~scoresde.interop.scheduler.ScoresdeScheduler` running this configuration; ``config``: the
        training schedule (e.g. ``pipe.scheduler.config``, the one the model was tuned on)."""
        from ..interop.scheduler import ScoresdeScheduler

        overrides.setdefault("final_denoise", False)
        return ScoresdeScheduler.from_config(dict(config or {}), method=self.method, options=dict(self.options),
                                             times=list(self.times), **overrides)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": self.method, "options": self.options, "times": self.times,
                "lam": self.lam, "nfe": self.nfe, "nfe_used": self.nfe_used, "source": self.source,
                "label": self.label, "sde": self.sde, "model_id": self.model_id, "errors": self.errors}

    def save(self, path) -> Path:
        """Write the artifact as JSON, atomically (floats keep every digit: the run is reproduced exactly)."""
        from .._files import save_text

        return save_text(json.dumps(self.to_dict(), indent=1) + "\n", path)


def load_tuned(path) -> TunedSampler:
    """Read a :class:`TunedSampler` saved by :meth:`TunedSampler.save` (a ``.json`` path)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a path to a tuned sampler (.json), got {type(path).__name__}")
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"path: {str(path)!r} is not a tuned sampler (invalid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"path: {str(path)!r} is not a tuned sampler (expected format {FORMAT!r})")
    data.pop("format")
    return TunedSampler(**data)


def is_tuned_path(method) -> bool:
    """True for a path (str or PathLike) ending in ``.json``: what :func:`scoresde.sample` reads as a tuned sampler."""
    return isinstance(method, (str, os.PathLike)) and str(method).endswith(".json")


def resolve_tuned(path, sde, steps, options: dict) -> tuple[str, Tensor, dict]:
    """``(method, grid, options)`` of the tuned sampler at ``path`` for :func:`scoresde.sample`; ``steps`` must be
    None or its step count, and ``options`` may not repeat its own."""
    tuned = load_tuned(path)
    tuned.check_sde(sde)
    opts = tuned.sample_options()
    method, grid = opts.pop("method"), opts.pop("grid")
    if steps is not None and steps != len(grid) - 1:
        raise ValueError(f"steps: the tuned sampler {str(path)!r} takes {len(grid) - 1} steps, got {steps!r}")
    clash = sorted(set(opts) & set(options))
    if clash:
        raise ValueError(f"options: {', '.join(clash)} are fixed by the tuned sampler {str(path)!r}")
    return method, grid, {**opts, **options}


# ----- the result ----------------------------------------------------------------------------------
@dataclass
class TuneResult:
    """Every candidate (``rows``), the tuned configuration per budget (``tuned``), and what tuning cost.

    ``calls``: model calls by stage (``reference``, ``zoo``, ``grid_opt``, ``fit``, ``total``: batched
    calls, as the model counts them); ``wall_time``: seconds; ``reference_error``: the references' own
    error estimate (a floor for every error here).
    """

    rows: list[dict]
    tuned: dict[int, TunedSampler]
    calls: dict[str, int]
    wall_time: float
    reference_error: float
    config: dict = field(default_factory=dict)

    def best(self, nfe: int, source: str = "zoo") -> dict:
        """The row with the lowest held-out error at budget ``nfe`` among ``source`` ('zoo', 'grid_opt', 'fit')."""
        sel = [r for r in self.rows if r["nfe"] == nfe and r["source"] == source and math.isfinite(r["error_heldout"])]
        if not sel:
            raise ValueError(f"source: no {source!r} row at NFE {nfe}")
        return min(sel, key=lambda r: r["error_heldout"])

    def summary(self) -> list[dict]:
        out = []
        for nfe, t in sorted(self.tuned.items()):
            zoo = self.best(nfe, "zoo")
            out.append({"nfe": nfe, "zoo_best": zoo["label"], "zoo_error": zoo["error_heldout"],
                        "tuned": t.label, "source": t.source, "tuned_error": t.errors["heldout"],
                        "ratio": t.errors["heldout"] / zoo["error_heldout"] if zoo["error_heldout"] > 0 else math.nan})
        return out

    def table(self) -> str:
        lines = [f"{'NFE':>4}  {'best zoo (held-out)':>19}  {'tuned':>10}  {'tuned/zoo':>9}  {'from':<8}  configuration"]
        for s in self.summary():
            lines.append(f"{s['nfe']:>4}  {s['zoo_error']:>19.3e}  {s['tuned_error']:>10.3e}  {s['ratio']:>9.3f}  "
                         f"{s['source']:<8}  {s['tuned']}")
        c = self.calls
        lines.append(f"tuning cost: {c['total']} model calls (references {c['reference']}, zoo {c['zoo']}, grid "
                     f"optimisation {c['grid_opt']}, fit {c['fit']}), {self.wall_time:.1f} s; reference error "
                     f"{self.reference_error:.1e}")
        return "\n".join(lines)

    def csv_rows(self) -> tuple[list[str], list[list]]:
        header = ["nfe", "source", "family", "label", "grid", "steps", "nfe_used", "error_calib", "error_heldout",
                  "tuned"]
        rows = [[r["nfe"], r["source"], r["family"], r["label"], r["grid"], r["steps"], r["nfe_used"],
                 r["error_calib"], r["error_heldout"], int(r.get("tuned", False))] for r in self.rows]
        return header, rows

    def figure(self):
        return plot_tune(self.rows)

    def save(self, out) -> list[Path]:
        """Write ``tune_table.txt``, ``tune.csv``, ``tune.png`` and ``tuned_nfe{N}.json`` into ``out``, atomically."""
        import matplotlib.pyplot as plt

        from .._files import save_csv, save_figure, save_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = [save_text(self.table() + "\n", out / "tune_table.txt")]
        header, rows = self.csv_rows()
        written.append(save_csv(rows, out / "tune.csv", header=header))
        fig = self.figure()
        try:
            written.append(save_figure(fig, out / "tune.png", dpi=120))
        finally:
            plt.close(fig)
        for nfe, t in sorted(self.tuned.items()):
            written.append(t.save(out / f"tuned_nfe{nfe}.json"))
        return written


def plot_tune(rows: list[dict]):
    """Held-out endpoint error against NFE: the zoo's best per sampler family (thin lines) and the tuned
    configuration (thick black). ``rows``: :attr:`TuneResult.rows`. Returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.4, 4.4))
    nfes = sorted({r["nfe"] for r in rows})
    families = sorted({r["family"] for r in rows if r["source"] == "zoo"})
    for fam in families:
        xs, ys = [], []
        for n in nfes:
            errs = [r["error_heldout"] for r in rows if r["nfe"] == n and r["family"] == fam and r["source"] == "zoo"
                    and math.isfinite(r["error_heldout"]) and r["error_heldout"] > 0]
            if errs:
                xs.append(n)
                ys.append(min(errs))
        if xs:
            ax.plot(xs, ys, marker=".", lw=1, alpha=0.8, label=f"{fam} (best grid and options)")
    tuned = sorted((r["nfe"], r["error_heldout"]) for r in rows if r.get("tuned"))
    if tuned:
        ax.plot([n for n, _ in tuned], [e for _, e in tuned], "k-o", lw=2.5, label="tuned")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(nfes)
    ax.set_xticklabels([str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE (model calls per sample)")
    ax.set_ylabel("held-out endpoint error vs the PF-ODE reference")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over the data
    fig.tight_layout()
    return fig


# ----- the tuner -----------------------------------------------------------------------------------
def _check_positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v!r}")
    return v


def tune(model: ScoreModel, sde, budgets, *, n_calibration: int = 256, n_heldout: int = 256,
         generator: torch.Generator | None = None, methods=None, grids=None, event_shape=None,
         dtype: torch.dtype = torch.float64, n_grid_opt: int = 3, grid_opt_evals: int = 200,
         fit: bool = True, fit_iterations: int = 150, ref_tol: float | None = None, model_id: str | None = None,
         progress: bool = True) -> TuneResult:
    """Tune a sampler for ``model`` at each NFE budget in ``budgets`` (see the module for the procedure).

    Args:
        model: a :class:`ScoreModel` (a checkpoint's, a diffusers network's, a denoiser's, the oracle's).
        sde: its SDE (``model.sde``).
        budgets: NFE budgets (model calls per sample), positive integers.
        n_calibration, n_heldout: the two batches of starting points.
        generator: draws the two batches (calibration first); default seed 0.
        methods: the zoo (see :func:`zoo_configs`); grids: grid names (default every named grid).
        event_shape: one sample's shape (default ``model.event_shape``: a checkpoint's and a mixture oracle's models carry it).
        dtype: of the starting points and every run (float64 for a tight reference).
        n_grid_opt, grid_opt_evals: configurations whose grid is optimised, Nelder-Mead evaluations each.
        fit, fit_iterations: fit a linear multistep solver (needs a model differentiable in x).
        ref_tol: the reference's tolerance (default 1e-10 in float64, 1e-5 otherwise).
        model_id: what the artifacts name as the model (default the model's ``identity`` attribute or its class).
        progress: progress lines on stderr.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if sde is not model.sde and sde != model.sde:
        raise ValueError(f"sde: {sde!r} differs from the model's SDE {model.sde!r}")
    if isinstance(budgets, int) and not isinstance(budgets, bool):
        budgets = [budgets]
    if not hasattr(budgets, "__iter__") or isinstance(budgets, (str, bytes)):
        raise ValueError(f"budgets: expected NFE budgets (positive integers), got {budgets!r}")
    budgets = list(budgets)
    if not budgets:
        raise ValueError("budgets: expected at least one NFE budget, got none")
    for b in budgets:
        _check_positive_int("budgets", b)
    budgets = sorted(set(budgets))
    n_calibration = _check_positive_int("n_calibration", n_calibration, 2)
    n_heldout = _check_positive_int("n_heldout", n_heldout, 2)
    _check_positive_int("grid_opt_evals", grid_opt_evals)
    _check_positive_int("n_grid_opt", n_grid_opt, 0)
    _check_positive_int("fit_iterations", fit_iterations, 0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")
    configs = zoo_configs(methods)
    from .method_specs import check_grids

    grid_names = check_grids(grids if grids is not None else _grids.available())
    if event_shape is None:
        event_shape = getattr(model, "event_shape", None)
    if event_shape is None:
        raise ValueError("event_shape: the model does not say its sample shape; pass event_shape=(...)")
    event_shape = tuple(int(s) for s in event_shape)
    if ref_tol is None:
        ref_tol = 1e-10 if dtype == torch.float64 else 1e-5
    if model_id is None:
        model_id = str(getattr(model, "identity", "") or type(getattr(model, "fn", model)).__name__)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    t0 = time.perf_counter()
    calls = {"reference": 0, "zoo": 0, "grid_opt": 0, "fit": 0}
    T, t_min = float(sde.T), float(sde.t_min)
    device = generator.device
    x_cal = sde.prior_sample((n_calibration, *event_shape), generator=generator, dtype=dtype, device=device)
    x_val = sde.prior_sample((n_heldout, *event_shape), generator=generator, dtype=dtype, device=device)
    n_stages = 2 + int(n_grid_opt > 0) + int(fit)
    _stage(1, n_stages, f"references for {n_calibration} + {n_heldout} starting points (tol {ref_tol:g})",
           enabled=progress)
    nfe0 = model.nfe
    ref_c = reference_pf_ode(model, x_cal, T, t_min, tol=ref_tol)
    ref_v = reference_pf_ode(model, x_val, T, t_min, tol=ref_tol)
    calls["reference"] = model.nfe - nfe0

    def run(name, opts, times, x):
        return sample(model, sde, name, x_T=x, grid=times, **opts).samples

    def errors(name, opts, times):
        try:
            return (endpoint_error(run(name, opts, times, x_cal), ref_c.x),
                    endpoint_error(run(name, opts, times, x_val), ref_v.x))
        except (FloatingPointError, ValueError):  # a diverging configuration is a bad candidate, not an error
            return math.nan, math.nan

    rows: list[dict] = []
    _stage(2, n_stages, f"the zoo: {len(configs)} configurations x {len(grid_names)} grids x {len(budgets)} budgets",
           enabled=progress)
    nfe0 = model.nfe
    bar = _progress(total=len(configs) * len(budgets), desc="zoo", enabled=progress)
    for nfe in budgets:
        for name, opts in configs:
            sampler = get_sampler(name)(**opts)
            steps = _steps_for(sampler, nfe)
            bar.update(1)
            if steps is None:
                continue
            for g in grid_names:
                times = _grids.make_grid(g, sde, steps)
                e_c, e_v = errors(name, opts, times)
                rows.append({"nfe": nfe, "source": "zoo", "family": name, "label": f"{_label(name, opts)} | {g}",
                             "method": name, "options": opts, "grid": g, "times": times, "steps": steps,
                             "nfe_used": sampler.expected_nfe(steps), "error_calib": e_c, "error_heldout": e_v})
    bar.close()
    calls["zoo"] = model.nfe - nfe0

    def ranked(nfe, sources):
        sel = [r for r in rows if r["nfe"] == nfe and r["source"] in sources and math.isfinite(r["error_calib"])]
        return sorted(sel, key=lambda r: r["error_calib"])

    if n_grid_opt > 0:
        from .grid_opt import optimise_grid

        _stage(3, n_stages, f"grid optimisation of the {n_grid_opt} best configurations per budget "
               f"({grid_opt_evals} evaluations each)", enabled=progress)
        nfe0 = model.nfe
        bar = _progress(total=len(budgets) * n_grid_opt, desc="grid optimisation", enabled=progress)
        for nfe in budgets:
            chosen, seen = [], set()
            for r in ranked(nfe, ("zoo",)):  # each configuration's best named grid, best first
                key = _label(r["method"], r["options"])
                if key not in seen and r["steps"] >= 2:
                    seen.add(key)
                    chosen.append(r)
                if len(chosen) == n_grid_opt:
                    break
            for r in chosen:
                times, _, _ = optimise_grid(model, (r["method"], r["options"]), r["steps"], x_cal, ref_c.x,
                                            init=r["times"], max_evals=grid_opt_evals)
                e_c, e_v = errors(r["method"], r["options"], times)
                rows.append({**r, "source": "grid_opt", "label": f"{_label(r['method'], r['options'])} | optimised "
                             f"from {r['grid']}", "grid": "optimised", "times": times, "error_calib": e_c,
                             "error_heldout": e_v})
                bar.update(1)
        bar.close()
        calls["grid_opt"] = model.nfe - nfe0

    if fit:
        from .solver_fit import fit_linear_multistep

        _stage(n_stages, n_stages, f"fitted solvers ({fit_iterations} iterations per budget)", enabled=progress)
        nfe0 = model.nfe
        for nfe in _progress(budgets, desc="fit", enabled=progress):
            start = next((r for r in ranked(nfe, ("zoo", "grid_opt")) if _fit_start_ok(r)), None)
            init_solver = (start["method"], start["options"]) if start is not None else None
            steps = start["steps"] if start is not None else nfe
            init_grid = start["times"] if start is not None else "logsnr"
            fs = fit_linear_multistep(model, steps, x_cal, ref_c.x, init_grid=init_grid, iterations=fit_iterations,
                                      x_valid=x_val, ref_valid=ref_v.x, init_solver=init_solver)
            e_c = endpoint_error(run("linear_multistep", {"coefficients": fs.coefficients}, fs.times, x_cal), ref_c.x)
            start_label = start["label"] if start is not None else "dpm_solver_2m | logsnr"
            kept = " (kept its start)" if fs.config["kept_start"] else ""
            rows.append({"nfe": nfe, "source": "fit", "family": "linear_multistep (fitted)",
                         "label": f"linear_multistep fitted from {start_label}{kept}", "method": "linear_multistep",
                         "options": {"coefficients": fs.coefficients}, "grid": "fitted", "times": fs.times,
                         "steps": steps, "nfe_used": steps, "error_calib": e_c, "error_heldout": fs.valid_error})
        calls["fit"] = model.nfe - nfe0
    calls["total"] = sum(calls.values())

    tuned = {}
    for nfe in budgets:
        sel = [r for r in rows if r["nfe"] == nfe and math.isfinite(r["error_heldout"])]
        if not sel:
            raise FloatingPointError(f"tune: every configuration diverged at NFE {nfe}")
        best_zoo = min((r for r in sel if r["source"] == "zoo"), key=lambda r: r["error_heldout"])
        best = min(sel, key=lambda r: r["error_heldout"])  # the zoo's best wins ties (it comes first)
        best["tuned"] = True
        times = best["times"].detach().to(torch.float64)
        tuned[nfe] = TunedSampler(
            method=best["method"], options={k: _json_option(v) for k, v in best["options"].items()},
            times=times.tolist(), lam=sde.lam(times).tolist(), nfe=nfe, nfe_used=int(best["nfe_used"]),
            source=best["source"], sde=repr(sde), model_id=model_id, label=best["label"],
            errors={"heldout": best["error_heldout"], "calib": best["error_calib"],
                    "zoo_best_heldout": best_zoo["error_heldout"], "zoo_best": best_zoo["label"],
                    "n_calibration": n_calibration, "n_heldout": n_heldout, "reference_tol": ref_tol})
    wall = time.perf_counter() - t0
    config = {"budgets": budgets, "n_calibration": n_calibration, "n_heldout": n_heldout, "grids": grid_names,
              "methods": [_label(n, o) for n, o in configs], "n_grid_opt": n_grid_opt, "grid_opt_evals": grid_opt_evals,
              "fit": fit, "fit_iterations": fit_iterations, "sde": repr(sde), "model_id": model_id}
    return TuneResult(rows, tuned, calls, wall, max(ref_c.error, ref_v.error), config)



def _fit_start_ok(row: dict) -> bool:
    """Can the fit start from this candidate's coefficients? (linear multistep, noise prediction, no afs)"""
    if row["method"] not in ("deis", "ipndm"):
        return False
    s = get_sampler(row["method"])(**row["options"])
    return (hasattr(s, "coefficient_matrix") and not getattr(s, "afs", False)
            and getattr(s, "prediction", "noise") == "noise" and s.calls_per_step == 1)
