"""DDP on 2 CPU processes (gloo): ranks stay in lock-step, and a resumed run equals an uninterrupted one."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scoresde.config import TrainConfig
from scoresde.training import TensorData, Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

CFG = dict(steps=12, batch_size=32, width=16, depth=1, emb_dim=8, ckpt_every=6, warmup=2, progress=False,
           tensorboard=False, seed=3)


def _worker(rank: int, world: int, root: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/store", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(**CFG)
        straight = Trainer(cfg, os.path.join(root, "a"))
        rec_a = straight.train()
        first = Trainer(cfg.replace(steps=CFG["steps"] // 2), os.path.join(root, "b"))
        rec_b = first.train()
        resumed = Trainer(cfg, os.path.join(root, "b"), resume=True)
        rec_b += resumed.train()
        torch.save({"a": straight.net.state_dict(), "b": resumed.net.state_dict(),
                    "ema_b": resumed.ema.state_dict(),
                    "loss_a": [r.loss for r in rec_a], "loss_b": [r.loss for r in rec_b],
                    "gen": straight.generator.get_state()}, os.path.join(root, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_stay_identical_and_resume_exactly(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("a", "b", "ema_b"):  # DDP keeps the replicas equal bit for bit
        assert all(torch.equal(r0[key][k], r1[key][k]) for k in r0[key])
    # each rank drew its own stream
    assert not torch.equal(r0["gen"], r1["gen"])
    # the logged loss is the all-reduced mean: the same on every rank
    assert r0["loss_a"] == r1["loss_a"]
    # 2 x 6 steps with a resume (every rank restores its own generator) == 12 steps straight
    assert r0["loss_a"] == r0["loss_b"]
    assert all(torch.equal(r0["a"][k], r0["b"][k]) for k in r0["a"])
    # only rank 0 writes: one checkpoint, one log, no stray per-rank files
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["checkpoint.pt", "config.json", "log.csv"]


# ----- sampling sharded over ranks ------------------------------------------------------------------
SAMPLE_KW = dict(n=10, batch_size=3)  # 4 chunks of 3, 3, 3, 1: uneven over 2 ranks


def _sample_worker(rank: int, world: int, root: str):
    from scoresde.sharded import sample_sharded
    from scoresde.training import load_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/sample_store", rank=rank, world_size=world)
    try:
        model, _ = load_model(os.path.join(root, "run"))
        out = {}
        for method in ("ddim", "ddpm"):
            res = sample_sharded(model, method, 4, event_shape=model.event_shape, seed=11, **SAMPLE_KW)
            out[method] = res.samples
        if rank == 0:
            torch.save(out, os.path.join(root, "sharded.pt"))
        else:
            assert all(v is None for v in out.values())
    finally:
        dist.destroy_process_group()


def test_sharded_sampling_is_bit_identical_for_one_and_two_gloo_ranks(tmp_path):
    from scoresde.sharded import sample_sharded
    from scoresde.training import load_model

    images = torch.rand(32, 1, 4, 4) * 2 - 1
    cfg = TrainConfig(**{**CFG, "steps": 2, "ckpt_every": 2})
    Trainer(cfg, tmp_path / "run", data=TensorData(images)).train()
    model, _ = load_model(tmp_path / "run")
    one = {m: sample_sharded(model, m, 4, event_shape=model.event_shape, seed=11, **SAMPLE_KW).samples
           for m in ("ddim", "ddpm")}
    mp.spawn(_sample_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "sharded.pt", weights_only=True)
    for m in ("ddim", "ddpm"):  # deterministic and stochastic
        assert one[m].shape == (10, 1, 4, 4)
        assert torch.equal(one[m], two[m]), m
    # the seed matters, and the stochastic sampler's noise is drawn (ddpm differs from ddim)
    assert not torch.equal(one["ddpm"], one["ddim"])
    other = sample_sharded(model, "ddim", 4, event_shape=model.event_shape, seed=12, **SAMPLE_KW).samples
    assert not torch.equal(other, one["ddim"])
    # a sample's starting point depends on its index alone, not on the chunking
    from scoresde.sharded import prior_draws
    torch.testing.assert_close(prior_draws(model, range(4, 6), (1, 4, 4), 11),
                               prior_draws(model, range(10), (1, 4, 4), 11)[4:6], rtol=0, atol=0)
