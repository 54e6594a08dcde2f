"""``scoresde sample``: draw samples from a trained run with any registered sampler, save them, plot them.

The samples keep the run's event shape (``(n, 2)`` for toy data, ``(n, C, H, W)`` for images);
``--image-grid out.png`` writes a PNG grid of the first ``--grid-count`` images (``--grid`` names the time grid).
``--method`` takes a sampler's options as the studies do (``'dpm_solver++:order=3'``, ``'ode:solver=rk4'``); an
adaptive solver (``ode``, dopri5 by default) needs no ``--steps`` and reports its NFE. The samples are saved
(``--out``, default ``samples.pt``) when ``--out`` is given or when neither ``--image-grid`` nor ``--plot`` is.
The batch is cut into chunks of ``--batch-size`` with a seed per sample and per chunk
(:mod:`scoresde.sharded`), so ``torchrun --nproc_per_node K -m scoresde sample ...`` shards the chunks over
K processes (gloo on CPU, nccl with ``--device cuda``) and writes the same samples, bit for bit, for every K
(under torchrun spell ``--n`` as ``--num-samples``: torchrun's own parser takes ``--n`` for one of its flags).
Every rank joins within ``--dist-timeout`` seconds or the command stops with a message naming torchrun's
variables (a stale ``WORLD_SIZE``/``MASTER_PORT`` in the shell would otherwise wait forever).

Outputs are written atomically (:mod:`scoresde._files`): the samples, the grid and the plot each go to a
temporary file beside the target and are renamed into place, so a kill or a full disk leaves the previous
file intact; under torchrun rank 0 writes and tells the other ranks whether it could.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from ._paths import check_output, seed_type


def register(sub: argparse._SubParsersAction) -> None:
    from .. import grids
    from ..images.grid import DEFAULT_SCALE
    from ..samplers import available
    from ..samplers.base import MAX_STEPS

    p = sub.add_parser("sample", help="sample a trained score model (scoresde train) with any sampler")
    p.add_argument("--ckpt", default=None, help="run folder or checkpoint file")
    p.add_argument("--diffusers", default=None, metavar="PATH",
                   help="a diffusers pipeline folder (save_pretrained) to sample instead of a run")
    p.add_argument("--method", default="dpm_solver++" if "dpm_solver++" in available() else "ddim",
                   metavar="NAME[:KEY=VALUE,...]",
                   help=f"sampler, with its options after a colon (e.g. 'dpm_solver++:order=3'): one of "
                        f"{', '.join(available())} (default %(default)s); or a sampler tuned by "
                        "'scoresde tune' (its tuned_nfeN.json, which brings its own grid and steps)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"grid steps, 1 to {MAX_STEPS} (default {DEFAULT_STEPS}; an adaptive solver such as "
                        "'ode' chooses its own and needs none)")
    p.add_argument("--grid", default=None, choices=grids.available(),
                   help="time grid (default: the SDE's own, logsnr; quadratic for the flow-matching path)")
    # --num-samples for torchrun, whose own parser reads "--n" as an ambiguous abbreviation of its flags
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=10000,
                   help="number of samples (under torchrun write --num-samples: torchrun reads --n as an "
                        "ambiguous abbreviation of its own flags)")
    p.add_argument("--batch-size", type=int, default=1000,
                   help="samples per model call (a chunk); fixes the samples together with --seed")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--label", type=int, default=None, help="class to sample (conditional runs)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    p.add_argument("--final-denoise", action="store_true", help="finish with Tweedie's denoiser (one more call)")
    p.add_argument("--out", default=None,
                   help=f"where to save the samples (.pt or .npy; default {DEFAULT_OUT} when neither --image-grid "
                        "nor --plot is given, else the samples are not saved unless --out is)")
    p.add_argument("--plot", default=None, help="PNG scatter plot of the samples (2D data)")
    p.add_argument("--image-grid", default=None, metavar="PNG", help="PNG grid of the first --grid-count images")
    p.add_argument("--grid-count", type=int, default=64, help="images in the --image-grid (default 64)")
    p.add_argument("--grid-scale", type=int, default=DEFAULT_SCALE,
                   help=f"pixel repetition in the --image-grid (default {DEFAULT_SCALE}, as Python's save_grid)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: seconds for every rank to join (default $SCORESDE_DIST_TIMEOUT or 60)")
    p.set_defaults(run=run)


#: grid steps of a fixed-step sampler when --steps is not given
DEFAULT_STEPS = 20
#: where the samples go when no output at all is named
DEFAULT_OUT = "samples.pt"


class _Tuned:
    """``--method tuned.json``: sample() reads the artifact (method, options and grid) itself."""

    adaptive = False

    def __init__(self, path: str, label: str):
        self.name, self.opts, self.label = path, {}, label

    def instance(self):
        return self


def _resolve_method(args) -> None:
    """``args.method`` -> a :class:`~scoresde.studies.method_specs.Method`; ``args.steps`` -> an int, or None
    for an adaptive solver given no steps. Errors name the flag and what is allowed."""
    from ..samplers.base import MAX_STEPS
    from ..studies.method_specs import parse_method

    if isinstance(args.method, str) and args.method.endswith(".json"):  # a sampler tuned by `scoresde tune`
        from ..studies.tune import load_tuned

        try:
            tuned = load_tuned(args.method)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"--method: {args.method} is not a tuned sampler ({err})") from None
        if args.steps is not None and args.steps != len(tuned.times) - 1:
            raise ValueError(f"--steps: {args.method} was tuned for {len(tuned.times) - 1} steps, got {args.steps} "
                             "(leave --steps out)")
        args.method, args.steps = _Tuned(args.method, f"tuned {tuned.method} ({args.method})"), None
        return
    if isinstance(args.method, str):
        try:
            args.method = parse_method(args.method)
        except ValueError as err:
            text = str(err)
            raise ValueError("--" + text if text.startswith("method:") else f"--method: {text}") from None
    if args.steps is not None and not 1 <= args.steps <= MAX_STEPS:
        raise ValueError(f"--steps: expected an integer from 1 to {MAX_STEPS}, got {args.steps}")
    if args.steps is None and not args.method.instance().adaptive:
        args.steps = DEFAULT_STEPS


def _check_args(args) -> None:
    if (args.ckpt is None) == (args.diffusers is None):
        raise ValueError("--ckpt/--diffusers: give one of them (a scoresde run, or a diffusers pipeline folder)"
                         + (f", not both (got --ckpt {args.ckpt} and --diffusers {args.diffusers})" if args.ckpt else ""))
    _resolve_method(args)
    if args.out is None and args.image_grid is None and args.plot is None:
        args.out = DEFAULT_OUT
    out = Path(args.out) if args.out is not None else None
    if out is not None and out.suffix not in (".pt", ".npy"):
        raise ValueError(f"--out: expected a .pt or .npy file, got {args.out!r}")
    for flag, name in (("--out", args.out), ("--plot", args.plot), ("--image-grid", args.image_grid)):
        if name is not None and not Path(name).parent.exists():
            raise ValueError(f"{flag}: folder {Path(name).parent} does not exist")
    if args.image_grid is not None and Path(args.image_grid).suffix.lower() != ".png":
        raise ValueError(f"--image-grid: expected a .png file, got {args.image_grid!r}")
    for flag, v in (("--n", args.n), ("--batch-size", args.batch_size), ("--grid-count", args.grid_count),
                    ("--grid-scale", args.grid_scale)):
        if v < 1:
            raise ValueError(f"{flag}: expected a positive integer, got {v}")
    for flag, name in (("--out", args.out), ("--plot", args.plot), ("--image-grid", args.image_grid)):
        if name is not None:
            check_output(name, flag)
    if args.dist_timeout is not None and not 0 < args.dist_timeout < float("inf"):
        raise ValueError(f"--dist-timeout: expected a positive number of seconds, got {args.dist_timeout}")


def _check_grid_size(args, shape) -> None:
    """A --image-grid too large to hold is refused before sampling (it would be allocated after)."""
    from ..images.grid import MAX_GRID_PIXELS, grid_pixels

    rows, cols = grid_pixels(min(args.grid_count, args.n), shape[-2], shape[-1], scale=args.grid_scale)
    if rows * cols > MAX_GRID_PIXELS:
        raise ValueError(f"--grid-scale: a grid of {min(args.grid_count, args.n)} images of {shape[-2]}x{shape[-1]} "
                         f"at scale {args.grid_scale} is {cols}x{rows} pixels; allowed: at most {MAX_GRID_PIXELS} "
                         "(lower --grid-scale or --grid-count)")


def run(args) -> int:
    import torch
    import torch.distributed as dist

    from ..sharded import init_from_env
    from ..training import resolve_device

    _check_args(args)
    world = os.environ.get("WORLD_SIZE", "1")
    try:
        launched = int(world) > 1 and not dist.is_initialized()
    except ValueError:
        raise ValueError(f"WORLD_SIZE: expected an integer (torchrun sets it), got {world!r}") from None
    device = resolve_device(args.device)
    if launched:  # started by torchrun: one process per rank
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        init_from_env("nccl" if device.type == "cuda" else "gloo", args.dist_timeout)
    try:
        _sample(args, _load(args, device), device)
        if launched:
            dist.barrier()  # every rank reaches the teardown before any leaves (see commands/train.py)
    finally:
        if launched:
            dist.destroy_process_group()
    return 0


def _load(args, device):
    """(model, config) of a scoresde run, or of a diffusers pipeline folder (``--diffusers``)."""
    if args.diffusers is None:
        from ..training import load_model

        return load_model(args.ckpt, ema=args.ema, device=device, label=args.label)
    from types import SimpleNamespace

    from ..interop.diffusers import load_diffusers_model

    model = load_diffusers_model(args.diffusers, device=device, label=args.label)
    return model, SimpleNamespace(data=f"diffusers pipeline {args.diffusers}", sde=repr(model.sde))


def _sample(args, loaded, device) -> None:
    import torch
    import torch.distributed as dist

    from ..sharded import sample_sharded

    model, cfg = loaded
    from ..latent.codec import run_codec

    codec = run_codec(cfg.data, device)  # a latent run (scoresde train --latent) is decoded to images
    shape = model.event_shape if codec is None else codec.image_shape
    if args.plot and shape != (2,):
        raise ValueError(f"--plot: scatter plots need 2D data, this run's samples have shape {shape}; "
                         "use --image-grid for images")
    if args.image_grid and not (len(shape) == 3 and shape[0] in (1, 3)):
        raise ValueError(f"--image-grid: needs images of shape (1 or 3, H, W), this run's samples have shape {shape}")
    if args.image_grid:
        _check_grid_size(args, shape)
    with torch.no_grad():
        res = sample_sharded(model, args.method.name, args.steps, n=args.n, event_shape=model.event_shape,
                             seed=args.seed, batch_size=args.batch_size, device=device, grid=args.grid,
                             final_denoise=args.final_denoise, progress=not args.quiet, **args.method.opts)
        if codec is not None and res.samples is not None:
            res = dataclasses.replace(res, samples=codec.decode(res.samples, batch_size=args.batch_size))
    error = None
    if res.samples is not None:  # rank 0 writes
        try:
            _write(args, cfg, res, shape)
        except Exception as err:  # noqa: BLE001  (re-raised below, once the other ranks know)
            error = err
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # the other ranks learn whether rank 0 could write; if not, each stops with one line quoting rank 0's
        told = [None if error is None else f"rank 0 stopped: {_describe(error)}"]
        dist.broadcast_object_list(told, src=0)
        if error is None and told[0] is not None:
            raise OSError(f"nothing written by this rank; {told[0]}")
    if error is not None:
        raise error


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    return str(err)


def _describe_run(args, res) -> str:
    """``ddim(eta=0.5), 20 steps, NFE 20`` or, for an adaptive solver, ``ode, adaptive, NFE 122``."""
    nfe = f"{res.nfe[0]}" if min(res.nfe) == max(res.nfe) else f"{min(res.nfe)}-{max(res.nfe)} per chunk"
    steps = "adaptive" if args.method.instance().adaptive else (
        "its tuned grid" if args.steps is None else f"{args.steps} steps")
    return f"{args.method.label}, {steps}, NFE {nfe}"


def _write(args, cfg, res, shape) -> None:
    from .. import toy
    from .._files import save_npy, save_tensor

    x, what = res.samples, _describe_run(args, res)
    out = Path(args.out) if args.out is not None else None
    if out is None:
        print(f"sampled {args.n} samples of shape {tuple(shape)}: {what} (not saved: give --out to keep them)")
    elif out.suffix == ".npy":
        save_npy(x, out)
    else:
        save_tensor(x, out)
    if out is not None:
        print(f"wrote {out}: {args.n} samples of shape {tuple(shape)}, {what}")
    if args.image_grid:
        from ..images.grid import save_grid

        try:
            save_grid(x[:args.grid_count], args.image_grid, scale=args.grid_scale)
        except ValueError as err:  # NaN samples: the grid is refused, the samples above are written
            kept = f"{out} was" if out is not None else "the samples were not saved"
            raise ValueError(f"--image-grid: {args.image_grid} not written ({kept}): {err}") from None
        print(f"wrote {args.image_grid}")
    if args.plot:
        import torch

        from ..plotting import plot_samples, save_figure

        data = None
        if cfg.data in toy.DATASETS:
            data = toy.sample(cfg.data, args.n, torch.Generator().manual_seed(args.seed + 1))
        fig = plot_samples(x, data, label=what, title=f"{cfg.data} under {cfg.sde}: trained model")
        save_figure(fig, args.plot, dpi=120)
        print(f"wrote {args.plot}")
