"""``scoresde nll``: negative log-likelihood of points through the probability-flow ODE.

The model is the exact mixture oracle (``--data``, a built-in mixture, under ``--sde``) or a trained
run (``--ckpt``). The points are a ``.pt``/``.npy`` file (``--points``; a ``.pt`` may hold a tensor,
``{'x': ...}`` or ``(x, y)``) or ``--n`` draws from ``--data``, which names what ``scoresde train --data``
takes (a toy set, ``digits``/``digits_test``, an array file or an image folder), read by the trainer's
own reader; of a finite set the first ``--n`` points are scored (all of them when ``--n`` is larger: the
same points as the set saved to a file and given as ``--points``), with the set's number of levels. Integer-valued files are treated as
discrete data on the integer lattice (``--bin-width 1``) unless ``--bin-width`` says otherwise.
When the data are a built-in mixture, the exact log p_{t_min} is printed beside the ODE value.

Images and other data with a known number of values: ``--levels L`` (256 for 8-bit, 17 for the
digits). Integer files are then read as values 0..L-1 and scaled to [-1, 1]; float files must already
lie on the lattice ``-1 + 2k/(L - 1)``. Image-shaped points (``(B, C, H, W)``) need ``--levels`` or
``--bin-width``: a density of discrete pixels has no bits/dim. A trained run records the levels of
its data: ``--levels`` must agree with them (the digits' 17 scored as 256 levels would be a wrong bound).
Points with NaN or inf are refused, naming the first one (the data are at fault, not the model).

``--bound discrete`` adds the DDPM variational bound (``--steps``, ``--reverse-variance``,
``--bound-estimator``, ``--n-t``), ``--bound continuous`` the continuous-time bound; ``--no-ode``
skips the ODE. Both bounds use the discretised decoder when ``--levels`` is given.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .._files import load_tensor_file, save_csv
from .._progress import stage
from ._paths import check_output, seed_type


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SDES, toy
    from ..bounds.discrete import BOUND_ESTIMATORS, REVERSE_VARIANCES
    from ..likelihood import BACKENDS, ESTIMATORS, PROBES

    p = sub.add_parser("nll", help="negative log-likelihood (nats, bits/dim) through the probability-flow ODE")
    p.add_argument("--data", default="eight_gaussians",
                   help=f"what `scoresde train --data` takes: a toy set ({', '.join(toy.available())}), digits, "
                        f"digits_test, a .pt/.npy array or an image folder (the exact oracle needs a mixture: "
                        f"{', '.join(sorted(toy.MIXTURES))}; other data need --ckpt)")
    p.add_argument("--sde", default="vp", choices=sorted(SDES), help="SDE of the exact oracle")
    p.add_argument("--ckpt", default=None, help="trained run folder or checkpoint (default: the exact oracle)")
    p.add_argument("--diffusers", default=None, metavar="PATH",
                   help="a diffusers pipeline folder (save_pretrained) to evaluate instead of a run (needs --points)")
    p.add_argument("--points", default=None, help=".pt or .npy file of points (default: --n draws from --data)")
    p.add_argument("--n", type=int, default=256,
                   help="number of points drawn from --data (a finite set: its first N points, at most all of it)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--estimator", default="auto", choices=ESTIMATORS)
    p.add_argument("--n-probes", type=int, default=1)
    p.add_argument("--probe", default="rademacher", choices=PROBES)
    p.add_argument("--backend", default="torchdiffeq", choices=BACKENDS, help="scipy: evaluation only")
    p.add_argument("--method", default=None, help="ODE method (default dopri5 / RK45)")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--exact-prior", action="store_true",
                   help="use the exact log p_T of the mixture as the prior (separates prior mismatch from ODE error)")
    p.add_argument("--bin-width", type=float, default=None, help="lattice spacing of discrete data")
    p.add_argument("--no-dequantize", dest="dequantize", action="store_false",
                   help="evaluate discrete data at the lattice points (then no bits/dim)")
    p.add_argument("--bpd", action="store_true", help="also report bits per dimension")
    p.add_argument("--float32", action="store_true", help="compute in float32 (default float64)")
    p.add_argument("--levels", type=int, default=None,
                   help="number of values of discrete data in [-1, 1] (256 for 8-bit images, 17 for digits)")
    p.add_argument("--bound", choices=("discrete", "continuous"), default=None,
                   help="also compute a variational bound: DDPM's N-step bound or its continuous-time limit")
    p.add_argument("--steps", type=int, default=None, help="N of the discrete bound (default: the SDE's N, or 1000)")
    p.add_argument("--reverse-variance", default="beta", choices=REVERSE_VARIANCES)
    p.add_argument("--bound-estimator", default="exact", choices=BOUND_ESTIMATORS,
                   help="discrete bound: every term, or --n-t sampled steps per point")
    p.add_argument("--n-t", type=int, default=1, help="sampled times per point (sampled estimators)")
    p.add_argument("--no-ode", dest="ode", action="store_false", help="skip the probability-flow ODE (with --bound)")
    p.add_argument("--out", default=None, help="CSV of per-sample values")
    p.add_argument("--quiet", action="store_true", help="no stage lines on stderr (the results are still printed)")
    p.set_defaults(run=run)


def _data_points(args, gen, dtype, levels: int | None, bin_width: float | None):
    """``--n`` points of ``--data`` read as ``scoresde train`` reads it, and the levels to score them with.

    A toy set is sampled; a finite set (digits, an array, a folder) gives its first ``min(--n, N)`` points
    (a fixed test set, not a draw), rebuilt on the lattice in ``dtype`` from their integer levels (float32
    data cast to float64 would sit a rounding error off the float64 lattice the likelihood checks).
    """
    from .. import toy
    from ..images.datasets import to_levels
    from ..training.data import make_data

    if args.data in toy.DATASETS:
        return toy.sample(args.data, args.n, gen).to(dtype), levels
    data = make_data(args.data)  # the trainer's reader: the same names, the same errors
    found = getattr(data, "levels", None)
    if found is not None and bin_width is not None:
        raise ValueError(f"--bin-width: {args.data} has {found} levels in [-1, 1]; give --levels {found} or neither")
    if found is not None and levels is not None and levels != found:
        raise ValueError(f"--levels: {levels} given, but {args.data} has {found} levels; give --levels {found}")
    x = data.x[:args.n]
    if found is None:
        return x.to(dtype), levels
    return to_levels(x, found).to(dtype) / (found - 1) * 2 - 1, found


def _load_points(path: Path):
    import torch

    obj = load_tensor_file(path, "--points")
    if isinstance(obj, dict) and "x" in obj:
        obj = obj["x"]
    elif isinstance(obj, tuple | list) and len(obj) == 2:
        obj = obj[0]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"--points: {str(path)!r} must hold a tensor, a dict with 'x', or a pair (x, y)")
    return obj


def run(args) -> int:
    import torch

    from .. import make_sde, toy
    from ..bounds import check_levels, continuous_bound, variational_bound
    from ..likelihood import log_likelihood

    out = check_output(args.out, "--out") if args.out else None
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of points, got {args.n}")
    if args.levels is not None:
        check_levels(args.levels, name="--levels")
        if args.bin_width is not None:
            raise ValueError(f"--levels: give --levels or --bin-width, not both (got --levels {args.levels}, "
                             f"--bin-width {args.bin_width})")
    if not args.ode and args.bound is None:
        raise ValueError("--no-ode: nothing left to compute; add --bound discrete or --bound continuous")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected an integer >= 1, got {args.steps}")
    if args.n_t < 1:
        raise ValueError(f"--n-t: expected an integer >= 1, got {args.n_t}")
    dtype = torch.float32 if args.float32 else torch.float64
    gen = torch.Generator().manual_seed(args.seed)
    mix = toy.mixture(args.data) if args.data in toy.MIXTURES else None

    if args.diffusers is not None:
        if args.ckpt is not None:
            raise ValueError(f"--diffusers: give --ckpt or --diffusers, not both (got --ckpt {args.ckpt})")
        if args.points is None:
            raise ValueError("--points: a diffusers pipeline's likelihood needs image points (a .pt or .npy file of "
                             "shape (B, C, H, W)); give --points")
        from types import SimpleNamespace

        from ..interop.diffusers import load_diffusers_model

        model = load_diffusers_model(args.diffusers, dtype=dtype)
        cfg = SimpleNamespace(data=None)
        source = f"diffusers pipeline {args.diffusers}"
    elif args.ckpt is not None:
        from ..training import load_model

        model, cfg = load_model(args.ckpt)
        recorded = getattr(model, "levels", None)
        if recorded is not None and args.levels is not None and args.levels != recorded:
            raise ValueError(f"--levels: {args.levels} given, but the run {args.ckpt} was trained on data with "
                             f"{recorded} levels; give --levels {recorded}")
        model.net.to(dtype)
        source = f"trained run {args.ckpt} ({cfg.data}, {cfg.sde})"
    else:
        if mix is None:
            raise ValueError(f"--data: the exact oracle needs a mixture ({', '.join(sorted(toy.MIXTURES))}), "
                             f"got {args.data!r}; or give --ckpt")
        model = mix.model(make_sde(args.sde))
        source = f"exact oracle of {args.data} under {args.sde}"
    sde = model.sde
    recorded = getattr(model, "levels", None) if args.ckpt is not None else None
    external = args.ckpt is not None or args.diffusers is not None

    bin_width, levels = args.bin_width, args.levels
    if args.points is not None:
        x = _load_points(Path(args.points))
        if x.is_floating_point() and x.numel() and x.ndim >= 1:
            from ..images.datasets import first_non_finite

            bad = first_non_finite(x if x.ndim >= 2 else x[:, None])
            if bad is not None:
                raise ValueError(f"--points: {args.points!r}: {bad}; allowed: finite numbers (the points, not the "
                                 "model, are at fault)")
        latent = args.ckpt is not None and cfg.data.startswith("latent:")  # latents are continuous (scoresde.latent)
        if x.ndim >= 4 and levels is None and bin_width is None and not latent:
            raise ValueError(f"--levels: image points {tuple(x.shape)} are discrete; give their number of levels "
                             + (f"(the run records {recorded}: --levels {recorded})" if recorded else
                                "(256 for 8-bit, 17 for the digits)") + " or --bin-width")
        if levels is not None and not x.is_floating_point():
            if int(x.min()) < 0 or int(x.max()) > levels - 1:
                raise ValueError(f"--levels: integer points must lie in [0, {levels - 1}] for --levels {levels}, "
                                 f"got [{int(x.min())}, {int(x.max())}]")
            x = x.to(dtype) / (levels - 1) * 2 - 1
        elif not x.is_floating_point():
            bin_width = 1.0 if bin_width is None else bin_width
        x = x.to(dtype)
    else:
        x, levels = _data_points(args, gen, dtype, levels, bin_width)
        if recorded is not None and levels is not None and levels != recorded:
            raise ValueError(f"--data: {args.data} has {levels} levels, but the run {args.ckpt} was trained on data "
                             f"with {recorded} levels; its bound on these data would be a wrong number")
    if args.bpd and bin_width is not None and not args.dequantize:
        raise ValueError(f"--bpd: the data are discrete (bin width {bin_width}) and --no-dequantize was given; "
                         "bits per dimension need dequantisation")
    prior = None
    if args.exact_prior:
        if mix is None:
            raise ValueError("--exact-prior: needs --data to be a built-in mixture")
        prior = lambda z: mix.log_prob_t(z, sde.T, sde)  # noqa: E731

    if not external and (x.ndim != 2 or x.shape[1] != mix.dim):
        raise ValueError(f"--points: the exact oracle of {args.data} takes points of shape (B, {mix.dim}), got "
                         f"{tuple(x.shape)}; give --ckpt for a trained model of such data")
    if args.bound is not None and bin_width is not None:
        raise ValueError(f"--bound: discrete data need --levels (values in [-1, 1]) for the decoder, not a bin "
                         f"width ({bin_width})")
    oracle_data = mix is not None and x.ndim == 2 and mix.dim == x.shape[1] and (not external or cfg.data == args.data)
    columns = {}
    n = x.shape[0]
    stages = [what for what, on in (("the probability-flow ODE", args.ode), (f"the {args.bound} bound", args.bound))
              if on]
    if args.ode:
        stage(1, len(stages), f"{stages[0]} through {n} points", enabled=not args.quiet)
        res = log_likelihood(model, x, estimator=args.estimator, n_probes=args.n_probes, probe=args.probe,
                             generator=gen, backend=args.backend, method=args.method, rtol=args.rtol, atol=args.atol,
                             prior_log_prob=prior, bin_width=bin_width, dequantize=args.dequantize, levels=levels)
        nll = res.nll.double()
        se = float(nll.std()) / math.sqrt(n) if n > 1 else float("nan")
        print(f"{source}: {n} points of dimension {res.dim}, t_min = {res.t_min:g}, T = {res.T:g}")
        print(f"NLL {float(nll.mean()):.5f} +- {se:.5f} nats (mean +- s.e.); estimator {res.estimator}"
              f"{f' ({res.n_probes} {args.probe} probes)' if res.estimator == 'hutchinson' else ''}; "
              f"{res.backend}; NFE {res.nfe}")
        columns["nll"] = nll
        if args.bpd:
            bpd = res.bits_per_dim().double()
            columns["bpd"] = bpd
            print(f"bits/dim {float(bpd.mean()):.5f}{' (dequantised)' if res.dequantized else ''}")
        if oracle_data:
            exact = -mix.log_prob_t(res.points.double(), res.t_min, sde)
            columns["exact_nll"] = exact
            print(f"exact NLL {float(exact.mean()):.5f} nats; mean |ODE - exact| "
                  f"{float((nll - exact).abs().mean()):.2e} (prior mismatch {'removed' if prior else 'included'})")
    if args.bound is not None:
        stage(len(stages), len(stages), f"{stages[-1]} of {n} points", enabled=not args.quiet)
        if args.bound == "discrete":
            b = variational_bound(model, x, steps=args.steps, reverse_variance=args.reverse_variance, levels=levels,
                                  estimator=args.bound_estimator, n_t=args.n_t, generator=gen)
            what = (f"discrete bound, N = {b.steps}, reverse variance {b.reverse_variance}, {b.estimator}"
                    f"{f' ({b.n_t} t per point)' if b.n_t else ''}")
        else:
            b = continuous_bound(model, x, levels=levels, n_t=args.n_t, generator=gen)
            what = f"continuous bound on [{float(b.times[0]):g}, {float(b.times[1]):g}], {b.n_t} t per point"
        if not args.ode:
            print(f"{source}: {n} points of dimension {b.dim}")
        print(f"bound {b.mean:.5f} +- {b.se:.5f} nats = {b.bpd:.5f} +- {b.bpd_se:.5f} bits/dim ({what}; "
              f"prior {float(b.prior.mean()):.4g}, diffusion {float(b.diffusion.mean()):.4g}, reconstruction "
              f"{float(b.reconstruction.mean()):.4g}; NFE {b.nfe})")
        columns["bound"] = b.nll.double()
        if oracle_data and levels is None:
            exact0 = -mix.log_prob(x.double())
            columns["exact_nll_0"] = exact0
            gap = b.nll.double() - exact0
            print(f"exact -log p_0 {float(exact0.mean()):.5f} nats; bound - exact {float(gap.mean()):.5f} "
                  f"+- {float(gap.std()) / math.sqrt(n) if n > 1 else float('nan'):.5f}")
    if out is not None:
        names = list(columns)
        rows = torch.stack([columns[k] for k in names], 1).tolist()
        save_csv(([f"{v:.10g}" for v in r] for r in rows), out, header=names)
        print(f"wrote {out}")
    return 0
