r"""The denoising score-matching trainer: AdamW, warm-up, clipping, EMA, exact resume, DDP.

One step draws a batch ``x_0`` (and labels), diffusion times t and noise from the run's
``torch.Generator``, takes the mean of :func:`scoresde.losses.dsm_loss` (or, with
``loss='flow_matching'``, of :func:`scoresde.losses.flow_matching_loss`) over the batch, clips the
gradient norm, steps AdamW with a linear learning-rate warm-up, and updates an exponential moving
average of the weights (``torch.optim.swa_utils.AveragedModel``; Song et al. 2021 sample from the EMA).

Checkpoints (:mod:`scoresde.training.checkpoints`) hold every state the run has, so resuming gives
bit-identical losses and weights: ``2 x 50`` steps equal ``100`` steps.

Distributed data parallel: if ``torch.distributed`` is initialised (``torchrun``; gloo on CPU, nccl
on GPU) every rank draws its own data and times from its own generator, DDP averages the gradients
(the gradient of the loss averaged over ranks), the logged loss is all-reduced, and only rank 0
writes. Resume restores every rank's generator from the checkpoint.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .. import make_sde
from .._progress import progress
from .._tensor import check_count
from ..config import TrainConfig
from ..losses import dsm_loss, flow_matching_loss
from ..models import ScoreModel
from .checkpoints import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    FORMAT,
    LOG_NAME,
    atomic_save,
    checkpoint_path,
    global_rng_state,
    load_checkpoint,
    load_optimizer,
    load_weights,
    rank_seed,
    set_global_rng_state,
)
from .data import make_data
from .device import resolve_device
from .spec import build_from_spec, net_spec

__all__ = ["Trainer", "StepRecord"]


def _check_out(out) -> Path:
    """The run folder: a path that is a folder or does not exist yet (a file there is refused by name)."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out: expected a folder path (str or pathlib.Path) or None, got {type(out).__name__}")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"out: {str(path)!r} is a file; expected a run folder (it will hold {CHECKPOINT_NAME}, "
                         f"{CONFIG_NAME} and {LOG_NAME}): give a folder, or a path that does not exist yet")
    return path


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
        self.out = None if out is None else _check_out(out)
        self.data = make_data(config.data, config.conditional, config.image_size) if data is None else data

        resolved = {}
        # warm-up None: the default for this run's length; on resume the checkpoint's value (see _restore)
        self._default_warmup = config.warmup is None
        if config.warmup is None:
            resolved["warmup"] = config.resolved_warmup()
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

        if self.distributed and resolve_device(cfg.device).type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank % torch.cuda.device_count())))
            torch.cuda.set_device(self.device)
        else:
            self.device = resolve_device(cfg.device)

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
        self.generator = torch.Generator(self.device).manual_seed(rank_seed(cfg.seed, self.rank))
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
            "format": FORMAT,
            "step": self.step,
            "config": self.config.to_dict(),
            "net": self.net_spec,
            "data": {"levels": getattr(self.data, "levels", None)},
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generators": self._gather_generator_states(), "global": global_rng_state()},
            "world_size": self.world_size,
        }

    def _restore(self, ckpt: dict, src) -> None:
        saved = TrainConfig.from_dict(ckpt["config"])
        if self._default_warmup and saved.warmup is not None:
            # resolved from the run's first `steps`, not from the `steps` it is now extended to
            self.config = self.config.replace(warmup=saved.warmup)
        diff = saved.mismatches(self.config)
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"config: the run to resume ({src}) was trained with a different config ({lines})")
        if ckpt["world_size"] != self.world_size:
            raise ValueError(f"resume: the checkpoint was written by {ckpt['world_size']} process(es), this run has "
                             f"{self.world_size}; an exact resume needs the same number")
        file = checkpoint_path(src)
        load_weights(self.net, ckpt["model"], file, "model")
        load_weights(self.ema, ckpt["ema"], file, "EMA")
        load_optimizer(self.optimizer, ckpt["optimizer"], file)
        self.generator.set_state(ckpt["rng"]["generators"][self.rank].cpu())
        set_global_rng_state(ckpt["rng"]["global"])
        self.step = int(ckpt["step"])

    def save_checkpoint(self) -> Path | None:
        """Write ``out/checkpoint.pt`` atomically (rank 0); every rank must call it (it gathers RNG states)."""
        state = self.state_dict()
        if self.rank != 0 or self.out is None:
            return None
        path = self.out / CHECKPOINT_NAME
        atomic_save(state, path)
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
        atomic_save(buf.getvalue(), path)
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
            atomic_save(json.dumps(cfg.to_dict(), indent=2) + "\n", self.out / CONFIG_NAME)
            log_fh, log = self._open_log()
            tb = self._tensorboard()
        bar = progress(total=target, initial=self.step, desc="train", enabled=cfg.progress and self.rank == 0)
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
