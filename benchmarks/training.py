"""Trainer benchmark: speed against a bare DSM loop, and sample quality after a fixed time budget.

1. Throughput: steps/s of :class:`scoresde.training.Trainer` (EMA, clipping, per-step CSV log with
   t-buckets) against a hand-written DSM loop (sample, perturb, eps-MSE, AdamW) with the same
   network, batch and data, alternated in rounds within one run so both see the same machine load.
   Target: ratio >= 0.9.
2. Quality: train eight_gaussians under VP for at most ``--budget`` seconds, then print
   * the eps-space (sigma^2-weighted) MSE of the learned score against the exact mixture score,
     ``E ||sigma_t (s_theta - s*)||^2``, per t and averaged over t ~ U(t_min, T), beside
     ``E ||sigma_t s*||^2`` for scale;
   * W2 between ``--n`` probability-flow samples (``--method``, final Tweedie denoising) and ``--n``
     data samples, beside W2 between two independent data samples (the noise floor) and the same
     sampler run on the exact score. Target: W2(model, data) <= 1.5 x noise floor.

Run: ``python benchmarks/training.py`` (about 7-8 minutes on 2 CPU cores).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from _throughput import alternating_throughput  # noqa: E402  (benchmarks/ is the script folder)

import scoresde as sd
from scoresde.config import TrainConfig
from scoresde.metrics import wasserstein2
from scoresde.nets import ScoreMLP
from scoresde.nets.precondition import EDMPrecondition
from scoresde.training import Trainer


def bare_loop(net, sde, mix, batch, lr, generator):
    """The hand-written DSM step the trainer is measured against."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4, foreach=True)

    def step():
        x0 = mix.sample(batch, generator=generator)
        t = sde.t_min + (sde.T - sde.t_min) * torch.rand(batch, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        alpha, sigma = sde.alpha_sigma(t)
        x_t = alpha[:, None] * x0 + sigma[:, None] * eps
        loss = (net(x_t, t) - eps).pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def throughput(cfg: TrainConfig, rounds: int, steps_per_round: int) -> tuple[float, float]:
    sde, mix = sd.VPSDE(), sd.toy.mixture("eight_gaussians")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg.replace(steps=10**9, ckpt_every=10**9), out)
        net = EDMPrecondition(ScoreMLP(2, sde, "eps", **cfg.net_options()), sde,
                             "eps", trainer.config.sigma_data)
        bare = bare_loop(net, sde, mix, cfg.batch_size, cfg.lr, torch.Generator().manual_seed(1))
        return alternating_throughput(trainer, bare, rounds, steps_per_round, warmup=20)


def score_error(model: sd.ScoreModel, mix, sde, n: int, generator) -> tuple[list, float, float]:
    rows = []
    with torch.no_grad():
        for t in (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 0.6, 1.0):
            x0 = mix.sample(n, generator=generator)
            x = sde.perturb(x0, t, torch.randn(x0.shape, generator=generator))
            tt = torch.full((n,), t)
            sigma = float(sde.sigma(torch.tensor(t)))
            exact = mix.score(x, tt, sde)
            err = (sigma**2 * (model.score(x, tt) - exact).pow(2).sum(1)).mean()
            rows.append((t, float(err), float((sigma**2 * exact.pow(2).sum(1)).mean())))
        x0 = mix.sample(n, generator=generator)
        tt = sde.t_min + (sde.T - sde.t_min) * torch.rand(n, generator=generator)
        x = sde.perturb(x0, tt, torch.randn(x0.shape, generator=generator))
        sigma2 = sde.sigma(tt) ** 2
        exact = mix.score(x, tt, sde)
        avg = float((sigma2 * (model.score(x, tt) - exact).pow(2).sum(1)).mean())
        scale = float((sigma2 * exact.pow(2).sum(1)).mean())
    return rows, avg, scale


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=300.0, help="training wall-clock budget in seconds")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest for this small MLP, and robust on a loaded machine)")
    p.add_argument("--n", type=int, default=5000, help="samples for W2")
    p.add_argument("--method", default="dpm_solver++" if "dpm_solver++" in sd.samplers.available() else "ddim")
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument("--repeats", type=int, default=3, help="independent reference data sets for W2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(data="eight_gaussians", sde="vp", parameterization="eps", weighting="sigma2", width=128,
                      depth=3, batch_size=512, lr=2e-3, warmup=200, ema_decay=0.999, seed=args.seed,
                      progress=False, tensorboard=False)
    print(f"torch {torch.__version__}, {args.threads} thread(s); MLP width {cfg.width} depth {cfg.depth}, "
          f"batch {cfg.batch_size}")

    # 1. throughput
    trainer_sps, bare_sps = throughput(cfg, args.rounds, args.round_steps)
    print(f"[speed] trainer {trainer_sps:.1f} steps/s, bare DSM loop {bare_sps:.1f} steps/s, "
          f"ratio {trainer_sps / bare_sps:.3f} (target >= 0.9)")

    # 2. quality after the budget
    sde, mix = sd.VPSDE(), sd.toy.mixture("eight_gaussians")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg.replace(steps=10**9, ckpt_every=10**9), out)
        start = time.perf_counter()
        chunk = 250
        while True:
            t0 = time.perf_counter()
            trainer.train(trainer.step + chunk)
            spent, last = time.perf_counter() - start, time.perf_counter() - t0
            if spent + last > args.budget:
                break
        train_time = time.perf_counter() - start
        print(f"[train] {trainer.step} steps in {train_time:.0f} s ({trainer.step / train_time:.1f} steps/s); "
              f"last loss {trainer.history[-1].loss:.4f}")
        model = trainer.score_model(ema=True)
        rows, avg, scale = score_error(model, mix, sde, 5000, torch.Generator().manual_seed(args.seed + 10))
        print("[score] t        E||sigma (s_theta - s*)||^2   E||sigma s*||^2")
        for t, err, ref in rows:
            print(f"[score] {t:<8g} {err:<29.5f} {ref:.4f}")
        print(f"[score] t ~ U(t_min, T): weighted MSE {avg:.5f} (relative {avg / scale:.4f} of E||sigma s*||^2 = {scale:.4f})")

        g = torch.Generator().manual_seed(args.seed + 20)
        with torch.no_grad():
            learned = sd.sample(model, sde, args.method, args.steps, shape=(args.n, 2), generator=g,
                                final_denoise=True).samples.double()
            exact = sd.sample(mix.model(sde), sde, args.method, args.steps, shape=(args.n, 2), generator=g,
                              final_denoise=True).samples.double()
        # W2 at n = 5000 in 2D fluctuates by ~20% between data draws (mode counts are multinomial):
        # compare against `--repeats` independent reference sets and report mean and spread
        w = {"model": [], "exact": [], "floor": []}
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            ref = mix.sample(args.n, generator=g, dtype=torch.float64)
            other = mix.sample(args.n, generator=g, dtype=torch.float64)
            w["model"].append(wasserstein2(learned, ref))
            w["exact"].append(wasserstein2(exact, ref))
            w["floor"].append(wasserstein2(other, ref))
        stat = {k: (sum(v) / len(v), (sum((x - sum(v) / len(v)) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5)
                for k, v in w.items()}
        print(f"[w2] {args.method}, {args.steps} steps + final denoise, n = {args.n}, {args.repeats} reference "
              f"draws (exact W2 by ot.emd2, {time.perf_counter() - t0:.0f} s): mean +- sd")
        print(f"[w2] learned model vs data : {stat['model'][0]:.4f} +- {stat['model'][1]:.4f}")
        print(f"[w2] exact score  vs data  : {stat['exact'][0]:.4f} +- {stat['exact'][1]:.4f}")
        print(f"[w2] data vs data (floor)  : {stat['floor'][0]:.4f} +- {stat['floor'][1]:.4f}")
        print(f"[w2] ratio learned / floor : {stat['model'][0] / stat['floor'][0]:.3f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
