"""Jobs: run a study, draw its figure and save ``<name>.png`` with ``<name>.csv`` beside it.

Shared by ``scoresde demo``, ``scoresde study`` and ``benchmarks/make_figures.py``. Every job takes
the folder to write into (which must exist) and returns the paths it wrote. The figures come from
:mod:`scoresde.plotting` on their own Agg canvas, so no job touches pyplot or the backend.
"""
from __future__ import annotations

from pathlib import Path

from .. import toy
from ..models import ScoreModel
from ..samplers import available
from ..sde import SDE, VPSDE, DiscreteVPSDE, SubVPSDE
from .ddim_limit import ddim_convergence, eta_family
from .error_vs_steps import ErrorVsSteps, error_vs_steps
from .grid_opt import grid_comparison
from .output import write_csv
from .trajectories import trajectories

__all__ = ["default_methods", "job_error_vs_steps", "job_ddim_limit", "job_trajectories", "job_grid_comparison"]

DPI = 110


def default_methods() -> list[str]:
    """The fixed-step sampler zoo that is registered now (deterministic and stochastic)."""
    wanted = ["ddim", "heun", "dpm_solver", "dpm_solver++", "dpm_solver++:order=3,lower_order_final=False", "unipc:order=3",
              "euler_maruyama", "ddpm"]
    return [m for m in wanted if m.partition(":")[0] in available()]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    return path


def job_error_vs_steps(out, model: ScoreModel, *, methods=None, steps=(5, 10, 20, 40, 80, 160), grids="logsnr",
                       mixture=None, n: int = 512, seed: int = 0, extra_models: dict | None = None,
                       name: str = "error_vs_steps", progress: bool = False, **study_kw) -> tuple[list[Path], ErrorVsSteps]:
    """Error against steps for ``model`` (and each of ``extra_models``, labelled ``<label>/<method>``)."""
    from ..plotting import plot_error_vs_steps

    out = Path(out)
    methods = methods or default_methods()
    study = error_vs_steps(model, methods, steps, grids=grids, mixture=mixture, n=n, seed=seed, progress=progress,
                           **study_kw)
    rows = [{"model": "exact", **r} for r in study.rows]
    fits = [{"model": "exact", **r} for r in study.fit_rows()]
    for label, m in (extra_models or {}).items():
        extra = error_vs_steps(m, methods, steps, grids=grids, mixture=mixture, n=n, seed=seed, progress=progress,
                               **study_kw)
        rows += [{"model": label, **r} for r in extra.rows]
        fits += [{"model": label, **r} for r in extra.fit_rows()]
    sde = model.sde
    fig = plot_error_vs_steps(study, title=f"exact {getattr(mixture, 'name', 'mixture')} oracle under "
                                           f"{type(sde).__name__}: error vs steps ({n} common x_T)")
    paths = [_save(fig, out / f"{name}.png"), write_csv(rows, out / f"{name}.csv"),
             write_csv(fits, out / f"{name}_orders.csv")]
    return paths, study


def job_ddim_limit(out, mixture, *, steps=(8, 16, 32, 64, 128, 256), n: int = 256, eta_steps=(5, 10, 20, 50, 100),
                   etas=(0.0, 0.25, 0.5, 0.75, 1.0), n_eta: int = 1000, seed: int = 0, name: str = "ddim_limit",
                   ref_tol: float = 1e-12, progress: bool = False):
    """DDIM as the ODE limit for VP, sub-VP and the discrete DDPM schedule, and the eta family under VP."""
    from ..plotting import plot_ddim_limit

    out = Path(out)
    sdes = {"VP": VPSDE(), "sub-VP": SubVPSDE(), "DDPM discrete (1000 steps)": DiscreteVPSDE()}
    limit = ddim_convergence(sdes, mixture, steps, n=n, seed=seed, ref_tol=ref_tol, progress=progress)
    eta = eta_family(mixture.model(sdes["VP"]), mixture, etas, eta_steps, n=n_eta, seed=seed, progress=progress)
    fig = plot_ddim_limit(limit, eta, title="DDIM is the exponential-Euler discretisation of the PF ODE")
    paths = [_save(fig, out / f"{name}.png"), write_csv(limit.rows(), out / f"{name}.csv"),
             write_csv(limit.identity, out / f"{name}_identity.csv"),
             write_csv(eta.rows, out / f"{name}_eta.csv")]
    return paths, (limit, eta)


def job_trajectories(out, mixture, sde: SDE, *, steps: int = 10, gif: bool = True, seed: int = 0,
                     name: str = "trajectories", progress: bool = False, **study_kw):
    """Trajectory figure (and GIF) of the reverse SDE, PF ODE, DDIM and DPM-Solver++ from the same x_T."""
    from .._progress import progress as progress_bar
    from ..plotting import animate_trajectories, plot_trajectories

    out = Path(out)
    with progress_bar(total=3 if gif else 2, desc="trajectories", enabled=progress) as bar:
        bar.set_postfix_str("paths and densities")
        traj = trajectories(mixture, sde, steps=steps, seed=seed, **study_kw)
        bar.update(1)
        bar.set_postfix_str("figure")
        fig = plot_trajectories(traj, title=f"same x_T, four dynamics: exact mixture under {type(sde).__name__}")
        paths = [_save(fig, out / f"{name}.png"), write_csv(traj.rows(), out / f"{name}.csv")]
        bar.update(1)
        if gif:
            from matplotlib.animation import PillowWriter

            bar.set_postfix_str("animation")
            anim = animate_trajectories(traj)
            anim.save(out / f"{name}.gif", writer=PillowWriter(fps=8), dpi=70)
            paths.append(out / f"{name}.gif")
            bar.update(1)
    return paths, traj


def job_grid_comparison(out, model: ScoreModel, *, methods=("ddim", "dpm_solver++", "heun"), nfes=(4, 5, 6, 8, 10),
                        n_calib: int = 128, n_test: int = 256, max_evals: int = 200, seed: int = 0,
                        name: str = "grid_comparison", fit_solver: bool = True, progress: bool = False, **study_kw):
    """Named grids, the optimised grid and a fitted solver at small NFE budgets (held-out error)."""
    from ..plotting import plot_grid_comparison

    out = Path(out)
    methods = [m for m in methods if not isinstance(m, str) or m.partition(":")[0] in available()]
    comp = grid_comparison(model, methods, nfes, n_calib=n_calib, n_test=n_test, max_evals=max_evals, seed=seed,
                           fit_solver=fit_solver, progress=progress, **study_kw)
    fig = plot_grid_comparison(comp, title=f"step grids at a fixed NFE budget ({type(model.sde).__name__}, "
                                           f"held-out x_T; x: gain of the optimised grid)")
    paths = [_save(fig, out / f"{name}.png"), write_csv(comp.rows, out / f"{name}.csv"),
             write_csv(comp.gains(), out / f"{name}_gains.csv")]
    return paths, comp


# A configuration small enough for smoke tests: the same files, smaller batches, looser references.
QUICK = {
    "error_vs_steps": {"ref_tol": 1e-8, "ref_sde_steps": 256},
    "ddim_limit": {"steps": (4, 8, 16), "n": 8, "eta_steps": (5, 10), "etas": (0.0, 1.0), "n_eta": 64, "ref_tol": 1e-7},
    "trajectories": {"n_paths": 3, "sde_steps": 40, "n_frames": 3, "mesh": 40, "score_mesh": 8, "n_samples": 100},
    "grid_comparison": {"nfes": (5,), "n_calib": 16, "n_test": 16, "max_evals": 10, "ref_tol": 1e-7, "fit_iterations": 5},
}


def eight_gaussians():
    mix = toy.mixture("eight_gaussians")
    mix.name = "eight_gaussians"
    return mix
