"""Parameter counts and forward / training-step times of the image networks at their default sizes.

The defaults of :class:`~scoresde.nets.UNet` and :class:`~scoresde.nets.DiT` are the small
configurations recommended for the digits benchmark (about 1.7 M and 1.9 M parameters). Each row
times ``net(x, t)`` without gradients and one forward + backward of the eps loss, at batch 64, as the
median over ``--repeats`` runs after one warm-up, on ``--threads`` intra-op threads (CPU: process
time, which counts every thread's work; GPU: wall clock).

Run: ``python benchmarks/nets.py`` (about a minute on one CPU core; ``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import scoresde as sd
from scoresde.nets import build_net, shape_kwargs

#: (name, event shape, options beyond the defaults)
CONFIGS = [
    ("unet", (1, 8, 8), {}),
    ("unet", (1, 8, 8), {"attn_resolutions": [4]}),
    ("dit", (1, 8, 8), {}),
    ("unet", (3, 32, 32), {}),
    ("unet", (3, 32, 32), {"attn_resolutions": [8]}),
    ("dit", (3, 32, 32), {}),
    ("dit", (3, 32, 32), {"patch_size": 4}),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device) -> float:
    # on a CPU the process time (one intra-op thread) is what the network costs, and it is less
    # disturbed by other jobs on a shared machine than the wall clock; on a GPU only the wall clock
    # (after a synchronisation) measures the kernels
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sde = sd.VPSDE()
    print(f"batch {args.batch}, {args.threads} thread(s), {device}, median of {args.repeats}")
    print(f"{'net':5s} {'event':>10s} {'options':28s} {'params':>9s} {'forward ms':>11s} {'fwd+bwd ms':>11s}")
    for name, event, options in CONFIGS:
        torch.manual_seed(0)
        net = build_net(name, sde=sde, **shape_kwargs(name, event), **options).to(device)
        n_params = sum(p.numel() for p in net.parameters())
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, *event, generator=g).to(device)
        eps = torch.randn(args.batch, *event, generator=g).to(device)
        t = torch.rand(args.batch, generator=g).to(device)

        def forward():
            with torch.no_grad():
                net(x, t)

        def train_step():
            net.zero_grad(set_to_none=True)
            ((net(x, t) - eps) ** 2).mean().backward()

        fwd = _median_seconds(forward, args.repeats, device)
        step = _median_seconds(train_step, args.repeats, device)
        shape = "x".join(map(str, event))
        print(f"{name:5s} {shape:>10s} {str(options or 'defaults'):28s} {n_params:>9,d} {1e3 * fwd:>11.1f} {1e3 * step:>11.1f}")


if __name__ == "__main__":
    main()
