"""``scoresde train``: train a score network by denoising score matching (see :mod:`scoresde.training`).

Every :class:`~scoresde.config.TrainConfig` field is a flag; ``--config FILE`` (JSON or YAML) gives a
base that explicit flags override; with ``--resume`` and no ``--config`` the base is the run's saved
config, so ``scoresde train --out RUN --resume --steps N`` extends a run. Launch on several processes with ``torchrun``, e.g.
``torchrun --nproc_per_node 2 -m scoresde train ...`` (gloo on CPU, nccl with ``--device cuda``); every rank
joins within ``--dist-timeout`` seconds or the command stops with a message naming torchrun's variables.

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


#: what each TrainConfig field means on the command line (the default and the choices are added)
HELP = {
    "data": "toy set name ({toys}), digits, digits_test, a .pt/.npy array or a folder of PNG/JPEG images",
    "conditional": "train with labels (mixture components for toy mixtures), ready for classifier-free guidance",
    "label_dropout": "probability of replacing a label by the null label (classifier-free guidance training)",
    "image_size": "resize the images of a folder to this size (pixels)",
    "sde": "the SDE",
    "sde_kwargs": "SDE arguments as JSON, e.g. '{{\"beta_max\": 20}}'",
    "parameterization": "what the network predicts",
    "loss": "dsm (denoising score matching) or flow_matching (needs --sde flow --parameterization velocity)",
    "weighting": "DSM loss weighting over t (sigma2: the eps-MSE; likelihood: g^2)",
    "time_sampling": "how the training times t are drawn per batch",
    "importance": "draw t uniform in log-SNR with importance weights (likelihood weighting)",
    "min_snr_gamma": "gamma of the min_snr weighting",
    "net": "registered network",
    "net_kwargs": "the network's constructor options as JSON, e.g. '{{\"channels\": 32}}'",
    "width": "hidden width (network option of that name; default: the network's)",
    "depth": "number of hidden blocks (network option of that name; default: the network's)",
    "embedding": "time embedding (network option; default: the network's)",
    "emb_dim": "time-embedding size (network option; default: the network's)",
    "time_input": "what the network is given for t (network option; default: the network's)",
    "precondition": "edm (EDM's input/skip/output scalings) or none (the raw output is the target)",
    "sigma_data": "data standard deviation for EDM preconditioning (default: measured from the data)",
    "num_classes": "number of classes of a conditional run (default: from the data's labels)",
    "steps": "total optimiser steps (with --resume: the step to train to)",
    "batch_size": "samples per optimiser step",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "warmup": "linear learning-rate warm-up steps (default: 200, or a tenth of --steps when that is smaller, so a "
              "short run reaches its learning rate)",
    "grad_clip": "clip the gradient norm to this value (0: no clipping)",
    "ema_decay": "decay of the exponential moving average of the weights",
    "seed": "random seed (data, noise, initialisation)",
    "log_every": "write log.csv every this many steps",
    "ckpt_every": "write checkpoint.pt every this many steps (and at the end)",
    "t_buckets": "number of t-buckets of the per-t loss in log.csv",
    "device": "cpu, cuda, cuda:N or auto",
    "progress": "progress bar",
    "tensorboard": "TensorBoard logs in RUN/tb (when tensorboard is installed)",
}

def _choices() -> dict[str, tuple[str, ...]]:
    from .. import SDES
    from ..config import _CHOICES
    from ..nets import NETS

    return {**_CHOICES, "sde": tuple(SDES), "net": tuple(NETS), "precondition": ("edm", "none")}


#: registries a user may extend at run time: listed in the help, checked by TrainConfig, not by argparse
_OPEN_CHOICES = ("sde", "net")


def register(sub: argparse._SubParsersAction) -> None:
    from .. import toy
    from ..config import TrainConfig

    p = sub.add_parser("train", help="train a score network (denoising score matching or flow matching)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="RUN", help="run folder (created if needed)")
    p.add_argument("--config", metavar="FILE", help="JSON/YAML file of TrainConfig fields (flags given here override it)")
    p.add_argument("--latent", default=None, metavar="AE_RUN",
                   help="train in the latent space of this autoencoder run (scoresde autoencoder); --data is its")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue the run in --out (or from the checkpoint file CKPT) exactly where it stopped")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: seconds for every rank to join (default $SCORESDE_DIST_TIMEOUT or 60)")
    choices = _choices()
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        text = HELP.get(f.name, f.name.replace("_", " ")).format(toys=", ".join(toy.available()))
        if f.name != "warmup" and default not in (None, {}, "") and f.type not in ("bool", bool):
            text += f" (default {'none' if f.name == 'precondition' and default is None else default})"
        elif f.type in ("bool", bool):
            text += f" (default {'on' if default else 'off'})"
        # default=None: a flag not given leaves the --config / resumed value alone
        kw = dict(dest=f.name, default=None, help=text.replace("%", "%%"))
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif f.name in ("sde_kwargs", "net_kwargs"):
            p.add_argument(flag, type=_json_dict, metavar="JSON", **kw)
        elif f.name in _OPEN_CHOICES:
            kw["help"] = kw["help"].replace(" (default", f": {', '.join(choices[f.name])} (default", 1)
            p.add_argument(flag, metavar="NAME", **kw)
        elif f.name in choices:
            p.add_argument(flag, choices=choices[f.name], metavar="{" + ",".join(choices[f.name]) + "}", **kw)
        else:
            typ = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, type=typ, metavar={int: "N", float: "X"}.get(typ, "TEXT"), **kw)
    p.set_defaults(run=run)


#: the networks' names in messages
_NET_NAMES = {"mlp": "MLP", "unet": "U-Net", "dit": "DiT"}


def _config(args):
    from ..config import TrainConfig
    from ..training import load_checkpoint

    if args.config:
        base = TrainConfig.from_file(args.config)
    elif args.resume:  # continue with the run's own settings; flags given now still override them
        src = args.out if args.resume is True else args.resume
        base = TrainConfig.from_dict(load_checkpoint(src)["config"])
        if args.net is not None and args.net != base.net:
            # its options would be refused one by one as the new net's: say what the checkpoint is instead
            kind = _NET_NAMES.get(base.net, base.net)
            raise ValueError(f"--net: the checkpoint {src} is a {kind}'s run (net {base.net!r}); it cannot be resumed "
                             f"as {args.net!r}; resume with --net {base.net} (or leave --net out), or start a new run")
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

    from ..sharded import init_from_env

    if args.dist_timeout is not None and not 0 < args.dist_timeout < float("inf"):
        raise ValueError(f"--dist-timeout: expected a positive number of seconds, got {args.dist_timeout}")
    cfg = _config(args)
    check_output(args.out, "--out", kind="dir")  # before any work: an unwritable run folder fails now
    data = None
    if args.latent is not None or cfg.data.startswith("latent:"):  # latent diffusion: scoresde.latent
        if args.latent is not None and args.data is not None:
            raise ValueError(f"--data: {args.data!r} given with --latent; a latent run trains on the autoencoder's data")
        from ..latent.codec import latent_training_data

        cfg, data = latent_training_data(cfg, args.latent)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if launched:  # started by torchrun: one process per rank; a stale environment times out, naming it
        cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        init_from_env("nccl" if cuda else "gloo", args.dist_timeout)
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
