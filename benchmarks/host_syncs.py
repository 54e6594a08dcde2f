"""Host-device synchronisations per run and the sampler's own cost per model call, before and after issue 17.

Two figures per sampler, for this checkout ("now") and a baseline commit ("base", default 14d5e2b, main before
the change), measured in the same run: the baseline's ``scoresde`` is unpacked with ``git archive`` into a
temporary folder and each version runs in its own worker process, alternately.

* syncs: with a U-Net (EDM-preconditioned, the package's ``unet``) and the state on PyTorch's ``meta`` device,
  the reads of a device value (``aten._local_scalar_dense``) and cross-device copies (``aten._to_copy``,
  ``aten.copy_``) of a whole ``sample()`` run at two step counts, and the difference per model call;
* overhead: with a small network (``ScoreMLP`` of width 64 and depth 2 on 2-D points, batch 64, float32, CPU),
  the wall time of a run divided by its model calls, minus the time of one bare network call measured in the
  same process: what the sampler, the wrapper and the checks cost per call (the best of ``--repeats`` runs in
  each of ``--rounds`` alternations of the two versions).

    python benchmarks/host_syncs.py [--base 14d5e2b] [--steps 50] [--repeats 15]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = [("ddim", {}), ("ddpm", {}), ("dpm_solver++", {"order": 2}), ("unipc", {"order": 2}),
            ("heun", {}), ("linear_multistep", {}), ("euler_maruyama", {}), ("pc", {}), ("ode", {"solver": "rk4"})]


# ----- the worker: runs inside one version's import path ---------------------------------------------
def _counter():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten

    class Count(TorchDispatchMode):
        """Device reads and cross-device copies; fakes the values on meta so that the run goes on."""

        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            src = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if func is aten._local_scalar_dense.default and src is not None and src.device.type != "cpu":
                self.n += 1
                if src.device.type == "meta":
                    return True if src.dtype == torch.bool else (0.5 if src.is_floating_point() else 0)
            elif func is aten._to_copy.default and src is not None and kwargs.get("device") is not None \
                    and torch.device(kwargs["device"]).type != src.device.type:
                self.n += 1
                if src.device.type == "meta":
                    return torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype, device=kwargs["device"])
            elif func is aten.copy_.default and src is not None and args[1].device != src.device:
                self.n += 1
                if args[1].device.type == "meta":
                    return src
            return func(*args, **kwargs)

    return Count


def worker(steps: int, repeats: int) -> dict:
    import torch

    import scoresde as sd
    from scoresde.nets import ScoreMLP, UNet
    from scoresde.nets.precondition import EDMPrecondition

    torch.set_num_threads(1)
    sde = sd.VPSDE()
    out = {}
    # syncs on meta
    Count = _counter()
    torch.manual_seed(0)
    unet = EDMPrecondition(UNet(1, sde, "eps", image_size=8, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                norm_groups=4), sde, "eps", sigma_data=0.5).to("meta")
    unet_model = sd.ScoreModel(unet, sde, "eps")
    x_meta = torch.zeros(2, 1, 8, 8, device="meta")
    for name, opts in SAMPLERS:
        counts = []
        for n in (4, 8):
            nfe0 = unet_model.nfe
            mode = Count()
            try:
                with torch.no_grad(), mode:
                    sd.sample(unet_model, sde, name, n, x_T=x_meta, generator=torch.Generator().manual_seed(0), **opts)
            except Exception:  # noqa: BLE001  a version that cannot run on meta: its count is unknown
                counts.append((None, unet_model.nfe - nfe0))
                continue
            counts.append((mode.n, unet_model.nfe - nfe0))
        (c4, n4), (c8, n8) = counts
        per_call = None if c4 is None or c8 is None else (c8 - c4) / (n8 - n4)
        out[name] = {"syncs_4": c4, "syncs_8": c8, "syncs_per_call": per_call}
    # overhead per call on the CPU
    torch.manual_seed(0)
    net = ScoreMLP(2, sde, "eps", width=64, depth=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)  # a trained-looking output, not the zero of initialisation
    model = sd.ScoreModel(net, sde, "eps")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    t_net = torch.full((64,), 0.5)
    with torch.no_grad():
        for name, opts in SAMPLERS:
            best, bare = float("inf"), float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                for _ in range(20):
                    net(x, t_net)
                bare = min(bare, (time.perf_counter() - t0) / 20)
                nfe0 = model.nfe
                t0 = time.perf_counter()
                sd.sample(model, sde, name, steps, x_T=x, generator=torch.Generator().manual_seed(0), **opts)
                best = min(best, (time.perf_counter() - t0) / (model.nfe - nfe0))
            out[name].update(call_us=best * 1e6, net_us=bare * 1e6, overhead_us=(best - bare) * 1e6)
    return out


# ----- the driver -----------------------------------------------------------------------------------
def _run(root: Path, steps: int, repeats: int) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(root)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); "
            f"import host_syncs; print(json.dumps(host_syncs.worker({steps}, {repeats})))")
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="14d5e2b", help="the baseline commit (default: main before issue 17)")
    p.add_argument("--now", default=None, help="a commit to compare instead of the working tree")
    p.add_argument("--steps", type=int, default=50, help="grid steps of the timed runs")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per sampler and version (best is kept)")
    p.add_argument("--rounds", type=int, default=3, help="alternations base/now (the best of all is kept)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as base, tempfile.TemporaryDirectory() as now:
        for rev, folder in ((args.base, base), (args.now, now)):
            if rev is not None:
                archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "scoresde"], capture_output=True,
                                         check=True).stdout
                subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        rounds = {"base": [], "now": []}
        for _ in range(args.rounds):
            rounds["base"].append(_run(Path(base), args.steps, args.repeats))
            rounds["now"].append(_run(ROOT if args.now is None else Path(now), args.steps, args.repeats))
    print(f"host syncs per sample() run (U-Net on meta, 4 and 8 steps) and the sampler's own cost per model call "
          f"(ScoreMLP 64x2, batch 64, CPU, {args.steps} steps); base = {args.base}, now = {args.now or 'this checkout'}")
    head = (f"{'sampler':<18}{'syncs base 4/8':>16}{'per call':>9}{'syncs now 4/8':>15}{'per call':>9}"
            f"{'net us':>8}{'base us/call':>13}{'now us/call':>12}{'now/base':>9}")
    print(head)
    print("-" * len(head))
    for name, _ in SAMPLERS:
        b, n = rounds["base"][0][name], rounds["now"][0][name]
        # the best of all rounds: a shared machine only ever adds time
        ob = min(r[name]["overhead_us"] for r in rounds["base"])
        on = min(r[name]["overhead_us"] for r in rounds["now"])
        net = min(r[name]["net_us"] for r in rounds["now"] + rounds["base"])
        fmt = lambda v: "?" if v is None else f"{v:g}"  # noqa: E731
        print(f"{name:<18}{fmt(b['syncs_4']) + '/' + fmt(b['syncs_8']):>16}{fmt(b['syncs_per_call']):>9}"
              f"{fmt(n['syncs_4']) + '/' + fmt(n['syncs_8']):>15}{fmt(n['syncs_per_call']):>9}"
              f"{net:>8.1f}{ob:>13.1f}{on:>12.1f}{on / ob:>9.2f}")


if __name__ == "__main__":
    main()
