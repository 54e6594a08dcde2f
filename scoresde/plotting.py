"""Figures from study results. Every function takes data and returns a matplotlib Figure (or an
animation); none of them trains or samples.

The inputs are the result objects of :mod:`scoresde.studies` (their rows are plain dicts of numbers);
this module reads their fields and imports nothing from the studies. Figures are built with the
object API (``matplotlib.figure.Figure`` on an Agg canvas), so no pyplot state and no backend
choice is involved: ``fig.savefig(path)`` writes the file.
"""
from __future__ import annotations

import math

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_error_vs_steps", "plot_ddim_limit", "plot_trajectories", "animate_trajectories",
           "plot_grid_comparison", "plot_samples", "plot_image_error_vs_steps", "MAX_SCATTER"]

_MARKERS = "osD^v<>pPX*h"


def _figure(**kwargs) -> Figure:
    """A figure on its own Agg canvas (drawable and savable without pyplot)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int):
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _int_ticks(ax, values):
    """Plain integer ticks at the measured step counts / NFEs on a log x-axis (no 3x10^1 clutter)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    vals = sorted({int(v) for v in values})
    if len(vals) > 8:  # keep about 8 labels
        vals = vals[:: math.ceil(len(vals) / 8)]
    ax.xaxis.set_major_locator(FixedLocator(vals))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ref_slope(ax, x, y_anchor, order, color, x_anchor):
    """A dashed line C x^-order through (x_anchor, y_anchor) over the range of x (no legend entry of its own:
    the figure's legend explains the dashes once)."""
    xs = np.array([min(x), max(x)], dtype=float)
    ax.plot(xs, y_anchor * (xs / x_anchor) ** (-order), "--", color=color, lw=1.0, alpha=0.6, label="_nolegend_")


def _log_ticks(ax, axis: str = "y") -> None:
    """Labelled ticks on a log axis that spans less than a decade (matplotlib then labels one or two)."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo <= 0 or hi / lo > 30:
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    subs = (1.0, 2.0, 5.0) if hi / lo > 6 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    target.set_major_locator(LogLocator(subs=subs))
    digits = max(0, -int(math.floor(math.log10(lo))) + (0 if hi / lo > 6 else 1))
    target.set_major_formatter(StrMethodFormatter(f"{{x:.{digits}f}}"))
    target.set_minor_formatter(NullFormatter())


def _clipped_below(ax, x, y, lo, **kw) -> bool:
    """Mark the values of y below the panel's lower limit ``lo`` by a down triangle on the bottom edge
    (the values themselves are in the CSV); returns whether any was marked."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    below = y < lo
    if below.any():
        ax.plot(x[below], np.full(below.sum(), lo), ls="none", marker="v", ms=6, clip_on=False, zorder=5,
                label="_nolegend_", **kw)
    return bool(below.any())


def _local_order(rows: list[dict], fit) -> float | None:
    """Slope between the last two points of a fit: near the declared order once the fit is asymptotic."""
    if fit is None or len(fit.steps_used) < 2:
        return None
    n1, n2 = fit.steps_used[-2:]
    e = {r["steps"]: r["endpoint_error"] for r in rows}
    if e.get(n1, 0) <= 0 or e.get(n2, 0) <= 0:
        return None
    return -math.log(e[n2] / e[n1]) / math.log(n2 / n1)


def plot_error_vs_steps(study, *, title: str | None = None) -> Figure:
    """Endpoint error against steps and NFE (log-log, fitted orders in the legend, dashed declared
    slopes), and the distribution error against NFE beside the two-sample level when measured."""
    from matplotlib.lines import Line2D

    rows = study.rows
    labels = list(dict.fromkeys(r["method"] for r in rows))
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    has_dist = any("w2" in r for r in rows)
    has_logp = any("mean_log_density" in r for r in rows)
    npanels = 2 + int(has_dist) + int(has_logp)
    nrows = 1 if npanels <= 2 else 2
    fig = _figure(figsize=(11, 4.6 * nrows + 1.0))
    axes = fig.subplots(nrows, 2, squeeze=False)
    axes = axes.flatten()[:npanels]
    colors = dict(zip(labels, _colors(len(labels)), strict=False))
    styles = dict(zip(grids, ["-", ":", "-.", (0, (5, 1))], strict=False))
    series = []  # (kw, nfe, log-density) for the clipped-value marks
    for k, label in enumerate(labels):
        for grid in grids:
            sel = [r for r in rows if r["method"] == label and r["grid"] == grid]
            if not sel:
                continue
            steps = np.array([r["steps"] for r in sel], float)
            nfe = np.array([r["nfe"] for r in sel], float)
            err = np.array([r["endpoint_error"] for r in sel], float)
            fit = study.fits.get((label, grid))
            declared = study.declared.get(label)
            stoch = sel[0].get("stochastic", False)
            name = label + (f" [{grid}]" if len(grids) > 1 else "") + (" (strong)" if stoch else "")
            local = _local_order(sel, fit)
            fit_txt = "fitted n/a" if fit is None else f"fitted {fit.order:.2f}" + (
                "" if local is None else f", last {local:.2f}")
            dec_txt = "?" if declared is None else f"{declared:g}"
            kw = dict(color=colors[label], marker=_MARKERS[k % len(_MARKERS)], ms=4, ls=styles[grid], lw=1.5)
            # one legend entry per series (the figure's), whatever panel draws it
            kw["label"] = f"{name}: order {dec_txt}, {fit_txt}"
            axes[0].loglog(steps, err, **kw)
            axes[1].loglog(nfe, err, **kw)
            if declared and grid == grids[0]:
                _ref_slope(axes[0], steps, err[-1], float(declared), colors[label], steps[-1])
            if has_dist:
                axes[2].loglog(nfe, [r["w2"] for r in sel], **kw)
            if has_logp:
                y = [r["mean_log_density"] for r in sel]
                axes[-1].semilogx(nfe, y, **kw)
                series.append((colors[label], nfe, y))
    lo = min(r["endpoint_error"] for r in rows if r["endpoint_error"] > 0) / 5
    for key, ref in study.references.items():
        if ref.error > lo:  # draw a reference's own error only where it is within the plotted range
            what = "reverse-SDE" if key == "reverse_sde" else "PF-ODE"
            axes[0].axhline(ref.error, color="0.35", lw=1.0, ls=":",
                            label=f"{what} reference's own error (no fit below 10x it)")
    axes[0].set(xlabel="steps", ylabel="mean endpoint error |x_N - x_ref|",
                title="endpoint error vs steps (dashed: declared order)")
    axes[1].set(xlabel="NFE (model calls)", ylabel="mean endpoint error", title="endpoint error vs NFE")
    if has_dist:
        f = study.floors
        if "w2" in f:
            sd, draws = f.get("w2_sd", 0.0), int(f.get("draws", 1))
            from matplotlib.patches import Patch

            axes[2].axhspan(max(f["w2"] - 2 * sd, 1e-12), f["w2"] + 2 * sd, color="0.5", alpha=0.2, lw=0)
            mean = axes[2].axhline(f["w2"], color="k", ls="--", lw=1, label="_nolegend_")
            axes[2].legend([(Patch(facecolor="0.82", edgecolor="0.6", lw=0.6), mean)], [f"fresh data vs data: mean +- 2 sd ({draws} sets)"], fontsize=8,
                           loc="upper right")
        axes[2].set(xlabel="NFE", ylabel="exact W2 to data", title="exact W2 to a data set of the same size")
        _log_ticks(axes[2])
    if has_logp:
        ax = axes[-1]
        keys = []
        if study.data_log_density is not None:
            keys.append(ax.axhline(study.data_log_density, color="k", ls="--", lw=1, label="data (exact)"))
        ylo = min(r["mean_log_density"] for r in rows)
        hi = study.data_log_density if study.data_log_density is not None else max(r["mean_log_density"] for r in rows)
        bottom = max(ylo, hi - 6)
        ax.set_ylim(bottom, hi + 0.5)
        clipped = [_clipped_below(ax, x, y, bottom, color=c) for c, x, y in series]
        if any(clipped):
            keys += ax.plot([], [], ls="none", marker="v", color="0.4", label=f"below {bottom:.1f} (value in the CSV)")
        if keys:
            ax.legend(handles=keys, fontsize=8, loc="lower right")
        ax.set(xlabel="NFE", ylabel="mean log p_0(samples)", title="exact log-density of samples")
    ticks = sorted({r["steps"] for r in rows})
    while ticks[-1] < max(r["nfe"] for r in rows):  # NFE axes: the step ticks, doubled up to the largest NFE
        ticks.append(2 * ticks[-1])
    for k, ax in enumerate(axes):
        ax.grid(True, which="both", alpha=0.25)
        _int_ticks(ax, ticks if k else [r["steps"] for r in rows])
    handles, texts = axes[0].get_legend_handles_labels()
    handles.append(Line2D([], [], color="0.4", ls="--", lw=1.0))
    texts.append("dashed: slope of the declared order")
    ncol = 2
    height = fig.get_figheight()
    foot = 0.34  # inches for the two-line note under the legend
    fig.legend(handles, texts, loc="lower center", ncol=ncol, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, foot / height))
    n_leg_rows = math.ceil(len(texts) / ncol)
    fig.text(0.5, 0.04 / height, "order: declared. fitted: log-log slope over the largest step counts whose error "
             "is above 10x the reference's own error.\nlast: slope between the two largest; a fit below the "
             "declared order with a higher last slope has not yet reached the asymptotic range.", ha="center",
             va="bottom", fontsize=7.5, color="0.25")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, (foot + 0.2 * n_leg_rows + 0.1) / height, 1, 1))
    return fig


def plot_ddim_limit(limit, eta=None, *, title: str | None = None) -> Figure:
    """DDIM(eta=0) error vs steps per SDE with the fitted slope and a dashed -1 slope; the one-step
    identity as text; and, with ``eta``, the eta family's mean exact log-density against steps.

    The eta family's W2 to data is not drawn (it stays in the CSV): at the sizes a figure can afford
    its sampling noise (about 0.03 at 1000 points) exceeds the differences between the family's members
    from 20 steps on, so the panel showed noise. The exact log-density resolves the trend.
    """
    ncols = 1 + (1 if eta is not None else 0)
    fig = _figure(figsize=(5.4 * ncols, 4.6))
    axes = fig.subplots(1, ncols, squeeze=False)
    axes = axes[0]
    ax = axes[0]
    colors = _colors(len(limit.convergence))
    slopes = limit.slopes()
    for k, (name, study) in enumerate(limit.convergence.items()):
        steps = np.array([r["steps"] for r in study.rows], float)
        err = np.array([r["endpoint_error"] for r in study.rows], float)
        s = slopes[name]
        # the discrete 1000-step schedule is VP's own: thin and dashed on top, so both curves show
        style = dict(lw=1.0, ls="--", ms=6, mfc="none") if k else dict(lw=2.2, ms=4)
        ax.loglog(steps, err, marker=_MARKERS[k], color=colors[k], **style,
                  label=f"{name}: slope {s:.3f}" if s is not None else f"{name}: slope n/a")
    study0 = next(iter(limit.convergence.values()))
    steps0 = np.array([r["steps"] for r in study0.rows], float)
    err0 = np.array([r["endpoint_error"] for r in study0.rows], float)
    ax.loglog(steps0, err0[0] * 1.6 * steps0[0] / steps0, "k:", lw=1, label="C / N (slope -1)")
    worst = max(r["rel_diff"] for r in limit.identity)
    eps = limit.identity[0]["machine_eps"]
    worst_f = max(r["factor_rel_diff"] for r in limit.identity)
    ax.text(0.03, 0.03, f"one DDIM step vs exponential Euler:\nmax rel. diff {worst:.1e} (eps {eps:.1e})\n"
            f"coefficient vs quadrature: {worst_f:.1e}", transform=ax.transAxes, fontsize=8, va="bottom",
            bbox=dict(boxstyle="round", fc="white", ec="0.7"))
    ax.set(xlabel="steps N", ylabel="mean |x_N - x_ODE|", title="DDIM(eta=0) -> PF-ODE solution")
    _int_ticks(ax, steps0)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="both", alpha=0.25)
    if eta is not None:
        ax = axes[1]
        etas = list(dict.fromkeys(r["eta"] for r in eta.rows))
        cmap = matplotlib.colormaps["viridis"]
        if eta.data_log_density is not None:
            ax.axhline(eta.data_log_density, color="k", ls="--", lw=1, label="data (exact)")
        lo = min(r["mean_log_density"] for r in eta.rows)
        hi = eta.data_log_density if eta.data_log_density is not None else max(r["mean_log_density"] for r in eta.rows)
        bottom = max(lo, hi - 6)
        ax.set_ylim(bottom, hi + 0.5)
        clipped = False
        for k, e in enumerate(etas):
            sel = [r for r in eta.rows if r["eta"] == e]
            c = cmap(0.9 * k / max(1, len(etas) - 1))
            steps = [r["steps"] for r in sel]
            y = [r["mean_log_density"] for r in sel]
            ax.semilogx(steps, y, marker="o", ms=4, color=c, label=f"eta={e:g}" + (" (ODE)" if e == 0 else
                                                                               " (DDPM)" if e == 1 else ""))
            clipped |= _clipped_below(ax, steps, y, bottom, color=c)
        if clipped:
            ax.plot([], [], ls="none", marker="v", color="0.4", label=f"below {bottom:.1f} (value in the CSV)")
        ax.set(xlabel="steps", ylabel="mean log p_0(samples)", title="DDIM(eta): exact log-density of samples")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, which="both", alpha=0.25)
        _int_ticks(ax, [r["steps"] for r in eta.rows])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _density(ax, log_density, ext, **kw):
    from matplotlib.colors import PowerNorm

    dens = np.exp(log_density.numpy())
    # a power norm lifts the tails so narrow modes and the broad prior both show
    return ax.imshow(dens, origin="lower", extent=ext, cmap="Greys", aspect="equal", interpolation="bilinear",
                     norm=PowerNorm(0.5, vmin=0, vmax=dens.max()), **kw)


def plot_trajectories(traj, *, title: str | None = None) -> Figure:
    """Snapshots of p_t with its score field and every method's particles (top row); the paths over
    the data density (bottom left); a scatter of samples against data (bottom right)."""
    n_snap = len(traj.snapshot_times)
    fig = _figure(figsize=(3.1 * n_snap, 3.1 + 6.0))
    gs = fig.add_gridspec(2, n_snap, height_ratios=[1, 1.9])
    xs, ys = (v.numpy() for v in traj.mesh)
    ext = (xs[0], xs[-1], ys[0], ys[-1])
    labels = list(traj.paths)
    colors = dict(zip(labels, ["tab:red", "k", "tab:blue", "tab:green", "tab:purple", "tab:orange"], strict=False))
    qx, qy = (v.numpy() for v in traj.score_mesh)
    QX, QY = np.meshgrid(qx, qy)
    ticks = [-3, 0, 3] if ext[1] >= 3 else [round(ext[0], 1), 0, round(ext[1], 1)]
    for j, t in enumerate(traj.snapshot_times):
        ax = fig.add_subplot(gs[0, j])
        _density(ax, traj.log_density[j], ext)
        sc = traj.scores[j].numpy()
        mag = np.linalg.norm(sc, axis=-1, keepdims=True)
        unit = sc / np.maximum(mag, 1e-12)  # directions only: the magnitude spans decades near the modes
        ax.quiver(QX, QY, unit[..., 0], unit[..., 1], color="tab:cyan", scale=30, width=0.004, alpha=0.7)
        for label in labels:
            p = traj.state_at(label, t).numpy()
            ax.scatter(p[:, 0], p[:, 1], s=12, color=colors[label], edgecolor="white", lw=0.4, zorder=3,
                       label=label)
        ax.set_title(f"p_t and score, t = {t:.3g}", fontsize=9)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.tick_params(labelsize=7, labelleft=j == 0)
    # the colour key of the particles, once for the whole row
    top = fig.axes[0]
    fig.legend(*top.get_legend_handles_labels(), loc="upper center", ncol=len(labels), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.955), title="particles at time t (arrows: direction of the score)",
               title_fontsize=8, markerscale=1.5)
    ax = fig.add_subplot(gs[1, : max(1, n_snap - 2)])
    _density(ax, traj.log_density[-1], ext)
    for label in labels:
        times, states = traj.paths[label]
        s = states.numpy()
        rough = label == "reverse SDE"
        z = 4 if label == "PF ODE" else 2  # the exact ODE path on top, thin, so the samplers' corners show
        n_show = min(4, s.shape[1]) if rough else s.shape[1]  # rough paths: a few, or they hide the rest
        shown = f"{label} ({n_show} of {s.shape[1]} paths)" if n_show < s.shape[1] else label
        for j in range(n_show):
            ax.plot(s[:, j, 0], s[:, j, 1], color=colors[label], lw=0.6 if rough else (1.0 if z == 4 else 1.6),
                    alpha=0.55 if rough else 0.9, marker="o" if s.shape[0] <= 60 else None, ms=2.5, zorder=z,
                    label=shown if j == 0 else "_nolegend_")
        ax.scatter(s[-1, :n_show, 0], s[-1, :n_show, 1], color=colors[label], s=14, zorder=3, label="_nolegend_")
    x0 = traj.paths[labels[0]][1][0].numpy()
    ax.scatter(x0[:, 0], x0[:, 1], marker="*", s=90, color="gold", edgecolor="k", zorder=4,
               label=f"common x_T ({len(x0)})")
    ax.set(xlim=ext[:2], ylim=ext[2:], title=r"paths from the same x_T over the data density $p_{t_{\min}}$")
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    ax2 = fig.add_subplot(gs[1, max(1, n_snap - 2):])
    if traj.data is not None:
        d = traj.data.numpy()
        ax2.scatter(d[:, 0], d[:, 1], s=2, color="0.6", alpha=0.5, label="data")
    for label, smp in traj.samples.items():
        s = smp.numpy()
        ax2.scatter(s[:, 0], s[:, 1], s=2, color="tab:green", alpha=0.5, label=label)
    ax2.set(xlim=ext[:2], ylim=ext[2:], aspect="equal", title="samples vs data")
    ax2.legend(fontsize=8, loc="upper left", markerscale=4, framealpha=0.9)
    if title:
        fig.suptitle(title, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.925))
    return fig


def animate_trajectories(traj, *, interval: int = 120):
    """A matplotlib ``FuncAnimation`` of p_t with the particles of every method moving from T to t_min
    (save it with ``PillowWriter`` for a GIF)."""
    from matplotlib.animation import FuncAnimation

    xs, ys = (v.numpy() for v in traj.mesh)
    ext = (xs[0], xs[-1], ys[0], ys[-1])
    labels = list(traj.paths)
    colors = dict(zip(labels, ["tab:red", "k", "tab:blue", "tab:green", "tab:purple", "tab:orange"], strict=False))
    fig = _figure(figsize=(5, 5))
    ax = fig.subplots()
    im = _density(ax, traj.frame_log_density[0], ext)
    dots = {label: ax.scatter([], [], s=22, color=colors[label], edgecolor="white", lw=0.5, label=label, zorder=3)
            for label in labels}
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    ax.set_xticks([])
    ax.set_yticks([])
    title = ax.set_title("")

    def update(k):
        t = traj.frame_times[k]
        dens = np.exp(traj.frame_log_density[k].numpy())
        im.set_data(dens)
        im.norm.vmax = dens.max()
        for label in labels:
            dots[label].set_offsets(traj.state_at(label, t).numpy())
        title.set_text(f"p_t and particles, t = {t:.3g}")
        return [im, title, *dots.values()]

    fig.tight_layout()
    return FuncAnimation(fig, update, frames=len(traj.frame_times), interval=interval, blit=False)


def plot_grid_comparison(comp, *, title: str | None = None) -> Figure:
    """Held-out endpoint error against the NFE budget, one panel per sampler, one line per grid,
    the optimised grid in black; the gain over the best named grid is annotated. Fitted-solver rows
    (``fit_solver=True``) are drawn in every panel as a dashed grey line."""
    fitted = sorted((r for r in comp.rows if r["grid"] == "fitted"), key=lambda r: r["nfe_budget"])
    methods = list(dict.fromkeys(r["method"] for r in comp.rows if r["grid"] != "fitted"))
    grids = list(dict.fromkeys(r["grid"] for r in comp.rows if r["grid"] not in ("optimised", "fitted")))
    fig = _figure(figsize=(4.8 * len(methods), 4.4))
    axes = fig.subplots(1, len(methods), squeeze=False)
    colors = dict(zip(grids, _colors(len(grids)), strict=False))
    gains = {(g["method"], g["nfe"]): g for g in comp.gains()}
    for ax, method in zip(axes[0], methods, strict=False):
        for k, grid in enumerate(grids + ["optimised"]):
            sel = sorted((r for r in comp.rows if r["method"] == method and r["grid"] == grid),
                         key=lambda r: r["nfe_budget"])
            if not sel:
                continue
            opt = grid == "optimised"
            ax.semilogy([r["nfe"] for r in sel], [r["error_test"] for r in sel], marker=_MARKERS[k % len(_MARKERS)],
                        color="k" if opt else colors[grid], lw=2.4 if opt else 1.3, ms=5,
                        label="optimised (held-out x_T)" if opt else grid)
            if opt:  # the gains as tick labels of a top axis: never on top of a line
                pos, text = [], []
                for r in sel:
                    g = gains.get((method, r["nfe_budget"]))
                    if g and "gain" in g:
                        pos.append(r["nfe"])
                        text.append(f"x{g['gain']:.1f}")
                if pos:
                    top = ax.secondary_xaxis("top")
                    top.set_xticks(pos, text, fontsize=7.5)
                    top.tick_params(length=2, pad=1)
                    top.set_xlabel("gain of the optimised grid over the best named one", fontsize=8)
        if fitted:  # the same reference line in every panel
            ax.semilogy([r["nfe"] for r in fitted], [r["error_test"] for r in fitted], color="0.45", ls="--", lw=1.8,
                        marker="*", ms=8, label="fitted solver (grid + coefficients)")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # model calls are whole numbers
        ax.set(xlabel="NFE budget", ylabel="mean endpoint error vs PF ODE", title=method)
        ax.grid(True, which="both", alpha=0.25)
    # one legend under the panels: inside them it hides the lines at low error
    handles, labels = axes[0][0].get_legend_handles_labels()
    ncol = min(len(labels), 2 * len(methods))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11 if len(methods) > 1 else 9, wrap=True)
    fig.tight_layout(rect=(0, 0.3 * math.ceil(len(labels) / ncol) / fig.get_figheight(), 1, 1))
    return fig


#: at most this many points of each set in a scatter: more hide whatever is drawn under them
MAX_SCATTER = 2000


def _subset(x, k: int, seed: int):
    x = np.asarray(x, dtype=float)
    if len(x) <= k:
        return x
    return x[np.random.default_rng(seed).choice(len(x), k, replace=False)]


def plot_samples(samples, data=None, *, label: str = "samples", title: str | None = None,
                 max_points: int = MAX_SCATTER) -> Figure:
    """A 2D scatter of ``samples`` (``(n, 2)``) over ``data``: at most ``max_points`` of each (a random
    subset, said in the legend), the data drawn on top as small dark points so that neither hides the other."""
    fig = _figure(figsize=(5.2, 5.4))
    ax = fig.subplots()
    s = _subset(samples, max_points, 0)
    shown = f" ({len(s)} of {len(samples)} shown)" if len(s) < len(samples) else ""
    ax.scatter(s[:, 0], s[:, 1], s=4, alpha=0.45, color="tab:orange", lw=0, label=f"{label}{shown}")
    if data is not None:
        d = _subset(data, max_points, 1)
        dshown = f" ({len(d)} of {len(data)} shown)" if len(d) < len(data) else ""
        ax.scatter(d[:, 0], d[:, 1], s=1.5, alpha=0.6, color="k", lw=0, label=f"data{dshown}", zorder=3)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=3, fontsize=8, framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def plot_image_error_vs_steps(rows: list[dict], orders: list[dict], ref: dict) -> Figure:
    """Endpoint error of each sampler on an image model against NFE (rows ``{sampler, nfe, error}``; orders
    ``{sampler, declared_order, fitted_order}``; ``ref``: the reference's ``nfe``, ``error``, ``n``, ``tol``)."""
    fig = _figure(figsize=(6.4, 4.6), constrained_layout=True)
    ax = fig.subplots()
    for k, o in enumerate(orders):
        r = [row for row in rows if row["sampler"] == o["sampler"]]
        fitted = o["fitted_order"]
        fit_txt = "n/a" if fitted is None or not math.isfinite(fitted) else f"{fitted:.2f}"
        ax.loglog([x["nfe"] for x in r], [x["error"] for x in r], marker=_MARKERS[k % len(_MARKERS)],
                  label=f"{o['sampler']} (declared {o['declared_order']}, fitted {fit_txt})")
    ax.axhline(ref["error"], color="grey", ls=":", lw=1, label=f"reference's own error ({ref['error']:.1e})")
    ax.set_xlabel("model calls (NFE)")
    ax.set_ylabel("mean |x - x_ref| over the pixels")
    ax.set_title(f"Trained U-Net, digits: error against its own PF-ODE solution\n({ref['n']} x_T, float64, "
                 f"dopri5 reference at tol {ref['tol']:g}, NFE {ref['nfe']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    _int_ticks(ax, [row["nfe"] for row in rows])
    ax.legend(fontsize=8)
    return fig


def save_figure(fig: Figure, path, *, dpi: int = 110) -> None:
    """``fig.savefig(path)`` through a temporary file beside it, renamed into place (never half a PNG)."""
    from ._files import save_figure as save_atomically

    save_atomically(fig, path, dpi=dpi)
