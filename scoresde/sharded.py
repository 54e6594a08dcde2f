r"""Sampling sharded over processes (``torchrun``), with samples that do not depend on the number of processes.

The ``n`` samples are cut into fixed chunks of ``batch_size`` (chunk ``j`` holds samples
``j B .. min(n, (j + 1) B) - 1``) and rank ``r`` of ``K`` computes the chunks ``j = r, r + K, ...``.
Randomness is tied to samples and chunks, never to ranks:

* the starting point ``x_T`` of sample ``i`` is drawn from its own generator, seeded with
  ``SeedSequence([seed, 0, i])``, from the prior ``N(0, sigma(T)^2 I)``;
* a stochastic sampler's noise for chunk ``j`` comes from a generator seeded with
  ``SeedSequence([seed, 1, j])``.

Each chunk is therefore computed from the same inputs, with the same batch size (so the same
floating-point kernels), whichever rank computes it, and the gathered samples are bit-identical for
every K (EDM's ``generate.py`` seeds per sample in the same spirit). Rank 0 gathers the chunks in
order with ``torch.distributed.gather_object`` (gloo on CPU, nccl on GPU); the other ranks return None.

:func:`init_from_env` joins the process group torchrun describes in the environment (``WORLD_SIZE``,
``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) within a short timeout: a stale environment left from an
earlier run (no peer will ever come) is a named error after ``timeout`` seconds, not a wait of
torch's 30 minutes; the collectives afterwards keep torch's long default (ranks may finish their
chunks far apart).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .checks import SEED_MAX
from .models import ScoreModel
from .samplers import sample

__all__ = ["ShardedResult", "sample_sharded", "seed_of", "prior_draws", "init_from_env", "DIST_ENV",
           "DEFAULT_JOIN_TIMEOUT"]

#: the environment variables torchrun sets and :func:`init_from_env` reads
DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: seconds to wait for every rank to join (``SCORESDE_DIST_TIMEOUT`` overrides it)
DEFAULT_JOIN_TIMEOUT = 60.0


def _join_timeout(timeout: float | None) -> float:
    if timeout is None:
        raw = os.environ.get("SCORESDE_DIST_TIMEOUT")
        if raw is None:
            return DEFAULT_JOIN_TIMEOUT
        try:
            timeout = float(raw)
        except ValueError:
            raise ValueError(f"SCORESDE_DIST_TIMEOUT: expected a number of seconds, got {raw!r}") from None
        name = "SCORESDE_DIST_TIMEOUT"
    else:
        name = "timeout"
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"{name}: expected a positive number of seconds, got {timeout!r}")
    return float(timeout)


def init_from_env(backend: str, timeout: float | None = None) -> None:
    """``torch.distributed.init_process_group(backend)`` from torchrun's environment, refusing to wait forever.

    Every rank must join within ``timeout`` seconds (default ``SCORESDE_DIST_TIMEOUT`` or
    :data:`DEFAULT_JOIN_TIMEOUT`); otherwise a ValueError names the variables, their values
    and the likely cause (a stale torchrun environment in the shell). The rendezvous store is made
    by torch's own ``env://`` handler, so torchrun's agent store is used where torchrun provides one.
    """
    seconds = _join_timeout(timeout)
    env = {k: os.environ.get(k) for k in DIST_ENV}
    described = " ".join(f"{k}={v}" for k, v in env.items() if v is not None)

    def failed(err: BaseException) -> ValueError:
        return ValueError(f"torchrun environment: could not join the other ranks within {seconds:g} s ({described}; "
                          f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
                          "if this is not a torchrun launch, unset WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT "
                          "(a stale environment); else raise SCORESDE_DIST_TIMEOUT")

    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=timedelta(seconds=seconds)))
        store.set_timeout(timedelta(seconds=seconds))
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
    except (RuntimeError, OSError, ValueError) as err:  # DistStoreError, DistNetworkError are RuntimeErrors
        if dist.is_initialized():
            dist.destroy_process_group()
        raise failed(err) from None
    # the first NCCL collective exchanges its id through the store, maybe after a long sampling run
    store.set_timeout(timedelta(minutes=30))


def seed_of(seed: int, kind: int, index: int) -> int:
    """A 63-bit seed for stream ``kind`` (0: a sample's x_T, 1: a chunk's sampler noise) and ``index``."""
    return int(np.random.SeedSequence([seed, kind, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def prior_draws(model: ScoreModel, indices: range, event_shape: tuple[int, ...], seed: int, *, device=None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``x_T`` of the samples ``indices``, each from its own CPU generator (so the same on every device count)."""
    draws = [model.sde.prior_sample((1, *event_shape), generator=torch.Generator().manual_seed(seed_of(seed, 0, i)),
                                    dtype=dtype) for i in indices]
    return torch.cat(draws).to(device)


@dataclass(frozen=True)
class ShardedResult:
    """``samples`` ``(n, *event_shape)`` on the CPU (None on ranks other than 0) and each chunk's NFE."""

    samples: Tensor | None
    nfe: list[int]


def sample_sharded(model: ScoreModel, method: str, steps: int | None, *, n: int, event_shape: tuple[int, ...],
                   seed: int = 0, batch_size: int = 1000, device=None, dtype: torch.dtype = torch.float32,
                   progress: bool = False, **options) -> ShardedResult:
    """Draw ``n`` samples with :func:`scoresde.sample`, sharded over the ranks of the initialised process group
    (one process when there is none); see the module docstring. ``options`` go to :func:`scoresde.sample`."""
    for name, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"seed: expected an integer in [0, {SEED_MAX}], got {seed!r}")
    if "x_T" in options or "shape" in options or "generator" in options:
        raise ValueError("options: x_T, shape and generator are set per chunk from seed; leave them out")
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device("cpu") if device is None else torch.device(device)
    event_shape = tuple(int(s) for s in event_shape)
    n_chunks = -(-n // batch_size)
    mine = []
    for j in range(rank, n_chunks, world):
        idx = range(j * batch_size, min(n, (j + 1) * batch_size))
        x_T = prior_draws(model, idx, event_shape, seed, device=device, dtype=dtype)
        gen = torch.Generator(device).manual_seed(seed_of(seed, 1, j))
        res = sample(model, model.sde, method, steps, x_T=x_T, generator=gen, progress=progress and rank == 0,
                     **options)
        mine.append((j, res.samples.cpu(), int(res.nfe)))
    if distributed:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        chunks = [c for part in gathered for c in part] if rank == 0 else []
    else:
        chunks = mine
    if rank != 0:
        return ShardedResult(None, [])
    chunks.sort(key=lambda c: c[0])
    return ShardedResult(torch.cat([c[1] for c in chunks]), [c[2] for c in chunks])
