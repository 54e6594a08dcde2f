"""``scoresde mixture``: sample a built-in exact mixture with any sampler and save a scatter plot."""
from __future__ import annotations

import argparse

from ._paths import seed_type

import torch


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SDES, grids, toy
    from ..samplers import available

    p = sub.add_parser("mixture", help="sample an exact Gaussian-mixture oracle and plot the samples")
    p.add_argument("--data", default="eight_gaussians", choices=sorted(toy.MIXTURES), help="exact mixture")
    p.add_argument("--sde", default="vp", choices=sorted(SDES), help="SDE (default vp)")
    p.add_argument("--method", default="dpm_solver++" if "dpm_solver++" in available() else "ddim",
                   help=f"sampler: one of {', '.join(available())}, with options as 'name:opt=value,...' "
                        "(e.g. 'dpm_solver++:order=3'; default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="steps of the sampler (default 20)")
    p.add_argument("--grid", default=None, choices=grids.available(),
                   help="time grid (default: the SDE's own, logsnr; quadratic for the flow-matching path)")
    p.add_argument("--n", type=int, default=5000, help="number of samples (default 5000)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="mixture_samples.png", help="image path for the scatter plot (.png, .pdf, .svg, "
                   ".jpg; default mixture_samples.png)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import make_sde, sample, toy
    from ..plotting import plot_samples, save_figure
    from ..studies.method_specs import parse_method
    from ._paths import check_output

    method = parse_method(args.method)  # a name or 'name:opt=value,...', checked before any work
    formats = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
    out = check_output(args.out, "--out", suffixes=formats)
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of samples, got {args.n}")
    sde = make_sde(args.sde)
    mix = toy.mixture(args.data)
    gen = torch.Generator().manual_seed(args.seed)
    res = sample(mix.model(sde), sde, method.name, args.steps, shape=(args.n, mix.dim), generator=gen,
                 grid=args.grid, progress=not args.quiet, **method.opts)
    data = mix.sample(args.n, generator=gen)
    fig = plot_samples(res.samples, data, label=f"{method.label}, NFE {res.nfe}",
                       title=f"{args.data} under {args.sde}: exact score, {args.steps} steps ({args.grid or sde.default_grid} grid)")
    save_figure(fig, out, dpi=120)
    print(f"wrote {out} ({args.n} samples, NFE {res.nfe})")
    return 0
