"""Tuned rows of the training-free benchmark (issue 23): scoresde.studies.tune against the best fixed configuration
and the best peer, on the two 2-D mixtures of benchmarks/samplers.py's training_free part (a script, not a test).

    python benchmarks/tune.py [--problems ring8,aniso2d7] [--nfes 5,6,8,10,15,20,25] [--batch 200] [--quick]

On DiscreteVPSDE() with the exact mixture eps, per problem and NFE:

* **tuned**: ``tune(model, sde, nfes)`` with calibration and held-out batches drawn from seed 1 (never the
  evaluation seed), the default zoo on every named grid, grid optimisation of the 3 best, a fitted solver; the
  chosen configuration is then frozen and run from the evaluation batch (seed 0, ``--batch`` points, as in
  samplers.py), against the reference between its own two ends;
* **best fixed**: every zoo configuration (DEFAULT_METHODS) on every named grid, run from the evaluation batch:
  the best of them, measured in this run;
* **best peer**: the best of diffusers' schedulers (samplers.diffusers_runs) and of diff-sampler's methods as
  transcribed here (samplers.DIFF_SAMPLER_CONFIGS on its grids, with and without a final denoising step), each
  against the reference between its own two ends.

Prints the errors, tuned / best fixed and tuned / best peer (goal: <= 0.1 at NFE 5-25, <= 0.3 at 50-100, never
worse than the best fixed configuration), and the tuning cost (model calls, wall time); writes tune_rows.csv.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import samplers as bench  # noqa: E402  (benchmarks/samplers.py: the peers and the references)

import scoresde as sd  # noqa: E402
from scoresde import grids as sd_grids  # noqa: E402
from scoresde.samplers import SAMPLERS, sample  # noqa: E402
from scoresde.studies.tune import tune, zoo_configs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", default="ring8,aniso2d7")
    p.add_argument("--nfes", default="5,6,8,10,15,20,25")
    p.add_argument("--batch", type=int, default=200, help="evaluation batch (seed 0)")
    p.add_argument("--n-calibration", type=int, default=256)
    p.add_argument("--grid-opt-evals", type=int, default=150)
    p.add_argument("--fit-iterations", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="the quick zoo and small batches (a smoke run)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--ref-tol", type=float, default=1e-8, help="--digits: the references' tolerance (default 1e-8)")
    p.add_argument("--digits", default=None, metavar="RUN",
                   help="instead of the mixtures: a trained digits run (scoresde train --data digits --net unet ...), "
                        "tuned at --nfes (default here 5,10) against the best untuned configuration")
    args = p.parse_args(argv)
    if args.digits is not None:
        return digits(args)
    nfes = [int(v) for v in args.nfes.split(",")]
    sde = sd.DiscreteVPSDE()
    methods = "quick" if args.quick else None
    rows, summary = [], []
    for pname, mix in bench.tf_problems():
        if pname not in args.problems.split(","):
            continue
        x_T = torch.randn(args.batch, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        model = bench.oracle_eps_model(mix, sde)
        model.event_shape = (mix.dim,)
        err = bench.endpoint_error(mix, sde, x_T)

        t0 = time.perf_counter()
        result = tune(model, sde, nfes, n_calibration=args.n_calibration, n_heldout=args.n_calibration,
                      generator=torch.Generator().manual_seed(bench.CALIB_SEED), methods=methods,
                      grid_opt_evals=args.grid_opt_evals, fit_iterations=args.fit_iterations,
                      model_id=f"oracle {pname}", progress=True)
        t_tune = time.perf_counter() - t0
        print(result.table(), file=sys.stderr)
        for nfe in nfes:
            best = {}

            def keep(group, lab, e, _best=best):
                if math.isfinite(e) and (group not in _best or e < _best[group][1]):
                    _best[group] = (lab, e)

            tuned = result.tuned[nfe]
            res = tuned.sample(model, x_T=x_T)
            e = err(res.samples, res.t_start, res.t_end)
            rows.append({"problem": pname, "nfe": nfe, "group": "tuned", "config": tuned.label, "nfe_used": res.nfe,
                         "endpoint_error": e})
            keep("tuned", tuned.label, e)
            for name, opts in zoo_configs(methods):
                sampler = SAMPLERS[name](**opts)
                steps = bench.steps_for(sampler, nfe)
                for grid in sd_grids.available():
                    lab = f"{bench.label(name, opts)} | {grid}"
                    try:
                        r = sample(model, sde, name, steps, x_T=x_T, grid=grid, **opts)
                        e = err(r.samples, r.t_start, r.t_end)
                    except (FloatingPointError, ValueError):
                        e = math.nan
                    rows.append({"problem": pname, "nfe": nfe, "group": "fixed", "config": lab,
                                 "nfe_used": sampler.expected_nfe(steps), "endpoint_error": e})
                    keep("fixed", lab, e)
            for lab, x, ts, te, used in bench.diffusers_runs(mix, sde, x_T, nfe, args.quick):
                e = err(x, ts, te)
                rows.append({"problem": pname, "nfe": nfe, "group": "peer", "config": lab, "nfe_used": used,
                             "endpoint_error": e})
                if used <= nfe:
                    keep("peer", lab, e)
            for name, opts in bench.DIFF_SAMPLER_CONFIGS:
                sampler = SAMPLERS[name](**opts)
                for grid in bench.DIFF_SAMPLER_GRIDS:
                    for final in (False, True):
                        steps = bench.steps_for(sampler, nfe - int(final))
                        if steps is None:
                            continue
                        lab = f"diff-sampler {bench.label(name, opts)} | {grid}{' +denoise' if final else ''}"
                        try:
                            r = sample(model, sde, name, steps, x_T=x_T, grid=grid, final_denoise=final, **opts)
                            e, used = err(r.samples, r.t_start, r.t_end), r.nfe
                        except (FloatingPointError, ValueError):
                            e, used = math.nan, -1
                        rows.append({"problem": pname, "nfe": nfe, "group": "peer", "config": lab, "nfe_used": used,
                                     "endpoint_error": e})
                        if 0 < used <= nfe:
                            keep("peer", lab, e)
            summary.append((pname, nfe, best, result.calls["total"], t_tune))
            print(f"  [tune] {pname} NFE {nfe} done", file=sys.stderr, flush=True)

    print("\n[tune] DiscreteVPSDE() with the exact mixture eps; evaluation batch of "
          f"{args.batch} (seed 0); tuned on calibration/held-out batches of {args.n_calibration} (seed "
          f"{bench.CALIB_SEED}). Goal: tuned/peer <= 0.1 at NFE 5-25, <= 0.3 at 50-100; tuned/fixed <= 1")
    for pname in dict.fromkeys(s[0] for s in summary):
        calls, secs = next((c, t) for p_, _, _, c, t in summary if p_ == pname)
        print(f"\n  {pname}  (tuning cost: {calls} model calls, {secs:.0f} s for all budgets)")
        print(f"  {'NFE':>4} {'peer':>10} {'fixed':>10} {'tuned':>10} {'tuned/fixed':>12} {'tuned/peer':>11}  tuned; "
              "best fixed; best peer")
        for p_, nfe, b, _, _ in summary:
            if p_ != pname:
                continue
            peer, fixed, tuned = b["peer"], b["fixed"], b["tuned"]
            goal = 0.1 if nfe <= 25 else 0.3
            flag = "" if tuned[1] <= goal * peer[1] and tuned[1] <= fixed[1] else "  <- goal not met"
            print(f"  {nfe:>4} {peer[1]:>10.3e} {fixed[1]:>10.3e} {tuned[1]:>10.3e} {tuned[1] / fixed[1]:>12.3f} "
                  f"{tuned[1] / peer[1]:>11.3f}  {tuned[0]}; {fixed[0]}; {peer[0]}{flag}")
    bench.write_csv(Path(args.out) / "tune_rows.csv", rows)


def digits(args):
    """Tune a trained digits U-Net (float64) at NFE 5 and 10: the tuned configuration and the best untuned one
    (every zoo configuration on every named grid) on an evaluation batch (seed 0) independent of the tuning batches
    (seed 1), each against the model's own PF-ODE reference (dopri5 in log-SNR, rtol = atol = --ref-tol).
    Goal: tuned <= 0.2x the best untuned at NFE 5 and 10; the tuning cost is printed."""
    from scoresde.studies.distances import endpoint_error
    from scoresde.studies.references import reference_pf_ode
    from scoresde.training import load_model

    nfes = [int(v) for v in args.nfes.split(",")] if args.nfes != "5,6,8,10,15,20,25" else [5, 10]
    model, _ = load_model(args.digits)
    model.net.double()
    sde = model.sde
    n = args.batch
    x_T = sde.prior_sample((n, *model.event_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = reference_pf_ode(model, x_T, float(sde.T), float(sde.t_min), tol=args.ref_tol, estimate_error=False).x
    methods = "quick" if args.quick else None
    t0 = time.perf_counter()
    result = tune(model, sde, nfes, n_calibration=args.n_calibration, n_heldout=args.n_calibration,
                  generator=torch.Generator().manual_seed(bench.CALIB_SEED), methods=methods, ref_tol=args.ref_tol,
                  grid_opt_evals=args.grid_opt_evals, fit_iterations=args.fit_iterations,
                  model_id=f"digits {args.digits}", progress=True)
    t_tune = time.perf_counter() - t0
    print(result.table(), file=sys.stderr)
    params = sum(p.numel() for p in model.net.parameters())
    print(f"\n[tune] digits U-Net {args.digits} ({params / 1e6:.2f} M parameters, {sde!r}), float64; evaluation batch "
          f"{n} (seed 0), tuned on {args.n_calibration} + {args.n_calibration} (seed {bench.CALIB_SEED}); goal tuned "
          "<= 0.2x the best untuned configuration")
    print(f"  tuning cost: {result.calls['total']} model calls (batched), {t_tune:.0f} s for NFE {nfes}")
    print(f"  {'NFE':>4} {'untuned':>10} {'tuned':>10} {'ratio':>7}  tuned; best untuned")
    rows = []
    for nfe in nfes:
        tuned = result.tuned[nfe]
        e_tuned = endpoint_error(tuned.sample(model, x_T=x_T).samples, ref)
        best = (None, math.inf)
        for name, opts in zoo_configs(methods):
            sampler = SAMPLERS[name](**opts)
            steps = bench.steps_for(sampler, nfe)
            for grid in sd_grids.available():
                try:
                    e = endpoint_error(sample(model, sde, name, steps, x_T=x_T, grid=grid, **opts).samples, ref)
                except (FloatingPointError, ValueError):
                    e = math.nan
                rows.append({"problem": "digits", "nfe": nfe, "group": "fixed", "config": f"{bench.label(name, opts)} | "
                             f"{grid}", "endpoint_error": e})
                if e < best[1]:
                    best = (f"{bench.label(name, opts)} | {grid}", e)
        rows.append({"problem": "digits", "nfe": nfe, "group": "tuned", "config": tuned.label, "endpoint_error": e_tuned})
        flag = "" if e_tuned <= 0.2 * best[1] else "  <- goal not met"
        print(f"  {nfe:>4} {best[1]:>10.3e} {e_tuned:>10.3e} {e_tuned / best[1]:>7.3f}  {tuned.label}; {best[0]}{flag}")
    bench.write_csv(Path(args.out) / "tune_digits_rows.csv", rows)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
