"""``scoresde nll``: negative log-likelihood of points through the probability-flow ODE.

The model is the exact mixture oracle (``--data``, a built-in mixture, under ``--sde``) or a trained
run (``--ckpt``). The points are a ``.pt``/``.npy`` file (``--points``; a ``.pt`` may hold a tensor,
``{'x': ...}`` or ``(x, y)``) or ``--n`` draws from ``--data``. Integer-valued files are treated as
discrete data on the integer lattice (``--bin-width 1``) unless ``--bin-width`` says otherwise.
When the data are a built-in mixture, the exact log p_{t_min} is printed beside the ODE value.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .._files import load_tensor_file
from ._paths import check_output


def register(sub: argparse._SubParsersAction) -> None:
    from .. import SDES, toy
    from ..likelihood import BACKENDS, ESTIMATORS, PROBES

    p = sub.add_parser("nll", help="negative log-likelihood (nats, bits/dim) through the probability-flow ODE")
    p.add_argument("--data", default="eight_gaussians", help=f"toy data set: {', '.join(toy.available())} "
                   f"(the exact oracle needs a mixture: {', '.join(sorted(toy.MIXTURES))})")
    p.add_argument("--sde", default="vp", choices=sorted(SDES), help="SDE of the exact oracle")
    p.add_argument("--ckpt", default=None, help="trained run folder or checkpoint (default: the exact oracle)")
    p.add_argument("--points", default=None, help=".pt or .npy file of points (default: --n draws from --data)")
    p.add_argument("--n", type=int, default=256, help="number of points drawn from --data")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--out", default=None, help="CSV of per-sample values")
    p.set_defaults(run=run)


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
    from ..likelihood import log_likelihood

    out = check_output(args.out, "--out") if args.out else None
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of points, got {args.n}")
    dtype = torch.float32 if args.float32 else torch.float64
    gen = torch.Generator().manual_seed(args.seed)
    mix = toy.mixture(args.data) if args.data in toy.MIXTURES else None

    if args.ckpt is not None:
        from ..training import load_model

        model, cfg = load_model(args.ckpt)
        model.net.to(dtype)
        source = f"trained run {args.ckpt} ({cfg.data}, {cfg.sde})"
    else:
        if mix is None:
            raise ValueError(f"--data: the exact oracle needs a mixture ({', '.join(sorted(toy.MIXTURES))}), "
                             f"got {args.data!r}; or give --ckpt")
        model = mix.model(make_sde(args.sde))
        source = f"exact oracle of {args.data} under {args.sde}"
    sde = model.sde

    bin_width = args.bin_width
    if args.points is not None:
        x = _load_points(Path(args.points))
        if not x.is_floating_point():
            bin_width = 1.0 if bin_width is None else bin_width
        x = x.to(dtype)
    else:
        if args.data not in toy.DATASETS:
            raise ValueError(f"--data: unknown data set {args.data!r}; known: {', '.join(toy.available())}")
        x = toy.sample(args.data, args.n, gen).to(dtype)
    if args.bpd and bin_width is not None and not args.dequantize:
        raise ValueError(f"--bpd: the data are discrete (bin width {bin_width}) and --no-dequantize was given; "
                         "bits per dimension need dequantisation")
    prior = None
    if args.exact_prior:
        if mix is None:
            raise ValueError("--exact-prior: needs --data to be a built-in mixture")
        prior = lambda z: mix.log_prob_t(z, sde.T, sde)  # noqa: E731

    res = log_likelihood(model, x, estimator=args.estimator, n_probes=args.n_probes, probe=args.probe,
                         generator=gen, backend=args.backend, method=args.method, rtol=args.rtol, atol=args.atol,
                         prior_log_prob=prior, bin_width=bin_width, dequantize=args.dequantize)
    nll = res.nll.double()
    n = nll.numel()
    se = float(nll.std()) / math.sqrt(n) if n > 1 else float("nan")
    print(f"{source}: {n} points of dimension {res.dim}, t_min = {res.t_min:g}, T = {res.T:g}")
    print(f"NLL {float(nll.mean()):.5f} +- {se:.5f} nats (mean +- s.e.); estimator {res.estimator}"
          f"{f' ({res.n_probes} {args.probe} probes)' if res.estimator == 'hutchinson' else ''}; "
          f"{res.backend}; NFE {res.nfe}")
    columns = {"nll": nll}
    if args.bpd:
        bpd = res.bits_per_dim().double()
        columns["bpd"] = bpd
        print(f"bits/dim {float(bpd.mean()):.5f}{' (dequantised)' if res.dequantized else ''}")
    if mix is not None and mix.dim == res.dim and (args.ckpt is None or cfg.data == args.data):
        exact = -mix.log_prob_t(res.points.double(), res.t_min, sde)
        columns["exact_nll"] = exact
        print(f"exact NLL {float(exact.mean()):.5f} nats; mean |ODE - exact| {float((nll - exact).abs().mean()):.2e} "
              f"(prior mismatch {'removed' if prior else 'included'})")
    if out is not None:
        names = list(columns)
        rows = torch.stack([columns[k] for k in names], 1).tolist()
        out.write_text(",".join(names) + "\n" + "".join(",".join(f"{v:.10g}" for v in r) + "\n" for r in rows))
        print(f"wrote {out}")
    return 0
