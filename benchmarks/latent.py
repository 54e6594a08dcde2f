"""Latent against pixel diffusion on the digits at 32x32: sample quality, sampling cost, reconstruction floor.

1. Data: scikit-learn's 8x8 digits upsampled to 32x32 (bilinear), training split (1437) and test split (360).
2. The autoencoder (:mod:`scoresde.latent`): diffusers' AutoencoderKL, widths 16-32-32 (f = 4), 4 latent
   channels (latent 4x8x8), beta = 1e-4 on the per-pixel KL, EMA; its scale factor 1 / std of the latents.
3. Two score models at an equal training budget (same steps, batch, optimiser, SDE, eps target, EDM
   preconditioning, EMA): a U-Net on the pixels (1x32x32, widths 16-32-32) and a U-Net on the scaled
   latents (4x8x8, widths 16-32).
4. Quality: the Frechet distance (:func:`scoresde.studies.images.frechet_distance`) on the 64 features of the
   package's digits feature network (the small CNN of ``benchmarks/images.py``, trained on the 8x8 training
   split), applied to images brought back to 8x8 by 4x4 average pooling; every set is compared with the
   1437 training images, at 360 images (the size of the test split) so every distance has the same
   finite-sample bias. Floors: the test images against the training images (pixel floor) and the
   autoencoder's reconstructions of the test images against the training images (reconstruction floor).
   Samples: dpm_solver++ (2M) at NFE 10, 20, 50 from seeded x_T, latent samples decoded.
5. Cost: seconds per image of sampling at NFE 20 (the latent's including its decoding), both in this run,
   and their ratio.

Goals (issue 21): latent within 1.5x of the pixel Frechet distance at NFE 20, at less than half its sampling
cost per image; reconstruction floor within 1.2x of the pixel floor.

6. ``--study RUN``: the error-against-steps study of ``benchmarks/images.py`` (each sampler's endpoint against
   the model's own PF-ODE by dopri5, float64, fitted orders) on a saved latent run (``scoresde train --latent``),
   in the latent space; results in ``benchmarks/results/latent_study.txt``.

Run: ``python benchmarks/latent.py`` (about 15-25 minutes on 2 shared CPU cores; ``--quick`` a few minutes,
figures not meaningful). Results: ``benchmarks/results/latent.txt`` (``--quick``: ``latent_quick.txt``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import scoresde as sd
from scoresde._files import save_text
from scoresde.config import TrainConfig
from scoresde.images.datasets import digits
from scoresde.latent import AutoencoderConfig, AutoencoderTrainer, autoencoder_images, latent_dataset, load_autoencoder
from scoresde.studies.images import frechet_distance, train_feature_classifier
from scoresde.training import TensorData, Trainer

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (10, 20, 50)
METHOD = "dpm_solver++"
N = 360
PIXEL_NET = {"channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1}
LATENT_NET = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1}
BUDGETS = {"full": {"ae_steps": 600, "steps": 500, "batch": 64},
           "quick": {"ae_steps": 30, "steps": 20, "batch": 16}}


def train_config(net_kwargs: dict, steps: int, batch: int) -> TrainConfig:
    return TrainConfig(data="benchmark", sde="vp", parameterization="eps", net="unet", net_kwargs=net_kwargs,
                       batch_size=batch, lr=2e-3, warmup=50, ema_decay=0.99, steps=steps, ckpt_every=10**9,
                       progress=False, tensorboard=False)


def train_model(name: str, data, net_kwargs: dict, steps: int, batch: int, log) -> tuple[sd.ScoreModel, float]:
    trainer = Trainer(train_config(net_kwargs, steps, batch), data=data)
    start = time.perf_counter()
    trainer.train()
    spent = time.perf_counter() - start
    n_params = sum(p.numel() for p in trainer.net.parameters())
    log(f"[train] {name}: U-Net {n_params / 1e6:.2f} M parameters on {tuple(data.event_shape)}, {steps} steps of batch "
        f"{batch} in {spent:.0f} s; last loss {trainer.history[-1].loss:.3g}")
    trainer.ema.module.eval()
    return trainer.score_model(), spent


def features_of(clf, x: torch.Tensor) -> torch.Tensor:
    """The digits feature network on 32x32 images brought back to 8x8 (4x4 average pooling)."""
    with torch.no_grad():
        return clf.features(F.avg_pool2d(x.float(), 4))


def sample_images(model, shape, codec, n: int, nfe: int, seed: int) -> tuple[torch.Tensor, float]:
    """``n`` images from ``model`` (decoded by ``codec`` when given) and the seconds it took."""
    start = time.perf_counter()
    with torch.no_grad():
        x_T = model.sde.prior_sample((n, *shape), generator=torch.Generator().manual_seed(seed))
        res = sd.sample(model, model.sde, METHOD, nfe, x_T=x_T)
        x = res.samples if codec is None else codec.decode(res.samples)
    return x.clamp(-1, 1), time.perf_counter() - start


def study(run: str, out: Path) -> int:
    """The error-against-steps study of ``benchmarks/images.py`` on a latent run, in its latent space."""
    from images import error_vs_steps  # noqa: E402  (benchmarks/ is the script folder)

    from scoresde.training import load_model

    model, cfg = load_model(run)
    start = time.perf_counter()
    nfes = (4, 6, 10, 16, 25, 40)
    rows, orders, ref = error_vs_steps(model, nfes=nfes, tol=1e-6)
    lines = [f"# python benchmarks/latent.py --study {run}: latent {tuple(model.event_shape)} of {cfg.data}",
             f"# endpoint error (mean per-sample Euclidean over the latent) against the PF-ODE by dopri5 at rtol = atol = "
             f"1e-6 ({ref['nfe']} calls, its own error {ref['error']:.2e}), {ref['n']} x_T, float64",
             "sampler         " + "".join(f"{'NFE~' + str(k):>10s}" for k in nfes) + "   fitted order (declared)"]
    for o in orders:
        errs = [r["error"] for r in rows if r["sampler"] == o["sampler"]]
        lines.append(f"{o['sampler']:15s} " + "".join(f"{e:10.2e}" for e in errs)
                     + f"   {o['fitted_order']:.2f} +- {o['stderr']:.2f} ({o['declared_order']})")
    lines.append(f"# {time.perf_counter() - start:.0f} s")
    print("\n".join(lines))
    save_text("\n".join(lines) + "\n", out)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results file (default benchmarks/results/latent[_quick].txt)")
    p.add_argument("--study", default=None, metavar="RUN", help="run the error-against-steps study on a latent run")
    args = p.parse_args(argv)
    if args.study:
        return study(args.study, Path(args.out) if args.out else RESULTS / "latent_study.txt")
    budget = BUDGETS["quick" if args.quick else "full"]
    out = Path(args.out) if args.out else RESULTS / ("latent_quick.txt" if args.quick else "latent.txt")
    lines: list[str] = []

    def log(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    t0 = time.perf_counter()
    log(f"# python benchmarks/latent.py{' --quick' if args.quick else ''}: torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, 2 CPU cores shared with other jobs (timings are not idle figures)")
    log(f"# budget: autoencoder {budget['ae_steps']} steps of batch 32; each score model {budget['steps']} steps of "
        f"batch {budget['batch']}; {METHOD}; {N} samples per NFE")
    train32 = autoencoder_images("digits", 32)
    test32 = autoencoder_images("digits", 32, split="test")

    # the autoencoder
    ae_dir = RESULTS / "latent_runs" / ("ae_quick" if args.quick else "ae")
    ae_cfg = AutoencoderConfig(steps=budget["ae_steps"], ckpt_every=10**6)
    start = time.perf_counter()
    if (ae_dir / "autoencoder.json").is_file():
        codec = load_autoencoder(ae_dir)
        if codec.record["config"] != ae_cfg.to_dict():
            raise SystemExit(f"{ae_dir} holds another configuration; remove it")
        log(f"[ae] reusing {ae_dir}")
    else:
        AutoencoderTrainer(ae_cfg, ae_dir).train()
        codec = load_autoencoder(ae_dir)
    rec = codec.record
    log(f"[ae] AutoencoderKL widths {list(ae_cfg.channels)}, latent {tuple(rec['latent_shape'])}, "
        f"{sum(q.numel() for q in codec.vae.parameters()) / 1e6:.2f} M parameters, {ae_cfg.steps} steps "
        f"({time.perf_counter() - start:.0f} s); scale factor {rec['scale_factor']:.4f}; reconstruction MSE train "
        f"{rec['recon_mse_train']:.4g}, test {rec['recon_mse_test']:.4g} (pixels in [-1, 1])")
    latents = latent_dataset(codec)
    log(f"[ae] scaled training latents: mean {float(latents.x.mean()):.3f}, std {latents.std():.4f}")

    # the feature network and the floors
    small = digits("train")
    clf = train_feature_classifier(small.x, small.y, epochs=30, generator=torch.Generator().manual_seed(0))
    ref = features_of(clf, train32.x)
    with torch.no_grad():
        acc = float((clf(F.avg_pool2d(test32.x, 4)).argmax(1) == test32.y).double().mean())
    pixel_floor = frechet_distance(features_of(clf, test32.x), ref)
    recon_test = codec.decode(codec.encode(test32.x)).clamp(-1, 1)
    recon_floor = frechet_distance(features_of(clf, recon_test), ref)
    log(f"[fd] feature network: test accuracy {acc:.4f} on the pooled 32x32 test images")
    log(f"[floor] pixel floor (test vs train) {pixel_floor:.2f}; reconstruction floor (reconstructed test vs train) "
        f"{recon_floor:.2f}: ratio {recon_floor / pixel_floor:.3f} (goal <= 1.2: {'met' if recon_floor <= 1.2 * pixel_floor else 'not met'})")

    # the two score models at one budget
    pixel_model, pixel_train = train_model("pixel", TensorData(train32.x, name="digits@32"), PIXEL_NET,
                                           budget["steps"], budget["batch"], log)
    latent_model, latent_train = train_model("latent", latents, LATENT_NET, budget["steps"], budget["batch"], log)

    fd = {}
    cost = {}
    for name, model, shape, dec in (("pixel", pixel_model, train32.event_shape, None),
                                    ("latent", latent_model, latents.event_shape, codec)):
        for nfe in NFES:
            x, seconds = sample_images(model, shape, dec, N, nfe, seed=1)
            fd[name, nfe] = frechet_distance(features_of(clf, x), ref)
            cost[name, nfe] = seconds / N
    log(f"[fd] Frechet distance to the training set ({N} images; floors: pixel {pixel_floor:.2f}, reconstruction "
        f"{recon_floor:.2f})")
    log("[fd]   model        " + "".join(f"{'NFE ' + str(k):>12s}" for k in NFES))
    for name in ("pixel", "latent"):
        log(f"[fd]   {name:12s} " + "".join(f"{fd[name, k]:12.2f}" for k in NFES))
    log("[cost] seconds per image   " + "".join(f"{'NFE ' + str(k):>12s}" for k in NFES))
    for name in ("pixel", "latent"):
        log(f"[cost]   {name:18s} " + "".join(f"{1e3 * cost[name, k]:10.2f}ms" for k in NFES))
    ratio_fd = fd["latent", 20] / fd["pixel", 20]
    ratio_cost = cost["latent", 20] / cost["pixel", 20]
    log(f"[goal] NFE 20: latent Frechet {fd['latent', 20]:.2f} / pixel {fd['pixel', 20]:.2f} = {ratio_fd:.3f} "
        f"(goal <= 1.5: {'met' if ratio_fd <= 1.5 else 'not met'})")
    log(f"[goal] NFE 20: latent cost {1e3 * cost['latent', 20]:.2f} ms / pixel {1e3 * cost['pixel', 20]:.2f} ms per "
        f"image = {ratio_cost:.3f} (goal < 0.5: {'met' if ratio_cost < 0.5 else 'not met'})")
    log(f"[goal] reconstruction floor / pixel floor = {recon_floor / pixel_floor:.3f} "
        f"(goal <= 1.2: {'met' if recon_floor <= 1.2 * pixel_floor else 'not met'})")
    log(f"[time] training wall time: pixel {pixel_train:.0f} s, latent {latent_train:.0f} s (ratio "
        f"{latent_train / pixel_train:.3f}); {time.perf_counter() - t0:.0f} s in all")
    save_text("\n".join(lines) + "\n", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
