"""Faults during training: a run killed while writing its checkpoint resumes exactly, and leaves no temporaries.

A checkpoint is written to ``.checkpoint.pt.tmp-PID`` and renamed over ``checkpoint.pt`` when complete,
so a kill at any moment leaves the previous checkpoint intact (and, mid-write, a stale temporary that
the next run removes). Resuming restores weights, optimiser and every random state, so the resumed
run must end with the same parameters, bit for bit, as a run that was never interrupted.
"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scoresde.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data", "eight_gaussians", "--width", "8", "--depth", "1", "--emb-dim", "8", "--batch-size", "8",
        "--no-progress", "--no-tensorboard", "--ckpt-every", "1"]


def _states(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    return {"step": ckpt["step"], "model": ckpt["model"], "ema": ckpt["ema"], "optimizer": ckpt["optimizer"]}


def _assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in sa:
            assert torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])), f"optimizer {k} differs"


def _losses(run: Path) -> list[tuple[str, str]]:
    with open(run / "log.csv", newline="") as fh:
        return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)  # run() has reaped it: no live process has this pid


def test_resume_after_a_crash_mid_checkpoint(tmp_path):
    """Fast variant: the state a SIGKILL mid-write leaves (a partial temporary of a dead process beside the
    previous checkpoint) is recreated by hand; the resumed run removes it and matches the uninterrupted run."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(["train", *TINY, "--steps", "6", "--out", str(whole)]) == 0
    assert main(["train", *TINY, "--steps", "3", "--out", str(broken)]) == 0
    partial = (broken / "checkpoint.pt").read_bytes()[:200]
    for name in ("checkpoint.pt", "log.csv"):
        (broken / f".{name}.tmp-{_dead_pid()}").write_bytes(partial)
    live = broken / f".checkpoint.pt.tmp-{os.getppid()}"  # a live writer's file (our parent's) is never touched
    live.write_bytes(partial)
    assert main(["train", *TINY, "--steps", "6", "--out", str(broken), "--resume"]) == 0
    assert _temporaries(broken) == [live.name]
    live.unlink()
    _assert_identical(_states(broken), _states(whole))
    assert _losses(broken) == _losses(whole)


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def _kill_during_a_write(cmd: list[str], run: Path, skip: int, timeout: float = 120.0) -> bool:
    """Start ``cmd``; once it has renamed ``skip`` new checkpoints into place, SIGKILL it the next time a
    checkpoint temporary is seen in ``run``. Returns whether the kill landed mid-write (the temporary is
    still there afterwards)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = run / "checkpoint.pt"
    written, last, start = 0, (ckpt.stat().st_ino if ckpt.exists() else None), time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < timeout:
            try:
                names, inode = os.listdir(run), ckpt.stat().st_ino
            except FileNotFoundError:
                names, inode = [], None
            if inode is not None and inode != last:  # os.replace put a new file in place
                written, last = written + 1, inode
            if written >= skip and any(n.startswith(".checkpoint.pt.tmp-") for n in names):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)  # a write takes milliseconds (fsync); polling need not spin a core
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed: {proc.stderr.read().decode()[-500:]}"
    return any(n.startswith(".checkpoint.pt.tmp-") for n in os.listdir(run))


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_then_resume(tmp_path):
    """SIGKILL ``scoresde train`` while it writes checkpoints, four times, resume, and compare bit for bit."""
    steps = "400"
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run([sys.executable, "-m", "scoresde", "train", *TINY, "--steps", steps, "--out", str(whole)],
                   env=_env(), check=True, timeout=600, stdout=subprocess.DEVNULL)
    mid_write, steps_at_kill = 0, []
    for skip in (2, 7, 13, 29):
        resume = ["--resume"] if (broken / "checkpoint.pt").exists() else []
        cmd = [sys.executable, "-m", "scoresde", "train", *TINY, "--steps", steps, "--out", str(broken), *resume]
        mid_write += _kill_during_a_write(cmd, broken, skip)
        steps_at_kill.append(_states(broken)["step"])
    assert mid_write >= 1, f"no kill landed mid-write (at steps {steps_at_kill}): the fault was not tested"
    assert steps_at_kill == sorted(steps_at_kill) and steps_at_kill[-1] < int(steps)
    subprocess.run([sys.executable, "-m", "scoresde", "train", *TINY, "--steps", steps, "--out", str(broken),
                    "--resume"], env=_env(), check=True, timeout=600, stdout=subprocess.DEVNULL)
    assert _temporaries(broken) == []
    _assert_identical(_states(broken), _states(whole))
    assert _losses(broken) == _losses(whole)
