"""Trainer steps per second against a bare training loop, timed in alternating rounds.

Shared by ``benchmarks/training.py`` and ``benchmarks/images.py``. The two loops alternate so that a burst of
load on a shared machine hits both alike; each is warmed up first.
"""
from __future__ import annotations

import time
from collections.abc import Callable


def alternating_throughput(trainer, bare_step: Callable[[], None], rounds: int, steps_per_round: int,
                           warmup: int) -> tuple[float, float]:
    """``(trainer steps/s, bare steps/s)`` over ``rounds`` rounds of ``steps_per_round`` steps each."""
    for _ in range(warmup):
        trainer.train_step()
        bare_step()
    t_trainer = t_bare = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.train(trainer.step + steps_per_round)
        t_trainer += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps_per_round):
            bare_step()
        t_bare += time.perf_counter() - start
    n = rounds * steps_per_round
    return n / t_trainer, n / t_bare
