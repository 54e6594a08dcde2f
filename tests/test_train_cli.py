"""``scoresde train`` and ``scoresde sample`` end to end (in-process), plus a torchrun launch (slow)."""
import json
import os
import shutil
import subprocess

import pytest
import torch
from _tinyconv import tinyconv_fixture  # noqa: F401  (the fixture "tinyconv")
from PIL import Image

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


def test_images_end_to_end_with_any_registered_net(tinyconv, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--conditional", "--net", tinyconv, "--net-kwargs", '{"channels": 4}',
                 "--steps", "3", "--batch-size", "16", "--out", str(run), "--no-progress", "--no-tensorboard"]) == 0
    out, png = tmp_path / "s.pt", tmp_path / "g.png"
    assert main(["sample", "--ckpt", str(run), "--method", "ddim", "--steps", "3", "--n", "6", "--batch-size", "4",
                 "--label", "2", "--out", str(out), "--image-grid", str(png), "--grid-scale", "2"]) == 0
    x = torch.load(out, weights_only=True)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    # 6 images of 8x8 in 3 columns, 2 rows, 1 pixel of padding, each pixel drawn 2x2
    assert Image.open(png).size == (2 * (1 + 3 * 9), 2 * (1 + 2 * 9))
    assert "shape (1, 8, 8)" in capsys.readouterr().out
    # a scatter plot is for 2D data
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(out), "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot: scatter plots need 2D data" in capsys.readouterr().err


def test_an_image_file_keeps_its_shape_and_flow_matching_from_the_command_line(tmp_path):
    import numpy as np

    np.save(tmp_path / "rgb.npy", np.random.default_rng(0).integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "rgb.npy"), "--loss", "flow_matching", "--sde", "flow",
                 "--parameterization", "velocity", "--precondition", "none", "--steps", "3", "--out", str(run),
                 *SMALL]) == 0
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert (cfg.loss, cfg.precondition) == ("flow_matching", None)
    out = tmp_path / "s.npy"
    assert main(["sample", "--ckpt", str(run), "--method", "heun", "--steps", "3", "--n", "5", "--out", str(out),
                 "--image-grid", str(tmp_path / "g.png")]) == 0
    assert np.load(out).shape == (5, 3, 4, 4)
    # a folder of PNGs of two sizes trains once resized; its shape reaches the checkpoint
    (tmp_path / "pngs").mkdir()
    for i, size in enumerate((5, 7)):
        Image.fromarray(np.full((size, size), 40 * i, dtype=np.uint8), mode="L").save(tmp_path / "pngs" / f"{i}.png")
    args = ["train", "--data", str(tmp_path / "pngs"), "--steps", "2", *SMALL]
    assert main([*args, "--out", str(tmp_path / "bad")]) == 2  # mixed sizes without --image-size
    assert main([*args, "--image-size", "4", "--out", str(tmp_path / "png_run")]) == 0
    assert torch.load(tmp_path / "png_run" / "checkpoint.pt", weights_only=True)["net"]["event_shape"] == [1, 4, 4]


def test_image_and_net_errors(tmp_path, capsys):
    assert main(["train", "--net", "unet9000", "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "net: unknown 'unet9000'; allowed: mlp" in capsys.readouterr().err
    assert main(["train", "--net-kwargs", '{"channels": 2}', "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "takes no option 'channels'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "has no readable images" in capsys.readouterr().err
    assert main(["train", "--loss", "flow_matching", "--out", str(tmp_path / "r"), *SMALL]) == 2
    assert "needs sde='flow'" in capsys.readouterr().err
    run = tmp_path / "toy"
    assert main(["train", "--steps", "2", "--out", str(run), *SMALL]) == 0
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(tmp_path / "s.pt"),
                 "--image-grid", str(tmp_path / "g.png")]) == 2
    assert "--image-grid: needs images" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing was written before the errors


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_sampling_gives_the_same_samples_for_one_and_two_processes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    assert main(["train", "--data", "digits", "--steps", "2", "--out", str(tmp_path / "r"), *SMALL]) == 0
    args = ["-m", "scoresde", "sample", "--ckpt", str(tmp_path / "r"), "--method", "ddpm", "--steps", "4",
            "--num-samples", "9", "--batch-size", "2"]
    for k in (1, 2):
        subprocess.run(["torchrun", "--standalone", "--nproc_per_node", str(k), *args, "--out",
                        str(tmp_path / f"s{k}.pt")], check=True, env=env, timeout=300)
    one, two = (torch.load(tmp_path / f"s{k}.pt", weights_only=True) for k in (1, 2))
    assert one.shape == (9, 1, 8, 8) and torch.equal(one, two)
