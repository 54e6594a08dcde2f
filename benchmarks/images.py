"""Image benchmark on scikit-learn's 8x8 digits: train a small U-Net and DiT, then sample quality and speed.

1. Training: a small U-Net and a small DiT (sizes in ``NETS`` below: smaller than the nets' defaults so that
   a CPU budget of minutes gives recognisable digits), each trained for a fixed number of steps on the
   training split (1437 images) under the VP SDE with the eps target inside EDM's preconditioning (the
   trainer's default), EMA of the weights; saved as runs under ``--runs`` and reused when present.
2. Sample quality: the Frechet distance (:func:`scoresde.studies.images.frechet_distance`) on the 64
   penultimate features of a small CNN classifier trained on the training split (its test accuracy printed)
   between ``--n`` samples and the 360 test images, for ddim, dpm_solver++ (2M), unipc (bh2, order 3 with
   UniC) and heun at NFE 5, 10, 20, 50 and the adaptive PF-ODE (dopri5, rtol = atol = 1e-5), every sampler
   from the same x_T, samples quantised to the 17 grey levels (the DiT at NFE 20 only). The floor: the distance between
   ``--n`` training images and the same test images (the same sample sizes, so the same finite-sample bias),
   mean and spread over three draws. Goal: within 2x of the floor at NFE 20.
3. Trainer throughput against a bare training loop on the same U-Net (same batch, same eps loss, same AdamW;
   no clipping, EMA or logging), alternated in rounds so both see the same machine load. Target >= 0.9.

Results: ``benchmarks/results/images.txt`` and ``images.csv``. The figures (sample grid, error against steps
on the trained U-Net) are written by :func:`job_images` (``python benchmarks/make_figures.py --only images``).

Run: ``python benchmarks/images.py`` (about 10 minutes on 2 CPU cores; ``--quick`` about 2 minutes).
"""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from _throughput import alternating_throughput  # noqa: E402  (benchmarks/ is the script folder)

import scoresde as sd
from scoresde.config import TrainConfig
from scoresde.images import from_levels, image_grid, to_levels
from scoresde.images.datasets import DIGITS_LEVELS, digits
from scoresde.studies.distances import endpoint_error
from scoresde.studies.images import frechet_distance, train_feature_classifier
from scoresde.studies.orders import fit_order
from scoresde.studies.references import reference_pf_ode
from scoresde.training import CHECKPOINT_NAME, Trainer, build_from_spec, load_model

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "benchmarks" / "results" / "image_runs"
RESULTS = ROOT / "benchmarks" / "results"

NETS = {
    "unet": {"net": "unet", "net_kwargs": {"channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1}},
    "dit": {"net": "dit", "net_kwargs": {"patch_size": 2, "hidden_size": 96, "depth": 4, "num_heads": 4,
                                         "emb_dim": 96}},
}
SAMPLERS = ("ddim", "dpm_solver++", "unipc", "heun")
NFES = (5, 10, 20, 50)
#: training steps per net (batch 128): ~60-70 ms a step on 2 idle cores for either net
STEPS, QUICK_STEPS = 2000, 400
ADAPTIVE = {"method": "ode", "solver": "dopri5", "rtol": 1e-5, "atol": 1e-5}


def train_config(name: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(data="digits", sde="vp", parameterization="eps", batch_size=128, lr=2e-3, warmup=100,
                       ema_decay=0.995, seed=seed, steps=10**9, ckpt_every=10**9, progress=False,
                       tensorboard=False, **NETS[name])


def train_for(name: str, steps: int, runs: Path, seed: int = 0, log=print) -> Path:
    """Train ``NETS[name]`` for ``steps`` steps and save the run ``runs/name``."""
    out = runs / name
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(train_config(name, seed), out)
    start = time.perf_counter()
    trainer.train(steps)
    spent = time.perf_counter() - start
    trainer.save_checkpoint()
    n_params = sum(p.numel() for p in trainer.net.parameters())
    log(f"[train] {name}: {n_params / 1e6:.2f} M parameters, {trainer.step} steps of batch "
        f"{trainer.config.batch_size} in {spent:.0f} s ({trainer.step / spent:.2f} steps/s); last loss "
        f"{trainer.history[-1].loss:.2f} -> {out}")
    return out


def ensure_runs(runs: Path, steps: int, *, retrain: bool = False, names=tuple(NETS), log=print) -> dict[str, Path]:
    """The run folders ``runs/NAME`` of the nets, trained for ``steps`` steps each where absent (or ``retrain``)."""
    found = {}
    for name in names:
        if retrain or not (runs / name / CHECKPOINT_NAME).exists():
            if retrain and (runs / name / CHECKPOINT_NAME).exists():
                (runs / name / CHECKPOINT_NAME).unlink()
            train_for(name, steps, runs, log=log)
        else:
            log(f"[train] {name}: reusing the run in {runs / name}")
        found[name] = runs / name
    return found


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def steps_for(method: str, nfe: int) -> int:
    """Steps that spend about ``nfe`` model calls: Heun makes 2N - 1 (Euler last step), the others N."""
    return (nfe + 1) // 2 if method == "heun" else nfe


def prior(model: sd.ScoreModel, n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return model.sde.prior_sample((n, *model.event_shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def generate(model: sd.ScoreModel, method: str, nfe: int | None, x_T: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Samples quantised to the digits' levels from ``x_T`` (``nfe=None``: the adaptive PF-ODE), and the NFE spent."""
    with torch.no_grad():
        if nfe is None:
            opts = {k: v for k, v in ADAPTIVE.items() if k != "method"}
            res = sd.sample(model, model.sde, ADAPTIVE["method"], None, x_T=x_T, **opts)
        else:
            res = sd.sample(model, model.sde, method, steps_for(method, nfe), x_T=x_T)
    return from_levels(to_levels(res.samples, DIGITS_LEVELS), DIGITS_LEVELS), res.nfe


def feature_net(seed: int = 0, log=print):
    train, test = digits("train"), digits("test")
    clf = train_feature_classifier(train.x, train.y, epochs=30, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        acc = float((clf(test.x).argmax(1) == test.y).double().mean())
        feats = {"train": clf.features(train.x), "test": clf.features(test.x)}
    log(f"[fd] feature CNN (64 features) trained on the {len(train.x)} training images: test accuracy {acc:.4f}")
    return clf, feats, acc


def fd_floor(feats: dict, n: int, seed: int, draws: int = 3) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    vals = [frechet_distance(feats["train"][torch.randperm(len(feats["train"]), generator=g)[:n]], feats["test"])
            for _ in range(draws)]
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


def quality_table(name: str, model, clf, feats, floor: float, n: int, seed: int, nfes, rows: list, *,
                  adaptive: bool = True, log=print) -> None:
    x_T = prior(model, n, seed)
    log(f"[fd] {name}: Frechet distance to the test split ({n} samples, same x_T for all; floor {floor:.2f})")
    log(f"[fd]   {'sampler':14s}" + "".join(f"{'NFE ' + str(k):>16s}" for k in nfes))
    for method in SAMPLERS:
        cells = []
        for nfe in nfes:
            start = time.perf_counter()
            x, spent = generate(model, method, nfe, x_T)
            with torch.no_grad():
                d = frechet_distance(clf.features(x), feats["test"])
            rows.append({"net": name, "sampler": method, "nfe_target": nfe, "nfe": spent, "fd": d, "floor": floor,
                         "ratio": d / floor, "seconds": time.perf_counter() - start})
            cells.append(f"{d:8.2f} ({d / floor:4.1f}x)")
        log(f"[fd]   {method:14s}" + "".join(f"{c:>16s}" for c in cells))
    if not adaptive:
        return
    start = time.perf_counter()
    x, spent = generate(model, "ode", None, x_T)
    with torch.no_grad():
        d = frechet_distance(clf.features(x), feats["test"])
    rows.append({"net": name, "sampler": "ode dopri5 1e-5", "nfe_target": "", "nfe": spent, "fd": d, "floor": floor,
                 "ratio": d / floor, "seconds": time.perf_counter() - start})
    log(f"[fd]   adaptive dopri5 (rtol = atol = 1e-5, NFE {spent}): {d:.2f} ({d / floor:.1f}x the floor)")


# ---------------------------------------------------------------------------------------------
# throughput
# ---------------------------------------------------------------------------------------------
def throughput(rounds: int, steps_per_round: int, seed: int = 0) -> tuple[float, float]:
    """Steps/s of the Trainer and of a bare eps-MSE loop on the same preconditioned U-Net and batch."""
    cfg = train_config("unet", seed)
    trainer = Trainer(cfg, None)
    sde, cfg = trainer.sde, trainer.config
    net = build_from_spec(trainer.net_spec, cfg, sde)
    net.load_state_dict(trainer.net.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    data, g = digits("train").x, torch.Generator().manual_seed(seed + 1)

    def bare():
        x0 = data[torch.randint(len(data), (cfg.batch_size,), generator=g)]
        t = sde.t_min + (sde.T - sde.t_min) * torch.rand(cfg.batch_size, generator=g)
        eps = torch.randn(x0.shape, generator=g)
        alpha, sigma = sde.alpha_sigma(t)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
        loss = (net(x_t, t) - eps).pow(2).flatten(1).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return alternating_throughput(trainer, bare, rounds, steps_per_round, warmup=3)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def sample_grid_figure(model, out: Path, *, n: int = 8, seed: int = 0, nfes=NFES) -> list[Path]:
    """``images_samples.png``: rows = samplers, columns = NFE and the adaptive ODE, ``n`` digits per cell, all from
    the same x_T; ``images_samples.csv``: the pictured grey levels (0..16) of every cell."""
    x_T = prior(model, n, seed)
    cols = [*map(str, nfes), "dopri5"]
    cells, rows = {}, []
    ode, ode_nfe = generate(model, "ode", None, x_T)
    for method in SAMPLERS:
        for nfe in nfes:
            cells[method, str(nfe)] = generate(model, method, nfe, x_T)
        cells[method, "dopri5"] = (ode, ode_nfe)
    fig = _figure(figsize=(2.1 * len(cols), 1.25 * len(SAMPLERS) + 0.5), constrained_layout=True)
    axes = fig.subplots(len(SAMPLERS), len(cols), squeeze=False)
    for i, method in enumerate(SAMPLERS):
        for j, col in enumerate(cols):
            x, spent = cells[method, col]
            ax = axes[i][j]
            ax.imshow(image_grid(x, ncol=n // 2, padding=1), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"NFE {spent}" if col != "dopri5" else f"dopri5, NFE {spent}", fontsize=8)
            if j == 0:
                ax.set_ylabel(method, fontsize=9)
            levels = to_levels(x, DIGITS_LEVELS).reshape(len(x), -1)
            rows += [{"sampler": method if col != "dopri5" else "ode dopri5 1e-5", "nfe": spent, "sample": k,
                      "levels": " ".join(map(str, levels[k].tolist()))} for k in range(len(x))]
    fig.suptitle("U-Net on 8x8 digits: the same x_T through each sampler (columns: model calls)", fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "images_samples.png", dpi=110)
    _write_csv(out / "images_samples.csv", rows)
    return [out / "images_samples.png", out / "images_samples.csv"]


def error_vs_steps(model, *, n: int = 16, seed: int = 1, nfes=(4, 6, 10, 16, 25, 40, 64),
                   tol: float = 1e-7) -> tuple[list[dict], list[dict], dict]:
    """Endpoint error (mean per-sample Euclidean, 64 pixels) of each sampler against the model's own PF-ODE from
    the same ``n`` x_T (dopri5 in log-SNR at rtol = atol = ``tol``), in float64; fitted orders over the
    asymptotic range (:func:`~scoresde.studies.orders.fit_order`, floor = the reference's own error)."""
    model.net.double()
    try:
        x_T = prior(model, n, seed, dtype=torch.float64)
        sde = model.sde
        ref = reference_pf_ode(model, x_T, sde.T, sde.t_min, tol=tol)
        rows, orders = [], []
        for method in SAMPLERS:
            steps, errs = [], []
            for nfe in nfes:
                N = steps_for(method, nfe)
                with torch.no_grad():
                    res = sd.sample(model, sde, method, N, x_T=x_T)
                err = endpoint_error(res.samples, ref.x)
                rows.append({"sampler": method, "steps": N, "nfe": res.nfe, "error": err,
                             "declared_order": res.convergence_order})
                steps.append(N)
                errs.append(err)
            fit = fit_order(steps, errs, floor=ref.error)
            orders.append({"sampler": method, "declared_order": rows[-1]["declared_order"],
                           "fitted_order": math.nan if fit is None else fit.order,
                           "stderr": math.nan if fit is None else fit.stderr,
                           "steps_used": "" if fit is None else " ".join(map(str, fit.steps_used))})
        return rows, orders, {"nfe": ref.nfe, "error": ref.error, "n": n, "tol": tol}
    finally:
        model.net.float()


def error_figure(rows, orders, ref, out: Path) -> list[Path]:
    from scoresde.plotting import plot_image_error_vs_steps

    fig = plot_image_error_vs_steps(rows, orders, ref)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "images_error_vs_steps.png", dpi=110)
    _write_csv(out / "images_error_vs_steps.csv", rows)
    _write_csv(out / "images_error_vs_steps_orders.csv", orders)
    return [out / "images_error_vs_steps.png", out / "images_error_vs_steps.csv",
            out / "images_error_vs_steps_orders.csv"]


def job_images(out: Path, runs: Path = RUNS, *, seed: int = 0, quick_steps: int = QUICK_STEPS, log=print):
    """The ``images`` figures from the U-Net run in ``runs`` (trained with the quick budget when absent)."""
    ensure_runs(Path(runs), quick_steps, names=("unet",), log=log)
    model, _ = load_model(Path(runs) / "unet")
    paths = sample_grid_figure(model, Path(out), seed=seed)
    rows, orders, ref = error_vs_steps(model)
    for o in orders:
        log(f"[orders] {o['sampler']:13s} declared {o['declared_order']}, fitted {o['fitted_order']:.2f} "
            f"+- {o['stderr']:.2f} over steps {o['steps_used']}")
    return paths + error_figure(rows, orders, ref, Path(out)), (rows, orders, ref)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="about 2 minutes: short training, fewer samples")
    p.add_argument("--runs", default=str(RUNS), help="folder of the runs (reused when present)")
    p.add_argument("--retrain", action="store_true", help="train again even when the runs exist")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per net (default {STEPS}; quick {QUICK_STEPS})")
    p.add_argument("--n", type=int, default=None, help="samples per Frechet distance (default 1000; quick 360)")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/images[_quick])")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else STEPS)
    n = args.n if args.n is not None else (360 if args.quick else 1000)
    stem = Path(args.out) if args.out else RESULTS / ("images_quick" if args.quick else "images")
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    start = time.perf_counter()
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads; digits 8x8, 17 levels; VP SDE, eps target, "
        f"EDM preconditioning, EMA {train_config('unet').ema_decay}")
    runs = ensure_runs(Path(args.runs), steps, retrain=args.retrain, log=log)

    sps_trainer, sps_bare = throughput(rounds=3 if args.quick else 5, steps_per_round=5 if args.quick else 10)
    log(f"[speed] U-Net batch 128: trainer {sps_trainer:.2f} steps/s, bare loop {sps_bare:.2f} steps/s, ratio "
        f"{sps_trainer / sps_bare:.3f} (target >= 0.9)")

    clf, feats, acc = feature_net(args.seed, log=log)
    floor, floor_sd = fd_floor(feats, n, args.seed)
    log(f"[fd] floor: {n} training images vs the 360 test images: {floor:.2f} +- {floor_sd:.2f} (3 draws)")
    rows: list[dict] = []
    for name, run in runs.items():
        model, _ = load_model(run)
        # the DiT's table at NFE 20 only (the goal's column), to stay within the time budget
        nfes, adaptive = (NFES, True) if name == "unet" else ((20,), False)
        quality_table(name, model, clf, feats, floor, n, args.seed + 7, nfes, rows, adaptive=adaptive, log=log)
    for name in runs:
        r20 = [r for r in rows if r["net"] == name and r["nfe_target"] == 20]
        if r20:
            best = min(r20, key=lambda r: r["fd"])
            met = "met" if best["ratio"] <= 2 else "NOT met"
            log(f"[goal] {name} at NFE 20: best {best['sampler']} {best['fd']:.2f} = {best['ratio']:.2f}x the floor "
                f"{floor:.2f} (goal <= 2x: {met})")
    log(f"[time] {time.perf_counter() - start:.0f} s in all; classifier test accuracy {acc:.4f}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    _write_csv(stem.with_suffix(".csv"), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
