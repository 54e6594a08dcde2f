"""``scoresde study NAME``: run one study on an exact mixture oracle and write its figure and CSV.

Studies: ``error-vs-steps``, ``ddim-limit``, ``trajectories``, ``grids``, ``smoothness`` (see
:mod:`scoresde.studies`). ``smoothness`` runs on a trained run with ``--checkpoint`` (else on the oracle):
the spectrum of the eps prediction along lambda and the local order of ``--methods`` against a tight
reference.
Files are staged in a temporary folder inside ``--out`` and moved in at the end.
"""
from __future__ import annotations

import argparse

from ._paths import seed_type

STUDIES = ("error-vs-steps", "ddim-limit", "trajectories", "grids", "smoothness")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run one study (error-vs-steps, ddim-limit, trajectories, grids, smoothness)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=STUDIES, help="which study")
    p.add_argument("--out", default="study_out", help="output folder (default ./study_out)")
    p.add_argument("--data", default="eight_gaussians", help="exact mixture (scoresde.toy.MIXTURES)")
    p.add_argument("--sde", default="vp", help="SDE (vp, subvp, ve, cosine, discrete, flow); ddim-limit uses its own three")
    p.add_argument("--methods", nargs="+", default=None, help="samplers, e.g. ddim heun 'dpm_solver++:order=3'")
    p.add_argument("--steps", nargs="+", type=int, default=None,
                   help="step counts (error-vs-steps, ddim-limit) or NFE budgets (grids); strictly increasing")
    p.add_argument("--grid", nargs="+", default=["logsnr"], help="time grid(s) for error-vs-steps")
    p.add_argument("--n", type=int, default=None, help="number of common starting points x_T")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--checkpoint", default=None, help="smoothness: a training run (folder or checkpoint.pt) to study")
    p.add_argument("--no-gif", action="store_true", help="trajectories: skip the animation")
    p.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run: tiny batches, loose references, same files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from .. import SDES, make_sde, toy
    from ..studies import jobs
    from ..studies.method_specs import check_grids, check_steps, parse_methods
    from ..studies.output import staged_output
    from ._paths import check_output

    if args.data not in toy.MIXTURES:
        raise ValueError(f"--data: {args.data!r} has no exact mixture; mixtures: {', '.join(sorted(toy.MIXTURES))}")
    if args.sde not in SDES:
        raise ValueError(f"--sde: unknown name {args.sde!r}; known SDEs: {', '.join(SDES)}")
    methods = parse_methods(args.methods) if args.methods else None
    steps = check_steps(args.steps, "--steps") if args.steps is not None else None
    grids = check_grids(args.grid)
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n: expected at least 2 starting points, got {args.n}")
    out = check_output(args.out, "--out", kind="dir")
    progress = not args.quiet

    mix = toy.mixture(args.data)
    mix.name = args.data
    sde = make_sde(args.sde)
    job = {"error-vs-steps": "error_vs_steps", "ddim-limit": "ddim_limit", "trajectories": "trajectories",
           "grids": "grid_comparison", "smoothness": "smoothness"}[args.name]
    kw = {"seed": args.seed, **(jobs.QUICK[job] if args.quick else {})}
    if args.n is not None:
        kw["n"] = args.n
    with staged_output(out) as (tmp, written):
        if args.name == "error-vs-steps":
            if steps:
                kw["steps"] = steps
            _, study = jobs.job_error_vs_steps(tmp, mix.model(sde), methods=methods, grids=grids, mixture=mix,
                                               progress=progress, **kw)
            print(study.table())
        elif args.name == "ddim-limit":
            if steps:
                kw["steps"] = steps
            _, (limit, _) = jobs.job_ddim_limit(tmp, mix, progress=progress, **kw)
            for name, slope in limit.slopes().items():
                print(f"{name:>28}: fitted slope {slope:.3f}" if slope is not None else f"{name:>28}: slope n/a")
        elif args.name == "smoothness":
            if steps:
                kw["steps"] = steps
            if methods:
                kw["methods"] = [m.name + (":" + ",".join(f"{k}={v}" for k, v in m.options) if m.options else "")
                                 for m in methods]
            if args.checkpoint is not None:
                from ..training import load_model

                model, _ = load_model(args.checkpoint)
                kw.update(event_shape=model.event_shape, dtype=next(model.net.parameters()).dtype, label=args.checkpoint)
            else:
                model, kw["label"] = mix.model(sde), f"exact {args.data}"
            _, (spectrum, profile) = jobs.job_smoothness(tmp, model, progress=progress, **kw)
            for r in spectrum.band_rows():
                print(f"omega in [{r['omega_lo']:g}, {r['omega_hi']:g}): amplitude {r['amplitude']:.3g}")
            for m, sl in profile.slopes.items():
                print(f"{m:>28}: local slopes " + ", ".join(f"{v:.2f}" for v in sl))
        elif args.name == "trajectories":
            kw.pop("n", None)
            jobs.job_trajectories(tmp, mix, sde, gif=not args.no_gif, progress=progress, **kw)
        else:
            if "n" in kw:
                kw["n_test"] = kw.pop("n")
            if steps:
                kw["nfes"] = steps
            _, comp = jobs.job_grid_comparison(tmp, mix.model(sde), progress=progress,
                                               **({"methods": methods} if methods else {}),
                                               **kw)
            for g in comp.gains():
                print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.items()))
    print(f"wrote {len(written)} files to {out}:")
    for w in written:
        print(f"  {w}")
    return 0
