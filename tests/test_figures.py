"""Every figure the package draws, rendered on small data and checked for what a program can see.

* no text outside the canvas: after a draw, every axes' tight box (tick labels, titles, legends,
  texts) and every figure-level text and legend lies inside the figure;
* a legend entry for every labelled line, scatter or error bar, and no unlabelled one in a figure
  that has a legend unless it was excluded on purpose (matplotlib's ``'_nolegend_'``);
* a drawn two-sample level is labelled as a spread and contains the converged samplers' values;
* clipped values are marked, and a log axis shows at least three labelled ticks.
"""
import math

import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D

import scoresde as sd
from scoresde import plotting
from scoresde.studies import jobs
from scoresde.studies.bound_gap import bound_gap, plot_bound_gap
from scoresde.studies.ddim_limit import ddim_convergence, eta_family
from scoresde.studies.error_vs_steps import error_vs_steps
from scoresde.studies.grid_opt import grid_comparison
from scoresde.studies.trajectories import trajectories


@pytest.fixture(scope="module")
def mix():
    return jobs.eight_gaussians()


# ----- the checks --------------------------------------------------------------------------------
def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_inside_canvas(fig, tol: float = 1.0):
    """No drawn text (or legend) reaches outside the figure."""
    renderer = _renderer(fig)
    W, H = fig.bbox.width, fig.bbox.height

    def inside(bb, what):
        assert bb.x0 >= -tol and bb.y0 >= -tol and bb.x1 <= W + tol and bb.y1 <= H + tol, \
            f"{what} reaches outside the canvas: {bb} vs {W:.0f} x {H:.0f}"

    for ax in fig.axes:
        inside(ax.get_tightbbox(renderer), f"axes {ax.get_title()!r}")
    for t in fig.texts:
        if t.get_visible() and t.get_text():
            inside(t.get_window_extent(renderer), f"figure text {t.get_text()[:40]!r}")
    for leg in fig.legends:
        inside(leg.get_window_extent(renderer), "figure legend")
    if fig._suptitle is not None:
        inside(fig._suptitle.get_window_extent(renderer), "suptitle")


def _legend_texts(fig) -> set[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return {t.get_text() for leg in legends if leg is not None for t in leg.get_texts()}


def _plotted(ax):
    """(label, artist) of everything a legend could list: lines, scatters, error bars."""
    in_containers = set()
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            out.append((c.get_label(), c))
            in_containers.update(id(a) for a in c.get_children())
    for a in [*ax.lines, *ax.collections]:
        if id(a) in in_containers or not isinstance(a, (Line2D, PathCollection)):
            continue
        out.append((a.get_label(), a))
    return out


def assert_legends_complete(fig):
    texts = _legend_texts(fig)
    if not texts:
        return
    for ax in fig.axes:
        for label, artist in _plotted(ax):
            if label == "_nolegend_":  # excluded on purpose
                continue
            assert not label.startswith("_"), \
                f"panel {ax.get_title()!r}: an unlabelled {type(artist).__name__} in a figure with a legend"
            assert label in texts, f"panel {ax.get_title()!r}: {label!r} has no legend entry"


def assert_log_axis_readable(ax, axis="y", minimum=3):
    ax.figure.canvas.draw()
    target = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    shown = [t for t in target.get_ticklabels() if t.get_text() and lo <= t.get_position()[axis == "y"] <= hi]
    assert len(shown) >= minimum, f"{ax.get_title()!r}: {len(shown)} labelled ticks on the {axis} axis"


def check(fig):
    assert_inside_canvas(fig)
    assert_legends_complete(fig)


# ----- the figures -------------------------------------------------------------------------------
def test_checks_catch_the_defects_they_name():
    """The checks fail on a figure with each defect (so a pass means something)."""
    fig = plotting._figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="a")
    ax.plot([0, 1], [1, 0])  # unlabelled, in a panel with a legend
    ax.legend()
    with pytest.raises(AssertionError, match="unlabelled"):
        assert_legends_complete(fig)
    fig = plotting._figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_title("a title far too long for a figure three inches wide, so it is clipped at both ends")
    with pytest.raises(AssertionError, match="outside the canvas"):
        assert_inside_canvas(fig)


def test_error_vs_steps_figure(mix):
    sde = sd.VPSDE()
    study = error_vs_steps(mix.model(sde), ["ddim", "dpm_solver++", "euler_maruyama"], [5, 10, 20, 40], mixture=mix,
                           n=256, ref_tol=1e-8, ref_sde_steps=256, level_draws=8)
    fig = plotting.plot_error_vs_steps(study, title="small")
    check(fig)
    w2_ax = fig.axes[2]
    assert_log_axis_readable(w2_ax)
    # the two-sample level is drawn as a spread, labelled so, and the converged samplers sit inside it
    f = study.floors
    assert f["draws"] == 8 and f["w2_sd"] > 0
    assert any("mean +- 2 sd" in t for t in _legend_texts(fig))
    for method in ("ddim", "dpm_solver++"):
        converged = [r for r in study.rows if r["method"] == method][-1]["w2"]
        assert converged >= f["w2"] - 2 * f["w2_sd"], (method, converged, f)
    # values below the log-density panel are marked on its edge and explained in its legend
    logp_ax = fig.axes[3]
    bottom = logp_ax.get_ylim()[0]
    if min(r["mean_log_density"] for r in study.rows) < bottom:
        assert any("below" in t.get_text() for t in logp_ax.get_legend().get_texts())
        assert any(line.get_marker() == "v" for line in logp_ax.lines)


def test_ddim_limit_figure(mix):
    limit = ddim_convergence({"VP": sd.VPSDE(), "sub-VP": sd.SubVPSDE()}, mix, (4, 8, 16), n=8, ref_tol=1e-7)
    eta = eta_family(mix.model(sd.VPSDE()), mix, (0.0, 1.0), (5, 10), n=64)
    fig = plotting.plot_ddim_limit(limit, eta, title="small")
    check(fig)
    assert len(fig.axes) == 2  # the noise-dominated W2 panel is gone; W2 stays in the rows
    assert all("w2" in r for r in eta.rows)


def test_trajectories_figure(mix):
    traj = trajectories(mix, sd.VPSDE(), **{**jobs.QUICK["trajectories"], "n_paths": 6})
    fig = plotting.plot_trajectories(traj, title="small")
    check(fig)
    texts = _legend_texts(fig)
    assert "reverse SDE (4 of 6 paths)" in texts  # the legend says how many of the paths are drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert not any("{" in t and "$" not in t for t in titles)  # no literal TeX braces
    for ax in fig.axes[:len(traj.snapshot_times)]:  # the snapshots have ticks and a colour key
        assert len(ax.get_xticks()) >= 3
    assert all(label in texts for label in traj.paths)


def test_grid_comparison_figure(mix):
    comp = grid_comparison(mix.model(sd.VPSDE()), ["ddim"], (4, 5), n_calib=8, n_test=8, max_evals=5, ref_tol=1e-6,
                           fit_solver=False)
    fig = plotting.plot_grid_comparison(comp, title="small")
    check(fig)
    # the gains are tick labels of a top axis, not annotations among the lines
    ax = fig.axes[0]
    assert not ax.texts
    top = [c for c in ax.child_axes]
    assert top and all(t.get_text().startswith("x") for t in top[0].xaxis.get_ticklabels() if t.get_text())


def test_bound_gap_figure(mix):
    study = bound_gap(mix, {"vp": sd.VPSDE(), "cosine": sd.CosineVPSDE()}, steps=(10, 20), n=32, continuous_n_t=8,
                      ode_tol=1e-5)
    fig = plot_bound_gap(study)
    check(fig)
    for ax in fig.axes:
        assert ax.get_legend() is not None  # each panel has its key
        lo = ax.get_ylim()[0]
        reach = min(r["gap"] - 2 * r["se"] for r in study.rows if r["reverse_variance"] in ("", ax.get_title()[18:]))
        assert lo >= min(1.5 * reach, -0.005) - 1e-12  # no room below zero that no error bar reaches


def test_samples_and_image_error_figures(mix):
    x = mix.sample(10000, generator=torch.Generator().manual_seed(0))
    data = mix.sample(10000, generator=torch.Generator().manual_seed(1))
    fig = plotting.plot_samples(x, data, label="dpm_solver++, NFE 20",
                                title="eight_gaussians under vp: exact score, 20 steps (logsnr grid)")
    check(fig)
    ax = fig.axes[0]
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn <= 2 * plotting.MAX_SCATTER  # 10000 points do not bury the data
    rows = [{"sampler": s, "nfe": n, "error": e / n} for s in ("ddim", "heun") for n, e in ((4, 1.0), (10, 0.5),
                                                                                                (25, 0.3), (64, 0.1))]
    orders = [{"sampler": s, "declared_order": 1, "fitted_order": 1.0} for s in ("ddim", "heun")]
    fig = plotting.plot_image_error_vs_steps(rows, orders, {"nfe": 1094, "error": 1.7e-4, "n": 16, "tol": 1e-7})
    check(fig)
    assert_log_axis_readable(fig.axes[0], "x")
    fig.canvas.draw()
    labels = [t for t in fig.axes[0].xaxis.get_ticklabels(minor=True) if t.get_text()]
    assert not labels  # only the NFE ticks are labelled, so none overlap


def test_mixture_command_figure_fits(tmp_path):
    from scoresde.cli import main

    assert main(["mixture", "--n", "200", "--steps", "5", "--out", str(tmp_path / "mix.png")]) == 0
    assert (tmp_path / "mix.png").exists()


def test_log_ticks_on_a_narrow_range():
    fig = plotting._figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.loglog([5, 10, 20], [0.38, 0.45, 0.6])
    plotting._log_ticks(ax)
    assert_log_axis_readable(ax)
    assert math.isfinite(ax.get_ylim()[0])
