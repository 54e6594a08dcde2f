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


# ----- scoresde sample: outputs are renamed into place, never written in place ------------------------
UNET = ["--net", "unet", "--net-kwargs", '{"channels": 8, "norm_groups": 4, "num_res_blocks": 1, "channel_mult": [1], '
        '"attn_resolutions": []}']
# kill the process (SIGKILL, as the kernel's OOM killer would) when it is about to rename the temporary of the
# output named argv[1] into place, after cutting the temporary short: the state of a kill mid-write
KILLER = """
import os, signal, sys
from scoresde.cli import main
target = sys.argv[1]
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == target:
        os.truncate(src, 64)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "digits"
    assert main(["train", "--data", "digits", *UNET, "--steps", "1", "--batch-size", "4", "--no-progress",
                 "--no-tensorboard", "--out", str(run)]) == 0
    return run


def _sample_argv(run, folder, seed):
    return ["sample", "--ckpt", str(run), "--method", "ddim", "--steps", "2", "--n", "4", "--batch-size", "4",
            "--seed", str(seed), "--out", str(folder / "s.pt"), "--image-grid", str(folder / "g.png")]


def _outputs(folder):
    from PIL import Image

    with Image.open(folder / "g.png") as im:
        im.load()  # a truncated PNG raises here
    return torch.load(folder / "s.pt", weights_only=True), (folder / "g.png").read_bytes()


def test_sample_killed_while_writing_keeps_the_old_files(image_run, tmp_path):
    """SIGKILL during the write of the samples, then of the grid: the previous files still load, and the next
    run removes the temporaries the killed ones left."""
    assert main(_sample_argv(image_run, tmp_path, seed=0)) == 0
    old_x, old_png = _outputs(tmp_path)
    driver = tmp_path / "killer.py"
    driver.write_text(KILLER)
    for target in ("s.pt", "g.png"):
        done = subprocess.run([sys.executable, str(driver), target, *_sample_argv(image_run, tmp_path, seed=1)],
                              env=_env(), capture_output=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-500:]
        assert any(n.startswith(f".{target}.tmp-") for n in os.listdir(tmp_path)), "the kill did not land mid-write"
        x, png = _outputs(tmp_path)
        assert png == old_png  # killed before the grid's rename both times
        if target == "s.pt":
            assert torch.equal(x, old_x)
        else:  # the samples of seed 1 were complete and renamed before the grid was killed
            assert not torch.equal(x, old_x)
    assert main(_sample_argv(image_run, tmp_path, seed=2)) == 0
    assert _temporaries(tmp_path) == []
    _outputs(tmp_path)


def test_sample_onto_a_full_disk_keeps_the_old_file(image_run, tmp_path, monkeypatch, capsys):
    """A full disk (ENOSPC at the flush of the temporary): one line naming the file, the old file intact."""
    import errno

    assert main(_sample_argv(image_run, tmp_path, seed=0)) == 0
    old_x, old_png = _outputs(tmp_path)
    capsys.readouterr()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(_sample_argv(image_run, tmp_path, seed=1)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "s.pt" in err and "No space left on device" in err and "unchanged" in err, err
    x, png = _outputs(tmp_path)
    assert torch.equal(x, old_x) and png == old_png
    assert _temporaries(tmp_path) == []


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FULL_DISK = """
import errno, os, sys
from scoresde.cli import main
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = full
sys.exit(main(sys.argv[1:]))
"""


def test_two_ranks_onto_a_full_disk_stop_with_one_line_each(image_run, tmp_path):
    """torchrun's environment by hand (2 gloo ranks on loopback): rank 0 cannot write, both ranks exit 2 with
    one line naming the file (no internal error), and the previous samples are intact."""
    assert main(_sample_argv(image_run, tmp_path, seed=0)) == 0
    old_x, _ = _outputs(tmp_path)
    driver = tmp_path / "full.py"
    driver.write_text(FULL_DISK)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(driver), *_sample_argv(image_run, tmp_path, seed=1)],
                              env=dict(_env(), WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SCORESDE_DIST_TIMEOUT="120"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, err) in enumerate(zip(procs, errs, strict=True)):
        lines = [ln for ln in err.strip().splitlines() if ln.startswith("scoresde")]
        assert p.returncode == 2, f"rank {r}: {err[-800:]}"
        assert len(lines) == 1 and "s.pt" in lines[0] and "No space left on device" in lines[0], err[-800:]
        assert "internal error" not in err and "Traceback" not in err
    assert "rank 0" in errs[1]
    assert torch.equal(_outputs(tmp_path)[0], old_x)
    assert _temporaries(tmp_path) == []


def test_a_stale_torchrun_environment_times_out_naming_it(tmp_path):
    """WORLD_SIZE=2 RANK=0 and no peer: a named error after --dist-timeout seconds, not a wait of 30 minutes."""
    run = tmp_path / "toy"
    assert main(["train", *TINY, "--steps", "1", "--out", str(run)]) == 0
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "scoresde", "sample", "--ckpt", str(run), "--n", "2", "--steps", "2",
                           "--out", str(tmp_path / "s.pt"), "--dist-timeout", "2"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-800:]
    line = done.stderr.strip().splitlines()[-1]
    for word in ("2 s", "WORLD_SIZE=2", "RANK=0", "MASTER_ADDR=127.0.0.1",
                 "MASTER_PORT", "stale"):
        assert word in line, line
    assert time.monotonic() - start < 50 and not (tmp_path / "s.pt").exists()


def test_a_stale_torchrun_environment_times_out_training_too(tmp_path):
    """`scoresde train` under the same stale environment: the same named error, no checkpoint written."""
    run = tmp_path / "toy"
    env = dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "scoresde", "train", *TINY, "--steps", "1", "--out", str(run),
                           "--dist-timeout", "2"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-800:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    for word in ("2 s", "WORLD_SIZE=2", "RANK=0", "MASTER_ADDR=127.0.0.1", "MASTER_PORT", "stale"):
        assert word in line, line
    assert time.monotonic() - start < 50 and not (run / "checkpoint.pt").exists()


def test_the_join_timeout_is_checked_before_any_connection(monkeypatch):
    from scoresde.sharded import init_from_env

    for bad in (0, -1.0, float("inf"), float("nan"), True, "60"):
        with pytest.raises(ValueError, match="^timeout: expected a positive number of seconds"):
            init_from_env("gloo", bad)
    monkeypatch.setenv("SCORESDE_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="^SCORESDE_DIST_TIMEOUT: expected a number of seconds, got 'soon'"):
        init_from_env("gloo")
