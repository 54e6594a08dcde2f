"""The time embedding against the solvers' order on a trained network (issue 18), on the CPU in minutes.

Trains the same MLP (64 x 2, 1500 steps, eight Gaussians, VP, EDM preconditioning) with three time
embeddings -- ``smooth`` (the default: frequencies at most 1 rad per unit lambda), ``fourier`` (the MLP's
default before) and ``sinusoidal`` at scale 100 (the image nets' default before) -- and prints for each:
the amplitude of its eps along lambda per frequency band (:func:`scoresde.studies.smoothness.lambda_spectrum`
at 8 prior draws), the calls of a dopri5 reference at rtol = atol = 1e-9, and the endpoint errors and local
slopes of DPM-Solver++(2M) and UniPC-3 against that reference at 10 .. 160 steps (64 prior draws).
The baseline is the sinusoidal net, measured in the same run. Results: ``results/smoothness.txt``.

    PYTHONPATH=. python benchmarks/smoothness.py
"""
from __future__ import annotations

import time

import torch

from scoresde.config import TrainConfig
from scoresde.studies.smoothness import lambda_spectrum, order_profile
from scoresde.training import Trainer

STEPS = [10, 16, 25, 40, 64, 100, 160]
EMBEDDINGS = [("smooth", {}), ("fourier", {}), ("sinusoidal", {"net_kwargs": {"embed_scale": 100.0}})]


def main() -> None:
    torch.set_num_threads(1)
    for emb, kw in EMBEDDINGS:
        t0 = time.time()
        cfg = TrainConfig(data="eight_gaussians", steps=1500, batch_size=256, width=64, depth=2, emb_dim=32,
                          embedding=emb, progress=False, tensorboard=False, ckpt_every=10**6, **kw)
        trainer = Trainer(cfg)
        trainer.train()
        model = trainer.score_model()
        sde = model.sde
        x = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        spectrum = lambda_spectrum(model, x[:8])
        prof = order_profile(model, ["dpm_solver++", "unipc:order=3"], STEPS, x, tol=1e-9, solver="dopri5")
        print(f"{emb}: {time.time() - t0:.0f} s, reference {prof.reference.nfe} calls", flush=True)
        print("  amplitude per band (rad per unit lambda): " +
              ", ".join(f"[{r['omega_lo']:g}, {r['omega_hi']:g}) {r['amplitude']:.3g}" for r in spectrum.band_rows()))
        for m, errs in prof.errors.items():
            print(f"  {m:>16} errors " + " ".join(f"{e:.2e}" for e in errs))
            print(f"  {m:>16} local slopes " + " ".join(f"{s:.2f}" for s in prof.slopes[m]), flush=True)


if __name__ == "__main__":
    main()
