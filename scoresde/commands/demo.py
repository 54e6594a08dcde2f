"""``scoresde demo``: the main job, on built-in defaults with nothing to download.

The exact eight_gaussians oracle under the VP SDE; the sampler zoo at a few step counts (and a small
score network trained for a short budget, when ``--train-steps`` > 0); writes into ``--out``:

* ``trajectories.png`` (+ ``.csv``, ``.gif``): reverse SDE, PF ODE, DDIM and DPM-Solver++ from the same x_T;
* ``error_vs_steps.png`` with ``error_vs_steps.csv`` and ``error_vs_steps_orders.csv`` (the table);
* ``ddim_limit.png`` (+ CSVs): DDIM as the ODE limit and the eta family.

Everything is written to a temporary folder inside ``--out`` and moved in at the end, so a failed or
interrupted run leaves no half-written files.
"""
from __future__ import annotations

import argparse

from ._paths import seed_type
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main demo: sampler zoo on the exact 8-Gaussian oracle, figures and table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (created if missing; default ./demo_out)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="samplers, e.g. ddim dpm_solver++ 'ddim:eta=0.5' (default: the fixed-step zoo)")
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 40, 80],
                   help="strictly increasing step counts (default: 5 10 20 40 80)")
    p.add_argument("--grid", default="logsnr", help="time grid (uniform, logsnr, quadratic, karras)")
    p.add_argument("--n", type=int, default=256, help="number of common starting points x_T (default 256)")
    p.add_argument("--train-steps", type=int, default=1500,
                   help="optimiser steps of the small learned score model (0: skip it; default 1500)")
    p.add_argument("--no-gif", action="store_true", help="skip the trajectory animation")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run: tiny batches, loose references, same files")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage lines")
    p.set_defaults(run=run)


def _trainer_available() -> bool:
    try:
        from .. import training  # noqa: F401
    except ImportError:
        return False
    return True


def _train_small_model(steps: int, seed: int, progress: bool):
    """A small MLP score model trained on eight_gaussians under VP for ``steps`` steps, in float64."""
    import copy

    from .._progress import progress as progress_bar
    from ..config import TrainConfig
    from ..models import ScoreModel
    from ..training import Trainer

    cfg = TrainConfig(data="eight_gaussians", sde="vp", steps=steps, batch_size=256, width=128, depth=3,
                      warmup=min(200, max(1, steps // 10)), seed=seed, progress=False, tensorboard=False,
                      log_every=max(1, steps), ckpt_every=10**9)
    trainer = Trainer(cfg, None)
    # in chunks, so that the one progress helper reports it (plain lines in a log, a bar on a terminal)
    chunk = max(1, steps // 50)
    with progress_bar(total=steps, desc="train", enabled=progress) as bar:
        while trainer.step < steps:
            before = trainer.step
            records = trainer.train(min(steps, before + chunk))
            bar.update(trainer.step - before)
            if records:
                bar.set_postfix_str(f"loss {records[-1].loss:.4g}")
    # float64 weights: the studies compare against a tight-tolerance float64 ODE reference
    net = copy.deepcopy(trainer.ema.module).double().eval()
    return ScoreModel(net, trainer.sde, cfg.parameterization)


def run(args) -> int:
    from .. import grids, make_sde
    from ..studies import jobs
    from ..studies.method_specs import check_grids, check_steps, parse_methods
    from ..studies.output import staged_output
    from ._paths import check_output

    # ----- validate everything before any work starts ---------------------------------------
    methods = parse_methods(args.methods or jobs.default_methods())
    steps = check_steps(args.steps, "--steps")
    if args.grid not in grids.GRIDS:
        raise ValueError(f"--grid: unknown name {args.grid!r}; known grids: {', '.join(grids.available())}")
    check_grids([args.grid])
    if args.n < 2:
        raise ValueError(f"--n: expected at least 2 starting points, got {args.n}")
    if args.train_steps < 0:
        raise ValueError(f"--train-steps: expected a number >= 0, got {args.train_steps}")
    out = check_output(args.out, "--out", kind="dir")
    progress = not args.quiet

    from .._progress import stage

    start = time.perf_counter()
    with staged_output(out) as (tmp, written):
        mix = jobs.eight_gaussians()
        sde = make_sde("vp")
        model = mix.model(sde)
        learned = {}
        train = args.train_steps > 0 and _trainer_available()
        if args.train_steps > 0 and not train:
            print("note: scoresde.training is not available; skipping the learned model")
        # one line per stage and one bar inside it (never a bar around bars: nested bars are escape-code
        # noise in a log)
        n_stages, k = 3 + int(train), 0
        if train:
            k += 1
            stage(k, n_stages, f"training a small score model ({args.train_steps} steps)", enabled=progress)
            learned[f"learned MLP ({args.train_steps} steps)"] = _train_small_model(args.train_steps, args.seed, progress)
        k += 1
        stage(k, n_stages, "trajectories of four dynamics from the same x_T", enabled=progress)
        jobs.job_trajectories(tmp, mix, sde, gif=not args.no_gif, seed=args.seed, progress=progress,
                              **(jobs.QUICK["trajectories"] if args.quick else {}))
        k += 1
        stage(k, n_stages, "error vs steps: references, then every sampler at every step count"
              + (" (exact and learned model)" if learned else ""), enabled=progress)
        _, study = jobs.job_error_vs_steps(tmp, model, methods=methods, steps=steps, grids=args.grid, mixture=mix,
                                           n=args.n, seed=args.seed, extra_models=learned, progress=progress,
                                           **(jobs.QUICK["error_vs_steps"] if args.quick else {}))
        k += 1
        stage(k, n_stages, "DDIM as the ODE limit, and the eta family", enabled=progress)
        limit_kw = {"steps": (8, 16, 32, 64, 128), "n": 128, "eta_steps": (5, 10, 20, 50)}
        jobs.job_ddim_limit(tmp, mix, seed=args.seed, progress=progress,
                            **(jobs.QUICK["ddim_limit"] if args.quick else limit_kw))

    print(study.table())
    if learned:
        import csv

        with open(out / "error_vs_steps_orders.csv") as fh:
            extra = [r for r in csv.DictReader(fh) if r["model"] != "exact"]
        if extra:
            print("\nlearned model (error against its own PF-ODE solution):")
            for r in extra:
                print(f"  {r['method']:>24}  declared {r['declared_order'] or '-':>4}  fitted {r['fitted_order'] or 'n/a'}")
    print(f"\nwrote {len(written)} files to {out} in {time.perf_counter() - start:.0f} s:")
    for w in written:
        print(f"  {w}")
    return 0
