"""``scoresde sample``: draw samples from a trained run with any registered sampler, save and plot them."""
from __future__ import annotations

import argparse
from pathlib import Path

from ._paths import check_output


def register(sub: argparse._SubParsersAction) -> None:
    from .. import grids
    from ..samplers import available

    p = sub.add_parser("sample", help="sample a trained score model (scoresde train) with any sampler")
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint file")
    p.add_argument("--method", default="dpm_solver++" if "dpm_solver++" in available() else "ddim",
                   help=f"sampler: one of {', '.join(available())}")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grid", default="logsnr", choices=grids.available())
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--label", type=int, default=None, help="class to sample (conditional runs)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    p.add_argument("--final-denoise", action="store_true", help="finish with Tweedie's denoiser (one more call)")
    p.add_argument("--out", default="samples.pt", help="where to save the samples (.pt or .npy)")
    p.add_argument("--plot", default=None, help="PNG scatter plot of the samples (2D data)")
    p.set_defaults(run=run)


def run(args) -> int:
    import numpy as np
    import torch

    from .. import sample, toy
    from ..training import load_model

    out = Path(args.out)
    if out.suffix not in (".pt", ".npy"):
        raise ValueError(f"--out: expected a .pt or .npy file, got {args.out!r}")
    for path in (out, Path(args.plot) if args.plot else None):
        if path is not None and not path.parent.exists():
            raise ValueError(f"--out/--plot: folder {path.parent} does not exist")
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of samples, got {args.n}")
    check_output(out, "--out")
    if args.plot:
        check_output(args.plot, "--plot")
    model, cfg = load_model(args.ckpt, ema=args.ema, device=args.device, label=args.label)
    device = next(model.net.parameters()).device
    gen = torch.Generator(device).manual_seed(args.seed)
    with torch.no_grad():
        res = sample(model, model.sde, args.method, args.steps, shape=(args.n, model.net.dim), generator=gen,
                     grid=args.grid, final_denoise=args.final_denoise, progress=True)
    x = res.samples.cpu()
    if out.suffix == ".npy":
        np.save(out, x.numpy())
    else:
        torch.save(x, out)
    print(f"wrote {out}: {args.n} samples, {args.method}, {args.steps} steps, NFE {res.nfe}")
    if args.plot:
        if x.shape[1] != 2:
            raise ValueError(f"--plot: scatter plots need 2D data, these samples have {x.shape[1]} dimensions")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        if cfg.data in toy.DATASETS:
            ref = toy.sample(cfg.data, args.n, torch.Generator().manual_seed(args.seed + 1))
            ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.3, color="0.6", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5, label=f"{args.method}, NFE {res.nfe}")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(f"{cfg.data} under {cfg.sde}: trained model, {args.steps} steps")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
        print(f"wrote {args.plot}")
    return 0
