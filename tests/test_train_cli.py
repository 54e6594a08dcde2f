"""``scoresde train`` and ``scoresde sample`` end to end (in-process), plus a torchrun launch (slow)."""
import json
import os
import shutil
import subprocess

import pytest
import torch

from scoresde.cli import main
from scoresde.config import TrainConfig

SMALL = ["--width", "16", "--depth", "1", "--emb-dim", "8", "--batch-size", "32", "--no-progress"]




def test_train_resume_and_sample(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "eight_gaussians", "--sde", "vp", "--steps", "20", "--out", str(run), *SMALL]) == 0
    assert {p.name for p in run.iterdir()} >= {"checkpoint.pt", "config.json", "log.csv"}
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert cfg.steps == 20 and cfg.width == 16 and cfg.sigma_data is not None
    assert main(["train", "--steps", "30", "--out", str(run), "--resume", *SMALL]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 30
    # without flags a resume takes the run's saved config; a changed setting is refused by name
    assert main(["train", "--steps", "35", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 35
    assert main(["train", "--steps", "40", "--out", str(run), "--resume", "--width", "8"]) == 2
    assert "width: checkpoint 16 vs now 8" in capsys.readouterr().err
    out, png = tmp_path / "s.pt", tmp_path / "s.png"
    assert main(["sample", "--ckpt", str(run), "--method", "ddim", "--steps", "5", "--n", "300", "--out", str(out),
                 "--plot", str(png)]) == 0
    x = torch.load(out, weights_only=True)
    assert x.shape == (300, 2) and torch.isfinite(x).all() and png.stat().st_size > 0
    assert "NFE 5" in capsys.readouterr().out


def test_config_file_with_flag_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("width: 24\nlr: 0.001\nsteps: 5\nsde: ve\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--lr", "0.003", "--out", str(tmp_path / "r"),
                 "--depth", "1", "--batch-size", "16", "--no-progress"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["width"], cfg["lr"], cfg["sde"], cfg["steps"]) == (24, 0.003, "ve", 5)


def test_clear_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"widht": 3}))
    assert main(["train", "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "r")]) == 2
    assert "unknown keys 'widht'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", str(tmp_path / "missing.pt"), *SMALL]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "data" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_two_processes_resume(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: torchrun picks a free port itself (fixed ports failed now and then when a previous
    # run's socket was still in TIME_WAIT)
    base = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "scoresde", "train", *SMALL]
    subprocess.run(base + ["--steps", "10", "--out", str(tmp_path / "r")], check=True, env=env, timeout=300)
    subprocess.run(base + ["--steps", "20", "--out", str(tmp_path / "r"), "--resume"], check=True, env=env, timeout=300)
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20 and ckpt["world_size"] == 2 and len(ckpt["rng"]["generators"]) == 2
