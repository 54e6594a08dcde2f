"""What ``lower_order_final`` does at a given step count: mean endpoint error of UniPC-3 and DPM-Solver++(3M)
with the default (None: lowered below 15 steps), forced on and forced off, on diffusers-style time-uniform
integer timesteps of the 1000-step DDPM schedule (``DiscreteVPSDE``; the grid is ``(timesteps + 1)/1000``
ending at knot 0, t = 1/1000), against the dopri5 reference of benchmarks/samplers.py, eight Gaussians,
1000 starting points. Run: ``python benchmarks/lower_order_final.py [--steps 5 10 15 20 30 50 100]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import scoresde as sd
from scoresde import toy

sys.path.insert(0, str(Path(__file__).parent))
from samplers import mean_err, oracle_eps_model, reference  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 14, 15, 20, 30, 50, 100])
    p.add_argument("--spacing", default="linspace", choices=["linspace", "trailing"])
    args = p.parse_args(argv)
    import diffusers

    sde, mix = sd.DiscreteVPSDE(), toy.eight_gaussians_mixture()
    x_T = torch.randn(1000, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model, refs = oracle_eps_model(mix, sde), {}
    print(f"mean endpoint error, {args.spacing} integer timesteps of DiscreteVPSDE, eight Gaussians (1000 points)")
    print(f"{'steps':>5}  " + "  ".join(f"{m + ' ' + lab:>22}" for m in ("unipc-3", "dpm++3M")
                                         for lab in ("default", "on", "off")))
    for steps in args.steps:
        sched = diffusers.UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                                  beta_schedule="linear", timestep_spacing=args.spacing)
        sched.set_timesteps(steps)
        times = (sched.timesteps.double() + 1) / 1000
        if float(times[-1]) > 1.5e-3:
            times = torch.cat([times, torch.tensor([1e-3], dtype=torch.float64)])
        key = (round(float(times[0]), 9), round(float(times[-1]), 9))
        if key not in refs:
            refs[key] = reference(mix, sde, x_T, *key)
        errs = [mean_err(sd.sample(model, sde, name, x_T=x_T, grid=times, order=3, **lof).samples, refs[key])
                for name in ("unipc", "dpm_solver++")
                for lof in ({}, {"lower_order_final": True}, {"lower_order_final": False})]
        print(f"{len(times) - 1:>5}  " + "  ".join(f"{e:>22.3e}" for e in errs), flush=True)


if __name__ == "__main__":
    main()
