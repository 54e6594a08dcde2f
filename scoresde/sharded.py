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
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from .models import ScoreModel
from .samplers import sample

__all__ = ["ShardedResult", "sample_sharded", "seed_of", "prior_draws"]


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
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
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
