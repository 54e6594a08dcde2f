"""ScoresdeScheduler against diffusers' native schedulers on a small UNet2DModel: wall time and agreement.

For each algorithm the same network, the same x_T and the same number of steps run twice through the
loop every diffusers pipeline uses (x_T = z * ``init_noise_sigma``, ``scale_model_input``, the UNet,
``scheduler.step``): once with diffusers' own scheduler, once with
``ScoresdeScheduler.from_scheduler(native)`` (the scoresde sampler of
:func:`~scoresde.interop.diffusers_equivalent` on the native timesteps, so both integrate the same grid
and must agree). Reported
per algorithm: the median time of each run over ``--repeats`` alternating runs after one warm-up
(CPU: process time on ``--threads`` threads; GPU: wall clock), their ratio (target <= 1.05), the
scheduler's own time per model call (the same loop with a free network that returns a stored
tensor: what the scheduler costs beyond the UNet), and the relative difference of the outputs (the baseline for it is the relative
difference between two *different* algorithms on the same noise levels, diffusers' DDIM and Heun, printed
last), and the cost of ``set_timesteps`` (a pipeline calls it once per image batch): its first call
for a step count (the grid and the listed calls are built) and a repeated one (cached), against the
native scheduler's.

Run: ``python benchmarks/diffusers_pipeline.py [--out benchmarks/results/diffusers_pipeline.txt]``
(a minute or two on one CPU core; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import diffusers
import torch

from scoresde.interop import ScoresdeScheduler

#: (diffusers scheduler, its config beyond the pipeline's)
CASES = [
    ("DDIMScheduler", {"timestep_spacing": "leading"}),
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing", "solver_order": 2}),
    ("UniPCMultistepScheduler", {"timestep_spacing": "trailing", "solver_order": 2}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("HeunDiscreteScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
]


def small_unet(device, dtype) -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16).to(device=device, dtype=dtype).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(unet, sched, z: torch.Tensor, steps: int) -> torch.Tensor:
    """The pipeline loop (Euler and Heun start in their frame: their init_noise_sigma is sigma-frame's)."""
    sched.set_timesteps(steps)
    x = z * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x


def _clock(device: torch.device) -> float:
    # on a shared CPU the process time (one intra-op thread) is what the run costs; wall time there
    # mostly measures the other processes. On a GPU, the wall clock after a synchronisation.
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def timed_pair(fn_a, fn_b, repeats: int, device: torch.device) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """Medians of ``repeats`` alternating runs of each after one warm-up (alternating spreads drifts evenly)."""
    out_a, out_b = fn_a(), fn_b()
    t_a, t_b = [], []
    for _ in range(repeats):
        for fn, acc in ((fn_a, t_a), (fn_b, t_b)):
            _sync(device)
            t0 = _clock(device)
            out = fn()
            _sync(device)
            acc.append(_clock(device) - t0)
            if fn is fn_a:
                out_a = out
            else:
                out_b = out
    return statistics.median(t_a), statistics.median(t_b), out_a, out_b


class _Fixed(torch.nn.Module):
    """A free 'network' (a stored output): what is left of a run is the scheduler's own cost."""

    def __init__(self, out: torch.Tensor):
        super().__init__()
        self.out = out

    def forward(self, x, t):
        return diffusers.models.unets.unet_2d.UNet2DOutput(sample=self.out)


def set_timesteps_cost(native, ours, steps: int) -> tuple[float, float, float]:
    """Median ms of ``set_timesteps(steps)`` for the native scheduler and ours (first and repeated call)."""
    def median_ms(fn, n=200):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    native_ms = median_ms(lambda: native.set_timesteps(steps))
    fresh = [ScoresdeScheduler.from_config(ours.config) for _ in range(20)]
    first_ms = median_ms(lambda: fresh.pop().set_timesteps(steps), n=20)
    # the plain route (from_config of the pipeline's config, diffusers' timestep rule, no native scheduler)
    plain = [ScoresdeScheduler.from_config(native.config, method=ours.config.method) for _ in range(20)]
    plain_ms = median_ms(lambda: plain.pop().set_timesteps(steps), n=20)
    return native_ms, first_ms, plain_ms, median_ms(lambda: ours.set_timesteps(steps))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    unet = small_unet(device, dtype)
    # the training schedule, explicit: a fresh scheduler's config marks its defaulted keys, and
    # from_config on another class then uses that class's defaults (Heun's betas differ from DDPM's)
    base = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
            "prediction_type": "epsilon"}
    z = torch.randn(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)

    lines = [f"UNet2DModel 32x32, {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, batch "
             f"{args.batch}, {args.steps} steps, {args.dtype} on {args.device} ({args.threads} thread(s)); "
             f"median of {args.repeats} runs after a warm-up",
             f"{'diffusers scheduler':<30} {'scoresde sampler':<36} {'calls':>5} {'diffusers s':>11} "
             f"{'scoresde s':>10} {'ratio':>6} {'rel. diff':>9} {'own ms/call':>17}",
             f"{'':<30} {'':<36} {'':>5} {'':>11} {'':>10} {'':>6} {'':>9} {'diffusers':>8} {'scoresde':>8}"]
    print("\n".join(lines))
    outputs = {}
    costs = []
    for name, config in CASES:
        theirs = getattr(diffusers, name)(**base, **config)
        ours = ScoresdeScheduler.from_scheduler(theirs)
        ours.set_timesteps(args.steps)
        kw = {k: v for k, v in ours._plan.sampler.__dict__.items() if not k.startswith("_")}
        label = ours.config.method
        t_theirs, t_ours, x_theirs, x_ours = timed_pair(lambda s=theirs: run(unet, s, z, args.steps),
                                                        lambda s=ours: run(unet, s, z, args.steps), args.repeats, device)
        free = _Fixed(0.1 * z)
        o_theirs, o_ours, _, _ = timed_pair(lambda s=theirs: run(free, s, z, args.steps),
                                            lambda s=ours: run(free, s, z, args.steps), args.repeats, device)
        calls = len(ours.timesteps)
        x_theirs, x_ours = x_theirs.double().cpu(), x_ours.double().cpu()
        outputs[name] = x_theirs
        diff = float((x_ours - x_theirs).norm() / x_theirs.norm())
        line = (f"{name:<30} {label[:36]:<36} {calls:>5} {t_theirs:>11.3f} {t_ours:>10.3f} "
                f"{t_ours / t_theirs:>6.3f} {diff:>9.1e} {1e3 * o_theirs / calls:>8.3f} {1e3 * o_ours / calls:>8.3f}")
        print(line)
        lines.append(line)
        costs.append((name, *set_timesteps_cost(theirs, ours, args.steps), kw))
    lines.append(f"set_timesteps({args.steps}) cost, ms (median of 200 calls; scoresde: first call of a new step "
                 "count via from_scheduler and via from_config, then repeated; ratio: repeated / diffusers)")
    lines.append(f"{'diffusers scheduler':<30} {'diffusers':>9} {'from_sched.':>11} {'from_config':>11} "
                 f"{'repeated':>9} {'ratio':>6}")
    for name, native, first, plain, again, _ in costs:
        lines.append(f"{name:<30} {native:>9.3f} {first:>11.3f} {plain:>11.3f} {again:>9.3f} {again / native:>6.2f}")
    print("\n".join(lines[-len(costs) - 2:]))
    if "DPMSolverMultistepScheduler" in outputs and "HeunDiscreteScheduler" in outputs:
        a, b = outputs["DPMSolverMultistepScheduler"], outputs["HeunDiscreteScheduler"]
        line = (f"baseline for rel. diff: diffusers' DPM-Solver++ against its Heun (different algorithms, same noise "
                f"levels): {float((a - b).norm() / b.norm()):.1e}")
        print(line)
        lines.append(line)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
