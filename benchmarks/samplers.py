"""Sampler benchmark on the exact Gaussian-mixture oracle (a script, not a test).

    python benchmarks/samplers.py [--quick] [--device cpu|cuda] [--out benchmarks/results]

Three parts, each printed as tables and written as CSV under ``--out``:

1. accuracy.csv: for eight_gaussians and toy.anisotropic_mixture(16), under VP and VE, every
   deterministic sampler configuration on every grid at NFE 5, 6, 8, 10, 15, 20, 50, 100: the endpoint
   error (mean over the batch of ||x - x_ref||_2) against the reference solution of the
   probability-flow ODE from the same x_T between the same two ends (torchdiffeq dopri5 at
   rtol = atol = 1e-10, float64), and the sliced W2 to a data sample (with the two-sample noise floor).
   A configuration runs the largest step count whose declared NFE fits the budget; the table shows
   the NFE it used.
2. overhead.csv: for every fixed-step sampler, its own cost per model call as a fraction of one call
   of a network of realistic cost (``--overhead-net``: the package's image U-Net on (B, 3, 32, 32), batch 8,
   ~50 ms a call on one CPU thread; or an MLP 4 x 1024 on the same images, batch 64), against a bare loop calling the same network on the very inputs the sampler gave it, per step
   (the difference of two step counts), fastest of interleaved repeats; and the same cost with a
   free model. Target <= 2 %.
3. diffusers.csv: at NFE 5 and 10 on DiscreteVPSDE() (1000-step linear DDPM schedule) with the exact
   mixture eps, the best scoresde configuration against the best of diffusers' DDIM,
   DPMSolverMultistep, UniPCMultistep and DEIS schedulers (spacings, orders, Karras sigmas, final
   steps). Every run is compared with the reference that starts and ends at that run's own noise
   levels; the oracle is called at the noise level each scheduler uses in its update (sched.sigmas),
   so no scheduler is penalised for rounding its timesteps. A run that ends at sigma = 0 is compared
   with the ODE solution at sigma ~ 1e-4 followed by the exact denoiser (their difference is
   O(sigma^2), far below the errors measured). Target: ours at most half the error of theirs.
   Besides the fixed grids, scoresde also runs with an *optimised grid*
   (scoresde.studies.grid_opt.optimise_grid) for the samplers in OPT_GRID_CONFIGS: the interior
   times are chosen by Nelder-Mead to minimise the endpoint error on a calibration batch of x_T
   drawn with a different seed (CALIB_SEED) from the evaluation batch, against the reference
   between the same two ends (T, t_min); the grid is then frozen and evaluated on the benchmark's
   own x_T like every other run. Those rows are labelled "optimised grid (calibrated on separate
   x_T ...)", and the table also prints the best fixed-grid scoresde run and its ratio.
   Last, a *fitted solver*: ``linear_multistep`` with its grid and its coefficients fitted by
   gradient descent on the same calibration batch (scoresde.studies.solver_fit), frozen, then
   evaluated from the benchmark's x_T. Calibrated solvers spend model calls offline (the fit's NFE
   is in its result) and hold for one model, one step count and one pair of ends only; the table
   prints each kind of scoresde run (fixed grid, optimised grid, fitted solver) with its own ratio.
4. training_free.csv (issue 23): on two 2-D mixtures (8 Gaussians on a ring; 7 strongly anisotropic
   components) at NFE 5 .. 100 on DiscreteVPSDE(), the best fixed-grid scoresde configuration (DEIS tAB and
   iPNDM of samplers/deis.py and samplers/ipndm.py, diff-sampler's polynomial-in-time grids, and every
   earlier sampler and grid) against the best of the diffusers schedulers of part 3, each run against the
   reference between its own two ends, with the ratio against the best earlier scoresde configuration
   measured in the same run. Target: best scoresde / best peer <= 0.7 at every NFE.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde import grids as sd_grids
from scoresde import toy
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import SAMPLERS, available, sample
from scoresde.studies.references import reference_pf_ode

NFES = [5, 6, 8, 10, 15, 20, 50, 100]

# Deterministic configurations (name, options); names not registered are skipped, and any
# registered deterministic sampler missing here runs with its defaults.
CONFIGS = [
    ("ddim", {}),
    ("dpm_solver", {"order": 2, "lower_order_final": False}),
    ("dpm_solver", {"order": 3, "lower_order_final": False}),
    ("dpm_solver++", {"order": 2, "lower_order_final": False}),
    ("dpm_solver++", {"order": 3, "lower_order_final": False}),
    ("dpm_solver++", {"order": 2, "lower_order_final": True}),
    ("dpm_solver++", {"order": 2, "variant": "singlestep", "lower_order_final": False}),
    ("dpm_solver++", {"order": 3, "variant": "singlestep", "lower_order_final": False}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 2, "variant": "bh1"}),
    ("unipc", {"order": 2, "variant": "bh2"}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("unipc", {"order": 3, "variant": "bh2"}),
    ("heun", {}),
    ("ode", {"solver": "euler"}),
    ("ode", {"solver": "midpoint"}),
    ("ode", {"solver": "rk4"}),
]


def label(name, opts):
    return name + ("(" + ",".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def deterministic_configs():
    out = [(n, o) for n, o in CONFIGS if n in SAMPLERS]
    for n in available():
        s = SAMPLERS[n]()
        if not s.stochastic and s.expected_nfe(1) is not None and not any(n == m for m, _ in out):
            out.append((n, {}))
    return out


def steps_for(sampler, nfe):
    """Largest step count whose declared NFE fits ``nfe`` (None if even one step does not)."""
    best = None
    for steps in range(1, nfe + 2):  # nfe + 1 steps fit a sampler that saves a call (DEIS/iPNDM with afs)
        e = sampler.expected_nfe(steps)
        if e is None or e > nfe:
            break
        best = steps
    return best


def mean_err(x, ref):
    return float((x.to(torch.float64) - ref).flatten(1).norm(dim=1).mean())


def endpoint_error(mix, sde, x_T):
    """``err(samples, t0, t1)``: the mean endpoint error against the reference over the run's own two ends,
    each reference solved once per pair of ends (a run's ends are the grid's, so equal ends are equal floats)."""
    refs = {}

    def err(samples, t0, t1):
        key = (round(t0, 12), round(t1, 12))
        if key not in refs:
            refs[key] = reference(mix, sde, x_T, t0, t1)
        return mean_err(samples, refs[key])
    return err


def reference(mix, sde, x_T, t_start, t_end):
    """PF-ODE solution from (x_T, t_start) to t_end with the exact mixture score: the shared reference
    (scoresde.studies.references.reference_pf_ode: dopri5 in log-SNR at rtol = atol = 1e-10, float64;
    smooth in log-SNR also on the piecewise DiscreteVPSDE). t_end = 0 (sigma = 0): solve to
    sigma/alpha = 1e-4, then apply the exact denoiser."""
    model = mix.model(sde)
    t_stop = t_end
    if t_end == 0.0:
        t_stop = float(sde.t_of_lam(torch.tensor(math.log(1e4), dtype=torch.float64)))
    x = reference_pf_ode(model, x_T.to(torch.float64), t_start, t_stop, tol=1e-10, estimate_error=False).x
    if t_end == 0.0:
        x = model.x0(x, t_stop)
    return x


def write_csv(path: Path, rows: list[dict]):
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def print_table(title, row_keys, col_keys, cell):
    print(f"\n{title}")
    width = max(len(r) for r in row_keys) + 2
    print(" " * width + "".join(f"{c:>10}" for c in col_keys))
    for r in row_keys:
        print(f"{r:<{width}}" + "".join(f"{cell(r, c):>10}" for c in col_keys))


# ---------------------------------------------------------------------------------------------
# 1. accuracy
# ---------------------------------------------------------------------------------------------
def accuracy(args):
    problems = [("eight_gaussians", toy.eight_gaussians_mixture()), ("aniso16", toy.anisotropic_mixture(16))]
    sdes = [("vp", sd.VPSDE()), ("ve", sd.VESDE())]
    grid_names = sd_grids.available()
    nfes = NFES
    configs = deterministic_configs()
    if args.quick:
        problems, sdes, nfes, grid_names = problems[:1], sdes[:1], [5, 10, 20], ["logsnr", "uniform"]
    rows = []
    for pname, mix in problems:
        for sname, sde in sdes:
            n = args.batch
            g = torch.Generator().manual_seed(0)
            x_T = sde.prior_sample((n, mix.dim), generator=g, dtype=torch.float64)
            data = mix.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            data2 = mix.sample(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
            floor = sliced_wasserstein(data, data2, 128, torch.Generator().manual_seed(3))
            t0 = time.perf_counter()
            ref = reference(mix, sde, x_T, sde.T, sde.t_min)
            t_ref = time.perf_counter() - t0
            sw_ref = sliced_wasserstein(ref, data, 128, torch.Generator().manual_seed(3))
            model = mix.model(sde)
            table = {}
            for name, opts in configs:
                sampler = SAMPLERS[name](**opts)
                for grid in grid_names:
                    for nfe in nfes:
                        steps = steps_for(sampler, nfe)
                        if steps is None:
                            continue
                        try:
                            res = sample(model, sde, name, steps, x_T=x_T, grid=grid, **opts)
                            err = mean_err(res.samples, ref)
                            sw = sliced_wasserstein(res.samples, data, 128, torch.Generator().manual_seed(3))
                            used = res.nfe
                        except (FloatingPointError, ValueError) as e:  # report, keep going
                            err, sw, used = float("nan"), float("nan"), -1
                            print(f"  {label(name, opts)} {grid} nfe={nfe}: {e}", file=sys.stderr)
                        table[(label(name, opts) + " | " + grid, nfe)] = (err, used)
                        rows.append({"problem": pname, "sde": sname, "sampler": name, "options": label(name, opts),
                                     "grid": grid, "nfe_budget": nfe, "steps": steps, "nfe": used,
                                     "endpoint_error": err, "sliced_w2_to_data": sw, "sw_noise_floor": floor,
                                     "sw_reference_to_data": sw_ref})
            keys = sorted({k[0] for k in table}, key=lambda k: (k.split(" | ")[1], k))
            print_table(f"[accuracy] {pname} / {sname}: mean endpoint error vs dopri5 reference "
                        f"(batch {n}; reference {t_ref:.1f}s; SW2(ref, data) = {sw_ref:.4f}, floor {floor:.4f})",
                        keys, nfes, lambda r, c: "-" if (r, c) not in table else f"{table[(r, c)][0]:.2e}")
            best = {}
            for (k, nfe), (err, _) in table.items():
                grid = k.split(" | ")[1]
                if not math.isnan(err):
                    best[(grid, nfe)] = min(best.get((grid, nfe), math.inf), err)
            print_table(f"[accuracy] {pname} / {sname}: best error per grid", grid_names, nfes,
                        lambda r, c: f"{best.get((r, c), math.nan):.2e}")
    write_csv(Path(args.out) / "accuracy.csv", rows)
    return rows


# ---------------------------------------------------------------------------------------------
# 2. overhead
# ---------------------------------------------------------------------------------------------
class ImageMLP(torch.nn.Module):
    """An MLP 4 x 1024 on images (B, 3, 32, 32), time as an extra input: about 1 GFLOP a call at batch 64,
    a network of realistic cost on a CPU (tens of ms a call on one core); untrained, since its cost does not
    depend on the weights."""

    def __init__(self, shape=(3, 32, 32), hidden=1024):
        super().__init__()
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, x, t):
        out = self.net(torch.cat([x.flatten(1), t[:, None].to(x.dtype)], dim=1))
        return out.reshape(x.shape)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def fixed_step_configs(quick):
    """Every registered non-adaptive sampler with its defaults; in the full run also the option sets of
    CONFIGS (non-adaptive ones)."""
    out = [(n, {}) for n in available() if not SAMPLERS[n]().adaptive]
    if not quick:
        out += [(n, o) for n, o in CONFIGS if n in SAMPLERS and o and not SAMPLERS[n](**o).adaptive]
    return out


def overhead(args):
    """Each fixed-step sampler's own cost per model call, as a fraction of the call of a realistic network.

    The network is the package's image U-Net (``build_net('unet')``, default options, 1.7 M parameters) or
    :class:`ImageMLP` (4 x 1024), on (B, 3, 32, 32), float32, batch ``--overhead-batch``; untrained, since
    the cost of a call does not depend on the weights.
    Every run is timed at two step counts and the difference is taken, so what is measured is the cost
    per step, not the one-off set-up of ``sample()`` (grid, checks), reported apart. Two measurements:

    * ``own_fraction_measured``: (sampler time at hi steps - at lo steps) minus (bare loop time over the
      same two sets of inputs), per extra model call, over the bare call. The bare loop calls the same
      network on exactly the inputs (x, t) the sampler gave it (recorded in an untimed run first), so the
      difference is the sampler's work only. Each kind of run is timed ``repeats`` times, interleaved,
      and its fastest (least disturbed) time is used; on a loaded machine the result still carries
      the load's noise.
    * ``own_fraction_free``: the same difference with a free model (``fn`` returns its input: no network
      cost, the sampler's arithmetic on the same shapes), over the bare call. It does not depend on the load.

    On a CPU every time is this process's CPU time on one thread (``time.process_time``), which the load
    of other processes on a shared machine barely changes; on CUDA it is wall time after synchronising.

    Target: at most 2 % of a model call.
    """
    device = torch.device(args.device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    sde = sd.VPSDE()
    torch.manual_seed(0)
    if args.overhead_net == "unet":
        net = sd.nets.build_net("unet", in_channels=3, image_size=32, sde=sde, parameterization="eps").to(device).eval()
        net.shape, what = (3, 32, 32), "the image U-Net (1.7 M parameters)"
        with torch.no_grad():  # its zero-initialised layers would make eps = 0 and pc's step size infinite
            for p in net.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
    else:
        net, what = ImageMLP().to(device), "an MLP 4 x 1024"
    model = sd.ScoreModel(net, sde, "eps")
    free = sd.ScoreModel(lambda x, t: x, sde, "eps")
    B = args.overhead_batch or (8 if args.overhead_net == "unet" else 64)
    (lo, hi), repeats = ((4, 12), 3) if args.quick else ((10, 30), 5)
    g = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(B, *net.shape, generator=g, device=device)
    configs = fixed_step_configs(args.quick)

    def run(m, name, opts, steps):
        gen = torch.Generator(device=device).manual_seed(1)
        _sync(device)
        t0 = clock()
        res = sample(m, sde, name, steps, x_T=x_T, generator=gen, **opts)
        _sync(device)
        return clock() - t0, res.nfe

    def recorded_inputs(name, opts, steps):
        inputs = []

        def fn(x, t):
            inputs.append((x.clone(), t.clone()))
            return net(x, t)

        run(sd.ScoreModel(fn, sde, "eps"), name, opts, steps)
        return inputs

    def bare(inputs):
        _sync(device)
        t0 = clock()
        for x, t in inputs:
            net(x, t)
        _sync(device)
        return clock() - t0

    for _ in range(3):
        net(x_T, torch.full((B,), 0.5, device=device))  # warm-up
    rows = []
    for name, opts in configs:
        rec_lo, rec_hi = recorded_inputs(name, opts, lo), recorded_inputs(name, opts, hi)
        extra = len(rec_hi) - len(rec_lo)
        times = {"s_lo": [], "s_hi": [], "b_lo": [], "b_hi": [], "f_lo": [], "f_hi": []}
        for _ in range(repeats):  # interleaved, so a burst of load hits every kind of run alike
            times["s_lo"].append(run(model, name, opts, lo)[0])
            t, nfe = run(model, name, opts, hi)
            times["s_hi"].append(t)
            times["b_lo"].append(bare(rec_lo))
            times["b_hi"].append(bare(rec_hi))
            # the free model is cheap: more steps keep the difference well above the timer's resolution
            t, n_lo = run(free, name, opts, 5 * lo)
            times["f_lo"].append(t)
            t, n_hi = run(free, name, opts, 5 * hi)
            times["f_hi"].append(t)
        best = {k: min(v) for k, v in times.items()}  # the least disturbed run of each kind
        t_call = (best["b_hi"] - best["b_lo"]) / extra
        own_measured = ((best["s_hi"] - best["s_lo"]) - (best["b_hi"] - best["b_lo"])) / extra
        own_free = max(0.0, (best["f_hi"] - best["f_lo"]) / (n_hi - n_lo))
        setup = best["f_lo"] - own_free * n_lo
        rows.append({"sampler": label(name, opts), "net": args.overhead_net, "device": str(device),
                     "timer": clock.__name__, "batch": B,
                     "shape": "3x32x32",
                     "steps": f"{lo}->{hi}", "nfe": nfe, "bare_call_ms": 1e3 * t_call,
                     "own_ms_per_call_measured": 1e3 * own_measured, "own_fraction_measured": own_measured / t_call,
                     "own_ms_per_call_free": 1e3 * own_free, "own_fraction_free": own_free / t_call,
                     "setup_ms": 1e3 * setup})
    print(f"\n[overhead] each sampler's own cost per model call, as a fraction of one call of {what} on "
          f"(B, 3, 32, 32) (batch {B}, float32, steps {lo} -> {hi}, {device}, "
          f"{'wall time' if device.type == 'cuda' else 'process CPU time, 1 thread'}, fastest of {repeats}; "
          f"target <= 2 %)\n  measured: (sampler - bare loop on the same inputs) per extra call; "
          f"free: the sampler with a model that costs nothing")
    for r in rows:
        ok = min(r["own_fraction_free"], max(r["own_fraction_measured"], 0.0)) <= 0.02
        print(f"  {r['sampler']:<60} nfe {r['nfe']:>4}  call {r['bare_call_ms']:7.2f} ms  own measured "
              f"{100 * r['own_fraction_measured']:6.2f} %  free {100 * r['own_fraction_free']:5.2f} % "
              f"({r['own_ms_per_call_free']:.3f} ms)  set-up {r['setup_ms']:.2f} ms once"
              f"{'' if ok else '  <- above target'}")
    write_csv(Path(args.out) / "overhead.csv", rows)
    torch.set_num_threads(threads)
    return rows


# ---------------------------------------------------------------------------------------------
# 3. against diffusers
# ---------------------------------------------------------------------------------------------
def diffusers_runs(mix, sde, x_T, nfe, quick):
    """Every diffusers configuration at ``nfe`` model calls: (label, samples, t_start, t_end)."""
    import diffusers

    N = sde.N
    base = {"num_train_timesteps": N, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "prediction_type": "epsilon"}
    spacings = ["linspace", "leading", "trailing"]
    configs = []
    for sp in spacings:
        configs.append(("DDIM", diffusers.DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": True, "timestep_spacing": sp}))
        configs.append(("DDIM", diffusers.DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": sp}))
        for karras in (False, True):
            for order in (2, 3):
                for final in ("zero", "sigma_min"):
                    configs.append(("DPMSolverMultistep", diffusers.DPMSolverMultistepScheduler,
                                    {"algorithm_type": "dpmsolver++", "solver_order": order, "use_karras_sigmas": karras,
                                     "final_sigmas_type": final, "timestep_spacing": sp}))
                    for bh in ("bh1", "bh2"):
                        configs.append(("UniPCMultistep", diffusers.UniPCMultistepScheduler,
                                        {"solver_order": order, "solver_type": bh, "use_karras_sigmas": karras,
                                         "final_sigmas_type": final, "timestep_spacing": sp}))
                configs.append(("DEIS", diffusers.DEISMultistepScheduler,
                                {"solver_order": order, "use_karras_sigmas": karras, "timestep_spacing": sp}))
    if quick:
        configs = [c for c in configs if c[2].get("timestep_spacing") != "leading"]

    def eps_at(x, t):
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        return (-sde.sigma(tt)[:, None] * mix.score(x.to(torch.float64), tt, sde)).to(torch.float32)

    def t_of_sigma_ratio(s):  # diffusers' sigma is sigma/alpha = e^{-lam}
        return float(sde.t_of_lam(torch.tensor(-math.log(float(s)), dtype=torch.float64)))

    out = []
    for fam, cls, cfg in configs:
        try:
            sched = cls(**base, **cfg)
            sched.set_timesteps(nfe)
        except Exception as e:  # a configuration diffusers itself rejects
            print(f"  diffusers {fam} {cfg}: {e}", file=sys.stderr)
            continue
        x = x_T.to(torch.float32)
        if fam == "DDIM":
            levels = [(int(ts) + 1) / N for ts in sched.timesteps]
            t_end = 0.0 if cfg["set_alpha_to_one"] else 1.0 / N
        else:
            levels = [t_of_sigma_ratio(s) for s in sched.sigmas[:-1]]
            t_end = 0.0 if float(sched.sigmas[-1]) == 0 else t_of_sigma_ratio(sched.sigmas[-1])
        for ts, t in zip(sched.timesteps, levels, strict=True):
            x = sched.step(eps_at(x, t), ts, x).prev_sample
        lab = fam + "(" + ",".join(f"{k}={v}" for k, v in cfg.items() if k not in ("clip_sample",)) + ")"
        out.append((lab, x.to(torch.float64), levels[0], t_end, len(levels)))
    return out


def oracle_eps_model(mix, sde):
    """The exact mixture score as a noise-prediction model (the parameterisation the schedulers take)."""
    return sd.ScoreModel(lambda x, t: -sde.sigma(t)[:, None] * mix.score(x, t, sde), sde, "eps")


_CALIBRATION: dict = {}


def calibration_batch(mix, sde, n):
    """``n`` starting points drawn with CALIB_SEED (never the evaluation seed) and their reference endpoints
    from T to t_min; solved once per (mixture, SDE, n) and shared by the grid optimiser and the solver fit."""
    key = (id(mix), id(sde), n)
    if key not in _CALIBRATION:
        x_cal = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(CALIB_SEED), dtype=torch.float64)
        _CALIBRATION[key] = (mix, sde, x_cal, reference(mix, sde, x_cal, float(sde.T), float(sde.t_min)))
    return _CALIBRATION[key][2:]


def ours_runs(mix, sde, x_T, nfe, quick):
    model = oracle_eps_model(mix, sde)
    configs = [c for c in deterministic_configs() if c[0] != "ode"]
    grids = sd_grids.available()
    out = []
    for name, opts in configs:
        sampler = SAMPLERS[name](**opts)
        for grid in grids:
            for final in (False, True):
                steps = steps_for(sampler, nfe - int(final))
                if steps is None:
                    continue
                res = sample(model, sde, name, steps, x_T=x_T, grid=grid, final_denoise=final, **opts)
                out.append((f"{label(name, opts)} | {grid}{' +denoise' if final else ''}", res.samples,
                            res.t_start, res.t_end, res.nfe))
    return out


# Samplers that also run with a grid optimised on a separate calibration batch: the two best
# fixed-grid scoresde configurations of this comparison.
OPT_GRID_CONFIGS = [
    ("dpm_solver", {"order": 2, "lower_order_final": False}),
    ("dpm_solver", {"order": 3, "lower_order_final": False}),
]
CALIB_SEED = 1  # the evaluation x_T use seed 0


def optimised_grid_runs(mix, sde, x_T, nfe, quick):
    """Each OPT_GRID_CONFIGS sampler on a grid optimised for the endpoint error on a calibration batch
    drawn with CALIB_SEED (independent of ``x_T``), then evaluated from ``x_T``: (label, samples, t_start,
    t_end, nfe, grid times)."""
    from scoresde.studies.grid_opt import optimise_grid

    n_cal, max_evals = (256, 600) if quick else (500, 1500)
    model = oracle_eps_model(mix, sde)
    x_cal, ref_cal = calibration_batch(mix, sde, n_cal)
    out = []
    for name, opts in OPT_GRID_CONFIGS:
        if name not in SAMPLERS:
            continue
        steps = steps_for(SAMPLERS[name](**opts), nfe)
        if steps is None or steps < 2:
            continue
        # Start from the best named grid on the calibration batch (never on the evaluation batch).
        cal = {}
        for g in sd_grids.available():
            times = sd_grids.make_grid(g, sde, steps)
            cal[g] = (mean_err(sample(model, sde, name, x_T=x_cal, grid=times, **opts).samples, ref_cal), times)
        init = min(cal.values(), key=lambda v: v[0])[1]
        best, _, _ = optimise_grid(model, (name, opts), steps, x_cal, ref_cal, init=init, max_evals=max_evals)
        res = sample(model, sde, name, x_T=x_T, grid=best, **opts)
        lab = (f"{label(name, opts)} | optimised grid (calibrated on separate x_T: seed {CALIB_SEED}, n={n_cal}, "
               f"{max_evals} evals)")
        out.append((lab, res.samples, res.t_start, res.t_end, res.nfe, " ".join(f"{float(t):.5g}" for t in best)))
    return out


def fitted_solver_runs(mix, sde, x_T, nfe, quick):
    """A ``linear_multistep`` solver whose grid and coefficients are fitted by gradient descent
    (scoresde.studies.solver_fit) on a calibration batch drawn with CALIB_SEED, independent of ``x_T``,
    then frozen and evaluated from ``x_T``: (label, samples, t_start, t_end, nfe, grid times)."""
    from scoresde.studies.solver_fit import fit_linear_multistep

    n_cal, iterations = (256, 300) if quick else (1000, 300)
    model = oracle_eps_model(mix, sde)
    x_cal, ref_cal = calibration_batch(mix, sde, n_cal)
    # two starting grids; the one with the lower *calibration* loss after the fit is kept
    fits = [fit_linear_multistep(model, nfe, x_cal, ref_cal, init_grid=g, iterations=iterations)
            for g in ("logsnr", "quadratic")]
    fs = min(fits, key=lambda f: f.calib_error)
    res = fs.sample(model, x_T=x_T)
    lab = (f"linear_multistep | fitted grid + coefficients (calibrated on separate x_T: seed {CALIB_SEED}, "
           f"n={n_cal}, {iterations} Adam iterations from the {fs.config['init_grid']} grid)")
    return [(lab, res.samples, res.t_start, res.t_end, res.nfe, " ".join(f"{float(t):.5g}" for t in fs.times))]


def against_diffusers(args):
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("\n[diffusers] not installed (pip install scoresde[bench]); skipped")
        return []
    sde = sd.DiscreteVPSDE()
    problems = [("eight_gaussians", toy.eight_gaussians_mixture()), ("aniso16", toy.anisotropic_mixture(16))]
    rows, summary = [], []
    for pname, mix in problems:
        x_T = torch.randn(args.batch, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        err = endpoint_error(mix, sde, x_T)

        for nfe in (5, 10):
            best = {}
            t_opt = time.perf_counter()
            opt_runs = optimised_grid_runs(mix, sde, x_T, nfe, args.quick)
            t_opt = time.perf_counter() - t_opt
            t_fit = time.perf_counter()
            fit_runs = fitted_solver_runs(mix, sde, x_T, nfe, args.quick)
            t_fit = time.perf_counter() - t_fit
            groups = (("diffusers", "diffusers", [r + ("",) for r in diffusers_runs(mix, sde, x_T, nfe, args.quick)]),
                      ("scoresde", "fixed", [r + ("",) for r in ours_runs(mix, sde, x_T, nfe, args.quick)]),
                      ("scoresde", "optimised", opt_runs),
                      ("scoresde", "fitted", fit_runs))
            for side, group, runs in groups:
                for lab, x, t0, t1, used, times in runs:
                    e = err(x, t0, t1)
                    rows.append({"problem": pname, "nfe": nfe, "side": side, "config": lab, "nfe_used": used,
                                 "t_start": t0, "t_end": t1, "endpoint_error": e, "optimised_grid_times": times})
                    for key in {side, group}:  # best per side, and per kind of scoresde grid
                        if used <= nfe and (key not in best or e < best[key][1]):
                            best[key] = (lab, e, t0, t1)
            ratio = best["scoresde"][1] / best["diffusers"][1]
            summary.append((pname, nfe, best, ratio, t_opt, t_fit))
    print("\n[diffusers] best endpoint error at a fixed NFE, DiscreteVPSDE() (1000-step linear), exact mixture eps "
          f"(batch {args.batch}); target ratio ours/theirs <= 0.5")
    for pname, nfe, best, ratio, t_opt, t_fit in summary:
        for side in ("scoresde", "diffusers"):
            lab, e, t0, t1 = best[side]
            print(f"  {pname:<16} NFE {nfe:>3}  {side:<9} {e:.3e}  t {t0:.4f} -> {t1:.4g}  {lab}")
        print(f"  {pname:<16} NFE {nfe:>3}  ratio ours/theirs = {ratio:.3f}{'' if ratio <= 0.5 else '  <- above target'}")
        lab, e, t0, t1 = best["fixed"]
        print(f"  {pname:<16} NFE {nfe:>3}    (scoresde, fixed grids only: {e:.3e}, ratio {e / best['diffusers'][1]:.3f}, "
              f"{lab})")
        if "optimised" in best:
            lab, e, t0, t1 = best["optimised"]
            print(f"  {pname:<16} NFE {nfe:>3}    (scoresde, optimised grids only: {e:.3e}, ratio "
                  f"{e / best['diffusers'][1]:.3f}, {t_opt:.1f}s to calibrate)")
        if "fitted" in best:
            lab, e, t0, t1 = best["fitted"]
            print(f"  {pname:<16} NFE {nfe:>3}    (scoresde, fitted solver only: {e:.3e}, ratio "
                  f"{e / best['diffusers'][1]:.3f}, {t_fit:.1f}s to fit)")
    write_csv(Path(args.out) / "diffusers.csv", rows)
    write_csv(Path(args.out) / "diffusers_best.csv",
              [{"problem": p, "nfe": n, "ours": b["scoresde"][0], "ours_error": b["scoresde"][1],
                "theirs": b["diffusers"][0], "theirs_error": b["diffusers"][1], "ratio": r,
                "ours_fixed_grid": b["fixed"][0], "ours_fixed_grid_error": b["fixed"][1],
                "ratio_fixed_grid": b["fixed"][1] / b["diffusers"][1],
                "ours_optimised_grid_error": b["optimised"][1] if "optimised" in b else math.nan,
                "ours_fitted_solver_error": b["fitted"][1] if "fitted" in b else math.nan}
               for p, n, b, r, _, _ in summary])
    return rows


# ---------------------------------------------------------------------------------------------
# 4. training-free solvers and grids against the best peer (issue 23)
# ---------------------------------------------------------------------------------------------
TF_NFES = [5, 6, 8, 10, 15, 20, 25, 50, 100]
# The solvers of zju-pi/diff-sampler in our frame (samplers/deis.py, samplers/ipndm.py); the grids are all
# the named ones, diff-sampler's polynomial-in-time ones (time_rho1/2/7) included.
TF_NEW_CONFIGS = [("deis", {"order": k, "variable": v, "prediction": p, "afs": afs}) for k in (2, 3, 4, 5)
                  for v, p in (("vp_t", "noise"), ("vp_t", "data"), ("lam", "data"))
                  for afs in (False, True)]
# zju-pi/diff-sampler's own methods as transcribed here (a peer: its DEIS tAB in its VP time with the noise
# prediction, its iPNDM with the published and the variable-step weights, max_order <= 4, with and without its
# analytical first step, on its schedules: 'polynomial' rho = 7 in sigma = our karras, logsnr, time_uniform with
# rho 1, 2, 7; with and without denoise_to_zero). Its code integrates the DEIS weights by a 10^4-point Riemann
# sum and its ipndm_v has its own order-4 formula; ours are exact, so these rows are at least as accurate as its.
DIFF_SAMPLER_CONFIGS = ([("deis", {"order": k, "variable": "vp_t", "prediction": "noise", "afs": afs})
                         for k in (2, 3, 4) for afs in (False, True)]
                        + [("ipndm", {"order": k, "weights": w, "afs": afs}) for k in (2, 3, 4)
                           for w in ("variable", "published") for afs in (False, True)])
DIFF_SAMPLER_GRIDS = ("karras", "logsnr", "time_rho1", "time_rho2", "time_rho7")
TF_NEW_GRIDS = ("time_rho1", "time_rho2", "time_rho3", "time_rho7")


def tf_problems():
    """The two 2-D mixtures of issue 23: 8 isotropic Gaussians on a ring, and 7 strongly anisotropic
    components (covariance eigenvalues 0.01 and 1, random orientations: toy.anisotropic_mixture(2, 7))."""
    return [("ring8", toy.eight_gaussians_mixture()), ("aniso2d7", toy.anisotropic_mixture(2, 7))]


def training_free(args):
    """Best fixed-grid scoresde configuration against the best peer (diffusers' DDIM, DPM-Solver++ and UniPC
    multistep and DEIS schedulers in every spacing, order, Karras and final-step option), at each NFE, on
    DiscreteVPSDE() with the exact mixture eps. Each run is compared with the reference between its own two
    ends. Three scoresde groups: 'existing' (the samplers of CONFIGS on the grids before issue 23), 'all' (every
    configuration of this part outside the peer's set: existing and new samplers on every named grid, with and
    without a final denoising step inside the budget) and 'diff-sampler' (its methods as transcribed here, a
    peer, see DIFF_SAMPLER_CONFIGS). Target: ours / best peer <= 0.7."""
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("\n[training-free] diffusers not installed; skipped")
        return []
    sde = sd.DiscreteVPSDE()
    nfes = [5, 10, 20] if args.quick else TF_NFES
    new_names = {n for n, _ in TF_NEW_CONFIGS}
    existing = [c for c in deterministic_configs() if c[0] not in new_names and c[0] != "ode"]
    configs = ([("existing", n, o, sd_grids.available()) for n, o in existing]
               + [("new", n, o, sd_grids.available()) for n, o in TF_NEW_CONFIGS]
               + [("diff-sampler", n, o, DIFF_SAMPLER_GRIDS) for n, o in DIFF_SAMPLER_CONFIGS])
    rows, summary = [], []
    problems = [(p, m) for p, m in tf_problems() if not args.tf_problems or p in args.tf_problems.split(",")]
    for pname, mix in problems:
        x_T = torch.randn(args.batch, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        model = oracle_eps_model(mix, sde)
        err = endpoint_error(mix, sde, x_T)

        for nfe in nfes:
            best = {}

            def keep(group, lab, e, _best=best):
                if not math.isnan(e) and (group not in _best or e < _best[group][1]):
                    _best[group] = (lab, e)

            for lab, x, t0, t1, used in diffusers_runs(mix, sde, x_T, nfe, args.quick):
                e = err(x, t0, t1)
                rows.append({"problem": pname, "nfe": nfe, "group": "peer", "config": lab, "nfe_used": used, "endpoint_error": e})
                if used <= nfe:
                    keep("peer", lab, e)
            for group, name, opts, grid_names in configs:
                sampler = SAMPLERS[name](**opts)
                for grid in grid_names:
                    for final in (False, True):
                        steps = steps_for(sampler, nfe - int(final))
                        if steps is None:
                            continue
                        lab = f"{label(name, opts)} | {grid}{' +denoise' if final else ''}"
                        try:
                            res = sample(model, sde, name, steps, x_T=x_T, grid=grid, final_denoise=final, **opts)
                            e, used = err(res.samples, res.t_start, res.t_end), res.nfe
                        except (FloatingPointError, ValueError) as exc:  # report, keep going
                            e, used = math.nan, -1
                            print(f"  {lab} nfe={nfe}: {exc}", file=sys.stderr)
                        rows.append({"problem": pname, "nfe": nfe, "group": group, "config": lab, "nfe_used": used,
                                     "endpoint_error": e})
                        if group == "diff-sampler":
                            keep("diff-sampler", lab, e)
                        else:  # scoresde beyond the peer's methods (existing solvers on new grids included)
                            keep("ours", lab, e)
                        if group == "existing" and grid not in TF_NEW_GRIDS:
                            keep("existing", lab, e)
            summary.append((pname, nfe, best))
            print(f"  [training-free] {pname} NFE {nfe} done", file=sys.stderr, flush=True)
    print(f"\n[training-free] best endpoint error at each NFE, DiscreteVPSDE() with the exact mixture eps (batch "
          f"{args.batch}), each run against the reference between its own two ends. Columns: the best of diffusers' "
          "schedulers; the best of diff-sampler's methods as transcribed here; the best peer (either); the best "
          "scoresde configuration before issue 23; the best scoresde configuration outside diff-sampler's set "
          "(new solvers and grids included). Target: ours / peer <= 0.7")
    for pname in dict.fromkeys(p for p, _, _ in summary):
        print(f"\n  {pname}")
        print(f"  {'NFE':>4} {'diffusers':>10} {'diff-samp':>10} {'existing':>10} {'ours':>10} {'exist/peer':>11} "
              f"{'ours/peer':>10} {'ours/exist':>11}  best ours; best peer")
        for p, nfe, b in summary:
            if p != pname:
                continue
            dif, dsm, ex, ours = (b.get(k, ("-", math.nan)) for k in ("peer", "diff-sampler", "existing", "ours"))
            peer = min(dif, dsm, key=lambda v: v[1])
            flag = "" if ours[1] <= 0.7 * peer[1] else "  <- above target"
            print(f"  {nfe:>4} {dif[1]:>10.3e} {dsm[1]:>10.3e} {ex[1]:>10.3e} {ours[1]:>10.3e} {ex[1] / peer[1]:>11.3f} "
                  f"{ours[1] / peer[1]:>10.3f} {ours[1] / ex[1]:>11.3f}  {ours[0]}; {peer[0]}{flag}")
    write_csv(Path(args.out) / "training_free.csv", rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a subset (fewer problems, NFEs, grids, smaller batches, fewer repeats)")
    p.add_argument("--device", default="cpu", help="device of the overhead measurement (cpu or cuda)")
    p.add_argument("--batch", type=int, default=None, help="batch of the accuracy runs (default 1000; quick 200)")
    p.add_argument("--overhead-net", choices=("unet", "mlp"), default="unet",
                   help="network of the overhead part: the image U-Net (default) or an MLP 4 x 1024, on (B, 3, 32, 32)")
    p.add_argument("--overhead-batch", type=int, default=None,
                   help="batch of the overhead part's network calls (default 8 for the U-Net, 64 for the MLP)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder for the CSV files")
    p.add_argument("--tf-problems", default="", help="training_free part: a comma-separated subset of ring8,aniso2d7")
    p.add_argument("--parts", default="accuracy,overhead,diffusers,training_free", help="comma-separated parts to run")
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 200 if args.quick else 1000
    torch.set_grad_enabled(False)
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    if "accuracy" in parts:
        accuracy(args)
    if "overhead" in parts:
        overhead(args)
    if "diffusers" in parts:
        against_diffusers(args)
    if "training_free" in parts:
        training_free(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; CSV under {args.out}")


if __name__ == "__main__":
    main()
