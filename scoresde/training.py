r"""The denoising score-matching trainer: AdamW, warm-up, clipping, EMA, exact resume, DDP.

One step draws a batch ``x_0`` (and labels), diffusion times t and noise from the run's
``torch.Generator``, takes the mean of :func:`scoresde.losses.dsm_loss` (or, with
``loss='flow_matching'``, of :func:`scoresde.losses.flow_matching_loss`) over the batch, clips the
gradient norm, steps AdamW with a linear learning-rate warm-up, and updates an exponential moving
average of the weights (``torch.optim.swa_utils.AveragedModel``; Song et al. 2021 sample from the EMA).

Checkpoints (``<out>/checkpoint.pt``) are written atomically (a temporary file, fsync, then
``os.replace``), so the previous good checkpoint survives any crash. They hold the model, the EMA,
the optimiser, the step, every random state (the run's generator of each rank, torch's global and
CUDA states, Python's and NumPy's), the resolved config, the network's record (its registered
name, constructor keyword arguments and the event shape of one sample, :func:`net_spec`) and the
data's grey levels, and are loaded with
``weights_only=True`` and a strict key check. Resuming restores all of it, so ``2 x 50`` steps give
bit-identical losses and weights to ``100`` steps.

Distributed data parallel: if ``torch.distributed`` is initialised (``torchrun``; gloo on CPU, nccl
on GPU) every rank draws its own data and times from its own generator, DDP averages the gradients
(the gradient of the loss averaged over ranks), the logged loss is all-reduced, and only rank 0
writes. Resume restores every rank's generator from the checkpoint.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from . import make_sde, toy
from ._files import clean_stale_temporaries, temporary_name
from ._tensor import check_count
from .config import RESERVED_NET_KWARGS, TrainConfig
from .images.datasets import IMAGE_DATASETS, check_labels, load_images
from .losses import dsm_loss, flow_matching_loss
from .models import ScoreModel
from .nets import NETS, build_net
from .nets.precondition import precondition

__all__ = ["Trainer", "TensorData", "ToyData", "make_data", "load_checkpoint", "load_model", "net_spec",
           "build_from_spec", "CHECKPOINT_NAME",
           "CONFIG_NAME", "LOG_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
_FORMAT = "scoresde-train-2"
_OLD_FORMATS = ("scoresde-train-1",)
_CKPT_KEYS = frozenset({"format", "step", "config", "net", "data", "model", "ema", "optimizer", "rng", "world_size"})


# ---------------------------------------------------------------------------------------------
# Data sources: draw(n, generator) -> (x, y or None). Drawing with replacement keeps no epoch state,
# so the generator alone determines the stream and resume needs nothing else.
# ---------------------------------------------------------------------------------------------
class ToyData:
    """Fresh samples of a 2D toy set each step (labels: the mixture component, for the mixtures)."""

    def __init__(self, name: str, labels: bool = False):
        if name not in toy.DATASETS:
            raise ValueError(f"data: unknown toy set {name!r}; known: {', '.join(toy.available())}, or a .pt/.npy file")
        if labels and name not in toy.MIXTURES:
            raise ValueError(f"conditional: the toy set {name!r} has no labels; use a mixture "
                             f"({', '.join(sorted(toy.MIXTURES))}) or a file with labels")
        self.name, self.labels = name, labels
        self.mixture = toy.mixture(name) if name in toy.MIXTURES else None
        self.event_shape = (2,)
        self.levels = None
        self.num_classes = self.mixture.n_components if labels else None

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor | None]:
        if self.mixture is not None:
            x, k = self.mixture.sample(n, generator=generator, device=generator.device, return_labels=True)
            return x.to(device), (k.to(device) if self.labels else None)
        return toy.sample(self.name, n, generator).to(device), None

    def std(self) -> float:
        """Data standard deviation (pooled over dimensions) from a fixed-seed sample."""
        x = toy.sample(self.name, 20000, torch.Generator().manual_seed(12345))
        return float(x.double().std())


class TensorData:
    """A fixed tensor ``x`` of shape ``(N, *event)`` (with optional integer labels ``y``), drawn with replacement.

    ``levels``: the number of integer grey levels the data was quantised to (None: continuous data).
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, labels: bool = False, levels: int | None = None,
                 name: str = "data"):
        x = torch.as_tensor(x)
        if x.ndim < 2 or x.shape[0] < 1 or not x.is_floating_point():
            raise ValueError(f"data: expected a floating tensor of shape (N, *event_shape), got "
                             f"{tuple(x.shape)} of {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("data: contains non-finite values")
        if labels and y is None:
            raise ValueError(f"conditional: {name} has no labels; give a .pt file with {{'x': ..., 'y': ...}} or "
                             "(x, y), a folder of class sub-folders, or a labelled set (digits)")
        y = check_labels(y, x.shape[0], name)
        self.x = x.float()
        self.y = y if labels else None
        self.labels, self.levels, self.name = labels, levels, name
        self.event_shape = tuple(x.shape[1:])
        self.num_classes = int(self.y.max()) + 1 if self.y is not None else None
        self._on: dict = {}

    def _tensors(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.x.to(device), None if self.y is None else self.y.to(device))
        return self._on[key]

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor | None]:
        x, y = self._tensors(generator.device)
        idx = torch.randint(0, x.shape[0], (n,), generator=generator, device=generator.device)
        return x[idx].to(device), (None if y is None else y[idx].to(device))

    def std(self) -> float:
        return float(self.x.double().std())


def make_data(name: str, labels: bool = False, image_size: int | None = None):
    """A data source from a toy set name, an image set name (``digits``), a ``.pt``/``.npy`` file or an
    image folder (see :mod:`scoresde.images.datasets`)."""
    if name in toy.DATASETS:
        if image_size is not None:
            raise ValueError(f"image_size: {image_size} given for the toy set {name!r}; it applies to image folders")
        return ToyData(name, labels)
    path = Path(name)
    if name not in IMAGE_DATASETS and not path.is_dir() and path.suffix not in (".pt", ".pth", ".npy"):
        raise ValueError(f"data: {name!r} is neither a toy set ({', '.join(toy.available())}), an image set "
                         f"({', '.join(IMAGE_DATASETS)}), a folder of images nor a .pt/.npy file")
    images = load_images(name, image_size)
    return TensorData(images.x, images.y, labels, images.levels, images.name)


# ---------------------------------------------------------------------------------------------
# Random states: everything as tensors, ints and tuples so that weights_only loading accepts it.
# ---------------------------------------------------------------------------------------------
def _global_rng_state() -> dict:
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"name": st[0], "keys": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                  "has_gauss": int(st[3]), "cached_gaussian": float(st[4])},
    }


def _set_global_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def _rank_seed(seed: int, rank: int) -> int:
    # independent streams per rank, all fixed by the one seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r}; use 'cpu', 'cuda', 'cuda:<index>' or 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but CUDA is not available; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def _atomic_save(obj, path: Path) -> None:
    """Write ``obj`` to ``path`` so that ``path`` is always either the old file or the complete new one.

    The temporary ``.NAME.tmp-PID`` is renamed over ``path`` only once complete and fsynced; the
    temporaries of earlier processes killed mid-write are removed first (so a run that starts or
    resumes, which writes config.json at once, clears them).
    """
    clean_stale_temporaries(path.parent)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            if isinstance(obj, (bytes, str)):
                fh.write(obj.encode() if isinstance(obj, str) else obj)
            else:
                torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a trainer checkpoint (a file, or a run folder holding ``checkpoint.pt``) safely and strictly.

    Raises ValueError if the file is missing, unreadable, not a scoresde checkpoint, or has missing
    or unexpected keys.
    """
    file = _checkpoint_path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint: {str(file)!r} does not exist")
    try:
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, wrong format, unsafe pickle: all mean "not loadable"
        raise ValueError(f"checkpoint: {str(file)!r} is corrupt or not a torch checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(ckpt, dict) and ckpt.get("format") in _OLD_FORMATS:
        raise ValueError(f"checkpoint: {str(file)!r} has the old format {ckpt['format']!r}, which did not record the "
                         f"network's name, options and event shape; this scoresde reads {_FORMAT!r} only: retrain "
                         "the run (scoresde train)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"checkpoint: {str(file)!r} is not a scoresde training checkpoint (format {_FORMAT})")
    missing, unexpected = sorted(_CKPT_KEYS - set(ckpt)), sorted(set(ckpt) - _CKPT_KEYS)
    if missing or unexpected:
        raise ValueError(f"checkpoint: {str(file)!r} has missing keys {missing} and unexpected keys {unexpected}")
    return ckpt


def _takes(name: str) -> tuple[dict, bool]:
    params = inspect.signature(NETS[name]).parameters
    return params, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def net_spec(cfg: TrainConfig, event_shape: tuple[int, ...]) -> dict:
    """The record a checkpoint keeps of its network: ``{'name', 'kwargs', 'event_shape'}``.

    ``kwargs`` are the constructor's keyword arguments except ``sde`` (rebuilt from the config):
    ``parameterization`` and ``num_classes`` when the constructor takes them, the data's shape as
    the constructor names it (``event_shape``; or ``dim = prod(event_shape)``; or ``in_channels`` and
    ``image_size`` for square images ``(C, H, H)``), and the run's options
    (:meth:`TrainConfig.net_options`). Options the constructor does not take are refused by name.
    """
    name, event_shape = cfg.net, tuple(int(n) for n in event_shape)
    if name not in NETS:
        raise ValueError(f"net: unknown {name!r}; allowed: {', '.join(NETS)}")
    params, takes_any = _takes(name)
    kwargs: dict = {}
    if "event_shape" in params:
        kwargs["event_shape"] = list(event_shape)
    elif "dim" in params:
        kwargs["dim"] = math.prod(event_shape)
    elif "in_channels" in params and "image_size" in params:
        if len(event_shape) != 3 or event_shape[1] != event_shape[2]:
            raise ValueError(f"data: the net {name!r} takes square images (C, H, H); the data's event shape is "
                             f"{event_shape}")
        kwargs["in_channels"], kwargs["image_size"] = event_shape[0], event_shape[1]
    else:
        raise ValueError(f"net: {name!r} takes none of the shape arguments event_shape, dim, or in_channels and "
                         "image_size; its constructor cannot be given the data's shape")
    if "parameterization" in params or takes_any:
        kwargs["parameterization"] = cfg.parameterization
    if cfg.num_classes is not None:
        if "num_classes" not in params and not takes_any:
            raise ValueError(f"conditional: the net {name!r} takes no num_classes; it cannot be trained with labels")
        kwargs["num_classes"] = cfg.num_classes
    options = cfg.net_options()
    unknown = [] if takes_any else sorted(k for k in options if k not in params)
    if unknown:
        known = sorted(k for k in params if k not in RESERVED_NET_KWARGS)
        raise ValueError(f"net_kwargs: the net {name!r} takes no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(known)}")
    kwargs.update(options)
    return {"name": name, "kwargs": kwargs, "event_shape": list(event_shape)}


def build_from_spec(spec: dict, cfg: TrainConfig, sde) -> nn.Module:
    """The network of a :func:`net_spec` record under ``sde``, wrapped in ``cfg.precondition`` when set."""
    if spec["name"] not in NETS:
        raise ValueError(f"net: {spec['name']!r} is not registered here; registered: {', '.join(NETS)}")
    params, takes_any = _takes(spec["name"])
    extra = {"sde": sde} if "sde" in params or takes_any else {}
    net = build_net(spec["name"], **extra, **spec["kwargs"])
    return precondition(net, cfg.precondition, sde=sde, parameterization=cfg.parameterization,
                        sigma_data=cfg.sigma_data if cfg.sigma_data is not None else 1.0)


def load_model(path: str | Path, *, ema: bool = True, device=None, label: int | None = None) -> tuple[ScoreModel, TrainConfig]:
    """The trained score model of a run (EMA weights by default) as a :class:`ScoreModel`, and its config.

    The network is rebuilt from the checkpoint's record (registered name, keyword arguments, event
    shape; see :func:`net_spec`), whatever the architecture. The returned model carries ``.net``
    (the module), ``.event_shape`` (one sample's shape) and ``.levels`` (the data's grey levels, or
    None). ``label`` conditions a class-conditional network on one class (None: the null label).
    """
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.from_dict(ckpt["config"])
    sde = make_sde(cfg.sde, **cfg.sde_kwargs)
    state = ckpt["ema"] if ema else ckpt["model"]
    if ema:  # AveragedModel keeps the network under "module." and a step counter
        state = {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}
    spec = ckpt["net"]
    net = build_from_spec(spec, cfg, sde)
    net.load_state_dict(state, strict=True)
    device = torch.device("cpu") if device is None else _resolve_device(str(device))
    net = net.to(device).eval()
    if label is not None:
        if cfg.num_classes is None:
            raise ValueError(f"label: the run in {path} is unconditional; leave label=None")
        if not 0 <= int(label) < cfg.num_classes:
            raise ValueError(f"label: expected an integer in [0, {cfg.num_classes}), got {label}")

    def fn(x, t):
        y = None if label is None else torch.full((x.shape[0],), int(label), dtype=torch.long, device=x.device)
        return net(x, t, y) if cfg.num_classes is not None else net(x, t)

    model = ScoreModel(fn, sde, cfg.parameterization)
    model.net = net
    model.event_shape = tuple(spec["event_shape"])
    model.levels = ckpt["data"]["levels"]
    return model, cfg


# ---------------------------------------------------------------------------------------------
@dataclass
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    bucket_losses: list


class Trainer:
    """Train a score network with denoising score matching; see the module docstring.

    Args:
        config: the run's :class:`TrainConfig` (``sigma_data``/``num_classes`` are resolved from the data).
        out: the run folder (checkpoint, config.json, log.csv, tb/); None trains without writing.
        resume: False (a fresh run; refuses to overwrite an existing checkpoint in ``out``), True
            (continue from ``out/checkpoint.pt``) or a checkpoint path.
        data: a data source overriding ``config.data`` (an object with ``draw``/``std``/``event_shape``,
            e.g. :class:`TensorData`); ``config.data`` then only names it.
    """

    def __init__(self, config: TrainConfig, out: str | Path | None = None, *, resume: bool | str | Path = False,
                 data=None):
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.out = None if out is None else Path(out)
        self.data = make_data(config.data, config.conditional, config.image_size) if data is None else data

        resolved = {}
        if config.sigma_data is None:
            resolved["sigma_data"] = self.data.std()
        if config.conditional and config.num_classes is None:
            resolved["num_classes"] = self.data.num_classes
        if not config.conditional and config.num_classes is not None:
            raise ValueError(f"num_classes: {config.num_classes} given for an unconditional run; set conditional=True")
        found = getattr(self.data, "num_classes", None)
        if config.conditional and config.num_classes is not None and found is not None and found > config.num_classes:
            raise ValueError(f"labels: the data has a label {found - 1}; num_classes={config.num_classes} allows "
                             f"labels in [0, {config.num_classes - 1}]")
        self.config = cfg = config.replace(**resolved)

        if self.distributed and _resolve_device(cfg.device).type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
            torch.cuda.set_device(self.device)
        else:
            self.device = _resolve_device(cfg.device)

        self.sde = make_sde(cfg.sde, **cfg.sde_kwargs)
        self.net_spec = net_spec(cfg, self.data.event_shape)
        # model init from the seed alone, without touching the caller's global RNG
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            net = build_from_spec(self.net_spec, cfg, self.sde)
        self.net = net.to(self.device)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        # foreach: one fused kernel launch per op over all parameters (CPU defaults to a Python loop)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
        self._params = [p for p in self.net.parameters() if p.requires_grad]
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        else:
            self.ddp = self.net
        self.generator = torch.Generator(self.device).manual_seed(_rank_seed(cfg.seed, self.rank))
        self.step = 0
        self.history: list[StepRecord] = []
        self._buckets = torch.linspace(self.sde.t_min, self.sde.T, cfg.t_buckets + 1, dtype=torch.float64)
        self._edges: Tensor | None = None

        if resume:
            src = self.out if resume is True else Path(resume)
            if src is None:
                raise ValueError("resume: resume=True needs the run folder `out`; or pass a checkpoint path")
            self._restore(load_checkpoint(src), src)
        elif self.out is not None and (self.out / CHECKPOINT_NAME).exists():
            raise ValueError(f"out: {str(self.out)!r} already holds a checkpoint; resume it (--resume) or "
                             "choose another folder (the existing checkpoint is left untouched)")

    # ----- state ---------------------------------------------------------------------------------
    def _gather_generator_states(self) -> list[Tensor]:
        state = self.generator.get_state()
        if not self.distributed:
            return [state]
        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def state_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "net": self.net_spec,
            "data": {"levels": getattr(self.data, "levels", None)},
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generators": self._gather_generator_states(), "global": _global_rng_state()},
            "world_size": self.world_size,
        }

    def _restore(self, ckpt: dict, src) -> None:
        saved = TrainConfig.from_dict(ckpt["config"])
        diff = saved.mismatches(self.config)
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"config: the run to resume ({src}) was trained with a different config ({lines})")
        if ckpt["world_size"] != self.world_size:
            raise ValueError(f"resume: the checkpoint was written by {ckpt['world_size']} process(es), this run has "
                             f"{self.world_size}; an exact resume needs the same number")
        self.net.load_state_dict(ckpt["model"], strict=True)
        self.ema.load_state_dict(ckpt["ema"], strict=True)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.generator.set_state(ckpt["rng"]["generators"][self.rank].cpu())
        _set_global_rng_state(ckpt["rng"]["global"])
        self.step = int(ckpt["step"])

    def save_checkpoint(self) -> Path | None:
        """Write ``out/checkpoint.pt`` atomically (rank 0); every rank must call it (it gathers RNG states)."""
        state = self.state_dict()
        if self.rank != 0 or self.out is None:
            return None
        path = self.out / CHECKPOINT_NAME
        _atomic_save(state, path)
        return path

    # ----- the step --------------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        warm = self.config.warmup
        return self.config.lr * min(1.0, (step + 1) / warm) if warm > 0 else self.config.lr

    def _batch(self):
        cfg, B = self.config, self.config.batch_size
        x0, y = self.data.draw(B, self.generator, self.device)
        if y is not None and cfg.label_dropout > 0:
            drop = torch.rand(B, generator=self.generator, device=self.device) < cfg.label_dropout
            y = torch.where(drop, torch.full_like(y, cfg.num_classes), y)
        return x0, y

    def train_step(self) -> StepRecord:
        cfg = self.config
        x0, y = self._batch()
        net = self.ddp
        model = ScoreModel((lambda x, t: net(x, t, y)) if y is not None else net, self.sde, cfg.parameterization)
        if cfg.loss == "flow_matching":
            losses, t = flow_matching_loss(model, x0, time_sampling=cfg.time_sampling, generator=self.generator,
                                           return_times=True)
        else:
            losses, t = dsm_loss(model, x0, weighting=cfg.weighting, time_sampling=cfg.time_sampling,
                                 importance=cfg.importance, min_snr_gamma=cfg.min_snr_gamma,
                                 generator=self.generator, return_times=True)
        loss = losses.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm, foreach=True)
        lr = self._lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.ema.update_parameters(self.net)
        self.step += 1

        # per-t-bucket sums and counts, then one transfer (and one all-reduce) for all statistics
        with torch.no_grad():
            K = cfg.t_buckets
            idx = torch.bucketize(t.detach().double(), self._inner_edges(t.device))
            sums = torch.zeros(K, dtype=torch.float64, device=t.device).index_add_(0, idx, losses.detach().double())
            # index_add_, not bincount: bincount reads the largest index on the host (a sync on a GPU)
            counts = torch.zeros(K, dtype=torch.float64, device=t.device).index_add_(
                0, idx, torch.ones(idx.shape, dtype=torch.float64, device=t.device))
            stats = torch.cat([loss.detach().double().reshape(1), sums, counts])
            if self.distributed:
                dist.all_reduce(stats)
                stats[0] /= self.world_size
            stats = stats.tolist()
        buckets = [s / c if c > 0 else float("nan") for s, c in zip(stats[1:K + 1], stats[K + 1:], strict=True)]
        return StepRecord(self.step, stats[0], lr, float(grad_norm), buckets)

    def _inner_edges(self, device) -> Tensor:
        if self._edges is None or self._edges.device != device:
            self._edges = self._buckets[1:-1].to(device)
        return self._edges

    # ----- the loop --------------------------------------------------------------------------------
    def _bucket_names(self) -> list[str]:
        e = self._buckets.tolist()
        return [f"loss_t{e[i]:.3g}-{e[i + 1]:.3g}" for i in range(len(e) - 1)]

    def _open_log(self):
        """Open log.csv for appending; on resume drop rows past the checkpoint's step (written after it)."""
        path = self.out / LOG_NAME
        header = ["step", "loss", "lr", "grad_norm", "wall_time"] + self._bucket_names()
        rows = []
        if path.exists() and self.step > 0:
            with open(path, newline="") as fh:
                reader = csv.reader(fh)
                old_header = next(reader, None)
                if old_header == header:
                    rows = [r for r in reader if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= self.step]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        _atomic_save(buf.getvalue(), path)
        fh = open(path, "a", newline="")
        return fh, csv.writer(fh)

    def _tensorboard(self):
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: the CSV log is the record
            return None
        return SummaryWriter(str(self.out / "tb"))

    def train(self, steps: int | None = None) -> list[StepRecord]:
        """Train until ``steps`` total steps (default ``config.steps``); return this call's step records."""
        cfg = self.config
        target = cfg.steps if steps is None else check_count("steps", steps, minimum=0)
        if target < self.step:
            raise ValueError(f"steps: the run is already at step {self.step}, asked to train to {target}")
        writing = self.rank == 0 and self.out is not None
        log_fh = log = tb = None
        if writing:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_save(json.dumps(cfg.to_dict(), indent=2) + "\n", self.out / CONFIG_NAME)
            log_fh, log = self._open_log()
            tb = self._tensorboard()
        bar = tqdm(total=target, initial=self.step, desc="train", disable=not (cfg.progress and self.rank == 0),
                   dynamic_ncols=True)
        records = []
        start = time.perf_counter()
        self.net.train()
        try:
            while self.step < target:
                rec = self.train_step()
                records.append(rec)
                if log is not None and (rec.step % cfg.log_every == 0 or rec.step == target):
                    log.writerow([rec.step, f"{rec.loss:.8g}", f"{rec.lr:.6g}", f"{rec.grad_norm:.6g}",
                                  f"{time.perf_counter() - start:.3f}"] + [f"{b:.6g}" for b in rec.bucket_losses])
                    if tb is not None:
                        tb.add_scalar("loss", rec.loss, rec.step)
                        tb.add_scalar("lr", rec.lr, rec.step)
                        tb.add_scalar("grad_norm", rec.grad_norm, rec.step)
                        for name, b in zip(self._bucket_names(), rec.bucket_losses, strict=True):
                            if b == b:
                                tb.add_scalar(f"loss_by_t/{name}", b, rec.step)
                bar.update(1)
                if rec.step % 50 == 0:
                    bar.set_postfix(loss=f"{rec.loss:.4g}", refresh=False)
                if not math.isfinite(rec.loss):
                    raise FloatingPointError(f"train: non-finite loss {rec.loss} at step {rec.step}; lower lr or "
                                             "enable grad_clip (the last good checkpoint is kept)")
                if rec.step % cfg.ckpt_every == 0 or rec.step == target:
                    if log_fh is not None:
                        log_fh.flush()
                    self.save_checkpoint()
        finally:
            bar.close()
            if log_fh is not None:
                log_fh.close()
            if tb is not None:
                tb.close()
        self.history.extend(records)
        return records

    # ----- results ---------------------------------------------------------------------------------
    def score_model(self, *, ema: bool = True) -> ScoreModel:
        """The current (EMA by default) network as an unconditional :class:`ScoreModel`."""
        net = self.ema.module if ema else self.net
        return ScoreModel(net, self.sde, self.config.parameterization)
