"""``scoresde train``: train a score network by denoising score matching (see :mod:`scoresde.training`).

Every :class:`~scoresde.config.TrainConfig` field is a flag; ``--config FILE`` (JSON or YAML) gives a
base that explicit flags override; with ``--resume`` and no ``--config`` the base is the run's saved
config, so ``scoresde train --out RUN --resume --steps N`` extends a run. Launch on several processes with ``torchrun``, e.g.
``torchrun --nproc_per_node 2 -m scoresde train ...`` (gloo on CPU, nccl with ``--device cuda``).

Any registered network trains with ``--net NAME --net-kwargs JSON`` (its constructor's options, e.g.
``--net unet --net-kwargs '{"channels": 32}'``); ``--width``/``--depth``/... are shorthands for options
of those names. Images: ``--data digits``, a ``.pt``/``.npy`` array or a folder of PNG/JPEG files
(``--image-size S`` resizes them). Flow matching: ``--loss flow_matching --sde flow --parameterization
velocity``. EDM preconditioning: ``--precondition edm`` (the default) or ``none`` (the raw output is the target).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os

from ._paths import check_output


def _json_dict(text: str) -> dict:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"beta_max\": 20}}': {err}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return d


def _precondition(text: str) -> str:
    if text not in ("edm", "none"):
        raise argparse.ArgumentTypeError(f"expected 'edm' or 'none', got {text!r}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import TrainConfig

    p = sub.add_parser("train", help="train a score network (denoising score matching)",
                       description="Train a score network; flags override --config; every run folder holds "
                                   "checkpoint.pt, config.json and log.csv.")
    p.add_argument("--out", required=True, help="run folder (created if needed)")
    p.add_argument("--config", help="JSON/YAML file of TrainConfig fields (flags given here override it)")
    p.add_argument("--latent", default=None, metavar="AE_RUN",
                   help="train in the latent space of this autoencoder run (scoresde autoencoder); --data is its")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run in --out (or from the checkpoint file CKPT) exactly where it stopped")
    from ..nets import NETS

    helps = {"data": "toy set name, digits, a .pt/.npy array or a folder of PNG/JPEG images",
             "sde_kwargs": "SDE arguments as JSON", "net": f"registered network: {', '.join(NETS)}",
             "net_kwargs": "the network's constructor options as JSON, e.g. '{\"width\": 64}'",
             "precondition": "edm (default: EDM's input/skip/output scalings) or none (the raw output is the target)",
             "loss": "dsm (denoising score matching) or flow_matching (needs --sde flow --parameterization velocity)",
             "image_size": "resize the images of a folder to this size",
             "device": "cpu, cuda, cuda:N or auto", "conditional": "train with labels (CFG-ready)"}
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw = dict(dest=f.name, default=None, help=helps.get(f.name))
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("sde_kwargs", "net_kwargs"):
            p.add_argument(flag, type=_json_dict, **kw)
        elif f.name == "precondition":
            p.add_argument(flag, type=_precondition, **kw)
        else:
            typ = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, **kw)
    p.set_defaults(run=run)


def _config(args):
    from ..config import TrainConfig
    from ..training import load_checkpoint

    if args.config:
        base = TrainConfig.from_file(args.config)
    elif args.resume:  # continue with the run's own settings; flags given now still override them
        base = TrainConfig.from_dict(load_checkpoint(args.out if args.resume is True else args.resume)["config"])
    else:
        base = TrainConfig()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None}
    if overrides.get("precondition") == "none":
        overrides["precondition"] = None
    return base.replace(**overrides)


def run(args) -> int:
    import torch
    import torch.distributed as dist

    from ..training import Trainer

    cfg = _config(args)
    check_output(args.out, "--out", kind="dir")  # before any work: an unwritable run folder fails now
    data = None
    if args.latent is not None or cfg.data.startswith("latent:"):  # latent diffusion: scoresde.latent
        if args.latent is not None and args.data is not None:
            raise ValueError(f"--data: {args.data!r} given with --latent; a latent run trains on the autoencoder's data")
        from ..latent.codec import latent_training_data

        cfg, data = latent_training_data(cfg, args.latent)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if launched:  # started by torchrun: one process per rank
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        trainer = Trainer(cfg, args.out, resume=args.resume, data=data)
        start = trainer.step
        records = trainer.train()
        if trainer.rank == 0:
            last = f"loss {records[-1].loss:.4g}" if records else "nothing to do"
            print(f"trained steps {start} -> {trainer.step} ({last}); checkpoint in {args.out}")
        if launched:
            # every rank reaches the teardown before any leaves: a rank that exits while its peer is still
            # tearing down closes gloo's sockets under it, and the peer aborts ("terminate called without
            # an active exception", about one resumed run in five on 2 CPU cores). Not in `finally`: a rank
            # that failed must not wait here for peers stuck in a collective; torchrun stops them.
            dist.barrier()
    finally:
        if launched:
            dist.destroy_process_group()
    return 0
