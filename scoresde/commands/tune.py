"""``scoresde tune``: the best sampler, grid and fitted solver for one model at each NFE budget.

The model is a trained run (``--ckpt``), a local diffusers folder saved with ``save_pretrained``
(``--diffusers``) or an exact mixture oracle (``--oracle eight_gaussians``). For each budget the zoo
(deterministic samplers x named grids), grid optimisation of the best few and a fitted linear multistep
solver are compared by the endpoint error against the model's own probability-flow ODE on a held-out batch
of starting points (:func:`scoresde.studies.tune.tune`). Written into ``--out`` (atomically): the table
(``tune_table.txt``, also printed), ``tune.csv``, the figure ``tune.png`` and one artifact per budget,
``tuned_nfe{N}.json``, which ``scoresde.sample(model, sde, "tuned_nfe10.json", x_T=...)`` runs and
``load_tuned(path).scheduler(pipe.scheduler.config)`` puts into a diffusers pipeline.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="find the best sampler, grid and fitted solver for a model at each NFE budget",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="a run folder or checkpoint file (scoresde train)")
    src.add_argument("--oracle", help="an exact mixture oracle by name (scoresde.toy.MIXTURES), e.g. eight_gaussians")
    src.add_argument("--diffusers", metavar="PATH", help="a local diffusers folder (pipeline or UNet + scheduler)")
    p.add_argument("--sde", default="vp", help="the oracle's SDE (vp, subvp, ve, cosine, discrete, flow; default vp)")
    p.add_argument("--budgets", default="5,10", help="NFE budgets, comma-separated (default 5,10)")
    p.add_argument("--out", default="tune_out", help="output folder (default ./tune_out)")
    p.add_argument("--methods", default=None,
                   help="the zoo: 'default', 'quick', 'all' or comma-separated sampler names (default: 'default', "
                        "with --quick 'quick')")
    p.add_argument("--n-calibration", type=int, default=None, help="calibration starting points (default 256; quick 64)")
    p.add_argument("--n-heldout", type=int, default=None, help="held-out starting points (default 256; quick 64)")
    p.add_argument("--grid-opt", type=int, default=None, help="configurations whose grid is optimised (default 3; quick 1)")
    p.add_argument("--grid-opt-evals", type=int, default=None, help="Nelder-Mead evaluations each (default 200; quick 30)")
    p.add_argument("--fit-iterations", type=int, default=None, help="Adam iterations of the fit (default 150; quick 20)")
    p.add_argument("--no-fit", dest="fit", action="store_false", help="skip the fitted solver")
    p.add_argument("--seed", type=int, default=0, help="seed of the two batches of starting points (default 0)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="--ckpt: the raw weights, not the EMA")
    p.add_argument("--quick", action="store_true", help="a small zoo, small batches, few iterations (a smoke run)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(run=run)


def _budgets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--budgets: expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--budgets: expected comma-separated positive integers, got {text!r}")
    return values


def _file_hash(paths) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def _load(args):
    """(model, sde, model_id, dtype, ref_tol) of the chosen source."""
    import torch

    if args.oracle is not None:
        from .. import SDES, make_sde, toy

        if args.oracle not in toy.MIXTURES:
            raise ValueError(f"--oracle: {args.oracle!r} has no exact mixture; mixtures: {', '.join(sorted(toy.MIXTURES))}")
        if args.sde not in SDES:
            raise ValueError(f"--sde: unknown name {args.sde!r}; known SDEs: {', '.join(SDES)}")
        sde = make_sde(args.sde)
        return toy.mixture(args.oracle).model(sde), sde, f"oracle {args.oracle}", torch.float64, None
    if args.ckpt is not None:
        from ..training import load_model
        from ..training.checkpoints import checkpoint_path

        if not Path(args.ckpt).exists():
            raise ValueError(f"--ckpt: {args.ckpt!r} does not exist; expected a run folder or a checkpoint file")
        model, _ = load_model(args.ckpt, ema=args.ema)
        model.net.double()  # a float64 reference and runs: the error measured is the sampler's, not rounding
        path = checkpoint_path(args.ckpt)
        return model, model.sde, f"checkpoint {Path(path).resolve()} sha256:{_file_hash([path])}", torch.float64, None
    from ..interop.diffusers import from_diffusers

    folder = Path(args.diffusers)
    if not folder.is_dir():
        raise ValueError(f"--diffusers: {args.diffusers!r} is not a folder; expected a local folder saved with "
                         "save_pretrained")
    model, sde = from_diffusers(str(folder))
    if getattr(model, "event_shape", None) is None:
        import json

        cfgs = list(folder.glob("**/config.json"))
        net_cfg = next((json.loads(c.read_text()) for c in cfgs if "sample_size" in c.read_text()), None)
        if net_cfg is None:
            raise ValueError(f"--diffusers: no network config with sample_size under {args.diffusers!r}")
        size = net_cfg["sample_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        model.event_shape = (int(net_cfg.get("in_channels", 3)), *size)
    ident = f"diffusers {folder.resolve()} sha256:{_file_hash(list(folder.glob('**/*.json')))}"
    # the network runs in its own dtype (float32): a reference tighter than its rounding means nothing
    return model, sde, ident, torch.float64, 1e-6


def run(args) -> int:
    import torch

    from ..studies.tune import tune, zoo_configs
    from ._paths import check_output

    budgets = _budgets(args.budgets)
    q = args.quick
    n_cal = args.n_calibration if args.n_calibration is not None else (64 if q else 256)
    n_val = args.n_heldout if args.n_heldout is not None else (64 if q else 256)
    n_opt = args.grid_opt if args.grid_opt is not None else (1 if q else 3)
    evals = args.grid_opt_evals if args.grid_opt_evals is not None else (30 if q else 200)
    iters = args.fit_iterations if args.fit_iterations is not None else (20 if q else 150)
    for flag, v, lo in (("--n-calibration", n_cal, 2), ("--n-heldout", n_val, 2), ("--grid-opt", n_opt, 0),
                        ("--grid-opt-evals", evals, 1), ("--fit-iterations", iters, 0)):
        if v < lo:
            raise ValueError(f"{flag}: expected an integer >= {lo}, got {v}")
    methods = args.methods if args.methods is not None else ("quick" if q else None)
    if methods == "default":
        methods = None
    elif methods not in (None, "quick", "all"):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        zoo_configs(methods)
    except ValueError as e:
        raise ValueError(f"--methods: {e}") from None
    out = check_output(args.out, "--out", kind="dir")
    model, sde, model_id, dtype, ref_tol = _load(args)
    grids = ("logsnr", "time_rho2", "time_rho7", "karras") if q else None
    result = tune(model, sde, budgets, n_calibration=n_cal, n_heldout=n_val,
                  generator=torch.Generator().manual_seed(args.seed), methods=methods, grids=grids, dtype=dtype,
                  n_grid_opt=n_opt, grid_opt_evals=evals, fit=args.fit, fit_iterations=iters, ref_tol=ref_tol,
                  model_id=model_id, progress=not args.quiet)
    print(result.table())
    written = result.save(out)
    print(f"wrote {len(written)} files to {out}:")
    for w in written:
        print(f"  {w}")
    return 0
