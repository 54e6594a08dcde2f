"""``scoresde mixture``: sample a built-in exact mixture with any sampler and save a scatter plot."""
from __future__ import annotations

import argparse

import torch


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SDES, grids, toy
    from ..samplers import available

    p = sub.add_parser("mixture", help="sample an exact Gaussian-mixture oracle and plot the samples")
    p.add_argument("--data", default="eight_gaussians", choices=sorted(toy.MIXTURES))
    p.add_argument("--sde", default="vp", choices=sorted(SDES))
    p.add_argument("--method", default="dpm_solver++" if "dpm_solver++" in available() else "ddim")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--grid", default="logsnr", choices=grids.available())
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="mixture_samples.png", help="PNG path for the scatter plot")
    p.set_defaults(run=run)


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .. import make_sde, sample, toy
    from ._paths import check_output

    formats = tuple(f".{ext}" for ext in plt.figure().canvas.get_supported_filetypes())
    plt.close("all")
    out = check_output(args.out, "--out", suffixes=formats)
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of samples, got {args.n}")
    sde = make_sde(args.sde)
    mix = toy.mixture(args.data)
    gen = torch.Generator().manual_seed(args.seed)
    res = sample(mix.model(sde), sde, args.method, args.steps, shape=(args.n, mix.dim), generator=gen,
                 grid=args.grid, progress=True)
    data = mix.sample(args.n, generator=gen)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.3, label="data", color="0.6")
    ax.scatter(res.samples[:, 0], res.samples[:, 1], s=2, alpha=0.5, label=f"{args.method}, NFE {res.nfe}")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(f"{args.data} under {args.sde}: exact score, {args.steps} steps ({args.grid} grid)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out} ({args.n} samples, NFE {res.nfe})")
    return 0
