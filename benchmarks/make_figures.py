"""Regenerate every figure in figures/ (PNG with its CSV beside it) with the exact oracle.

    python benchmarks/make_figures.py            # all figures into figures/
    python benchmarks/make_figures.py --only ddim_limit --out /tmp/figs
    python benchmarks/make_figures.py --threads 1   # on a machine shared with other jobs

The eight_gaussians mixture under the VP SDE with its exact score; the jobs are those of scoresde.studies.jobs.
The ``images`` job (benchmarks/images.py) uses the trained U-Net in ``--runs`` (benchmarks/results/image_runs by
default, written by ``python benchmarks/images.py``) and trains the quick configuration there when it is absent.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from scoresde import VPSDE
from scoresde.studies import jobs

JOBS = ("error_vs_steps", "ddim_limit", "trajectories", "grid_comparison", "bound_gap", "images")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "figures"))
    p.add_argument("--only", nargs="*", choices=JOBS, default=list(JOBS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=str(Path(__file__).resolve().parent / "results" / "image_runs"),
                   help="image runs of benchmarks/images.py (the images job)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, which honours OMP_NUM_THREADS; on a shared machine 1)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mix = jobs.eight_gaussians()
    sde = VPSDE()
    model = mix.model(sde)
    for job in args.only:
        start = time.perf_counter()
        if job == "error_vs_steps":
            paths, _ = jobs.job_error_vs_steps(out, model, mixture=mix, seed=args.seed, progress=True)
        elif job == "ddim_limit":
            paths, _ = jobs.job_ddim_limit(out, mix, seed=args.seed, progress=True)
        elif job == "trajectories":
            paths, _ = jobs.job_trajectories(out, mix, sde, seed=args.seed, progress=True)
        elif job == "grid_comparison":
            paths, _ = jobs.job_grid_comparison(out, model, seed=args.seed, progress=True)
        elif job == "images":  # sample grid and error against steps on the trained U-Net (benchmarks/images.py)
            from images import job_images

            paths, _ = job_images(out, Path(args.runs), seed=args.seed)
        else:  # bound_gap: the variational bound's gap to the exact NLL against N (scoresde.studies.bound_gap)
            from scoresde.studies.bound_gap import job_bound_gap

            paths, _ = job_bound_gap(out, mix, seed=args.seed)
        print(f"{job}: {time.perf_counter() - start:.0f} s -> " + ", ".join(p.name for p in paths), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
