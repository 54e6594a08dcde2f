"""Every user error on the command line: exit status 2 and ONE line on stderr naming the flag or file, no traceback.

The table runs in-process (``scoresde.cli.main``); one case runs ``python -m scoresde`` for real, and
``--debug`` is checked to bring the traceback back.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoresde.cli import main

SMALL = ["--width", "8", "--depth", "1", "--emb-dim", "8", "--batch-size", "8", "--no-progress", "--steps", "2"]
HAS_PROC = Path("/proc").is_dir()


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A folder of bad inputs; the commands run inside it."""
    monkeypatch.chdir(tmp_path)
    Path("text.pt").write_text("hello\n")
    np.save("objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    Path("afile").write_text("x")
    Path("bad.yaml").write_text("width: [1, 2\n")
    Path("strbool.json").write_text('{"importance": "false"}')
    Path("adir").mkdir()
    torch.save(torch.randn(16, 2), "points.pt")
    nan = torch.randn(16, 2)
    nan[5, 1] = float("nan")
    torch.save(nan, "nan_points.pt")
    Path("folders").mkdir()
    for name in ("a", "b"):
        Path("folders", name).mkdir()
        Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(Path("folders", name, "x.png"))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(Path("folders", "stray.png"))
    np.save("pixels_as_float.npy", np.full((4, 1, 8, 8), 128.0, dtype=np.float32))
    return tmp_path


CASES = [
    # train: data files, config files, SDE arguments, the run folder
    (["train", "--out", "r", "--data", "text.pt", *SMALL], ["data", "text.pt", "corrupt"]),
    (["train", "--out", "r", "--data", "objects.npy", *SMALL], ["data", "objects.npy", "object array"]),
    (["train", "--out", "r", "--data", "missing.pt", *SMALL], ["data", "missing.pt", "does not exist"]),
    (["train", "--out", "r", "--config", "bad.yaml", *SMALL], ["config", "bad.yaml", "YAML"]),
    (["train", "--out", "r", "--config", "strbool.json", *SMALL], ["importance", "'false'"]),
    (["train", "--out", "r", "--sde-kwargs", '{"foo": 1}', *SMALL], ["sde_kwargs", "'foo'", "beta_min"]),
    (["train", "--out", "r", "--sde-kwargs", '{"beta_max": 1e4}', *SMALL], ["sde_kwargs", "beta_max=10000.0"]),
    (["train", "--out", "r", "--sde-kwargs", "[1]", *SMALL], ["--sde-kwargs", "JSON object"]),
    (["train", "--out", "afile", *SMALL], ["--out", "afile", "not a folder"]),
    (["train", "--out", "afile/run", *SMALL], ["--out", "afile", "not a folder"]),
    (["train", "--out", "r", "--resume", "text.pt", *SMALL], ["checkpoint", "text.pt", "corrupt"]),
    (["train", "--out", "r", "--sde", "nope", *SMALL], ["sde", "nope", "vp"]),
    (["train", "--out", "r", "--width", "2.5"], ["--width", "2.5"]),
    (["train", "--out", "r", "--lr", "nan", *SMALL], ["lr", "nan"]),
    # sample: the checkpoint and the outputs
    (["sample", "--ckpt", "text.pt", "--out", "s.pt"], ["checkpoint", "text.pt"]),
    (["sample", "--ckpt", "adir", "--out", "s.pt"], ["checkpoint", "adir"]),
    (["sample", "--ckpt", "adir", "--out", "adir"], ["--out", "adir"]),
    (["sample", "--ckpt", "adir", "--out", "afile/s.pt"], ["--out", "afile", "not a folder"]),
    (["sample", "--ckpt", "adir", "--out", "s.pt", "--plot", "afile/s.png"], ["--plot", "afile"]),
    # nll: points files and the output, refused before the likelihood is computed
    (["nll", "--points", "text.pt"], ["--points", "text.pt", "corrupt"]),
    (["nll", "--points", "objects.npy"], ["--points", "objects.npy", "object array"]),
    (["nll", "--points", "points.pt", "--out", "adir"], ["--out", "adir", "folder"]),
    (["nll", "--points", "points.pt", "--out", "afile/nll.csv"], ["--out", "afile", "not a folder"]),
    (["nll", "--points", "nan_points.pt", "--out", "n.csv"], ["--points", "nan_points.pt", "item 5", "NaN"]),
    # image data read wrong would train silently: refused by name
    (["train", "--out", "r", "--data", "folders", *SMALL], ["data", "'stray.png'", "sub-folder"]),
    (["train", "--out", "r", "--data", "pixels_as_float.npy", *SMALL], ["data", "[128, 128]", "[-1, 1]", "uint8"]),
    # sample: the method spec and the step count, checked before the run is read
    (["sample", "--ckpt", "adir", "--steps", "0"], ["--steps", "0", "1 to 100000"]),
    (["sample", "--ckpt", "adir", "--method", "nope"], ["--method", "nope", "known samplers", "ddim"]),
    (["sample", "--ckpt", "adir", "--method", "ddim:zeta=1"], ["--method", "zeta", "eta"]),
    (["sample", "--ckpt", "adir", "--method", "ddim:eta"], ["--method", "key=value"]),
    # sample: a stale or broken torchrun setting
    (["sample", "--ckpt", "adir", "--out", "s.pt", "--dist-timeout", "0"], ["--dist-timeout", "0"]),
    # seeds beyond torch's 64-bit generators: named, not "Overflow when unpacking long long"
    (["sample", "--ckpt", "adir", "--out", "s.pt", "--seed", str(2**64 + 1)], ["--seed", str(2**64 + 1), str(2**63 - 1)]),
    (["mixture", "--seed", "-3"], ["--seed", "-3"]),
    (["train", "--out", "r", "--seed", str(2**64 + 1), *SMALL], ["seed", str(2**64 + 1)]),
    (["train", "--out", "r", "--dist-timeout", "-1", *SMALL], ["--dist-timeout", "-1"]),
    # mixture, demo, study: outputs and counts
    (["mixture", "--out", "adir"], ["--out", "adir", "folder"]),
    (["mixture", "--out", "plot.xyz"], ["--out", "plot.xyz", ".png"]),
    (["mixture", "--out", "afile/m.png"], ["--out", "afile"]),
    (["mixture", "--n", "0", "--out", "m.png"], ["--n", "0"]),
    (["mixture", "--data", "nope"], ["--data", "nope"]),
    (["mixture", "--steps", "ten"], ["--steps", "ten"]),
    (["demo", "--out", "afile", "--quiet"], ["--out", "afile", "not a folder"]),
    (["demo", "--out", "afile/d", "--quiet"], ["--out", "afile", "not a folder"]),
    (["demo", "--steps", "10", "5", "--out", "d", "--quiet"], ["--steps"]),
    (["demo", "--n", "1", "--out", "d", "--quiet"], ["--n", "1"]),
    (["study", "grids", "--out", "afile", "--quiet"], ["--out", "afile"]),
    (["study", "grids", "--data", "rings", "--out", "s", "--quiet"], ["--data", "rings"]),
    (["study", "nope"], ["nope"]),
]
if HAS_PROC:  # a location nobody can write to, whoever runs the tests (root ignores permission bits)
    CASES += [
        (["train", "--out", "/proc/scoresde-run", *SMALL], ["--out", "/proc/scoresde-run", "cannot write"]),
        (["mixture", "--out", "/proc/m.png"], ["--out", "/proc/m.png", "cannot write"]),
        (["demo", "--out", "/proc/demo", "--quiet"], ["--out", "/proc/demo", "cannot write"]),
    ]


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        return exc.code


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a[:3]) for a, _ in CASES])
def test_user_error_is_one_line(files, capsys, argv, words):
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("scoresde")
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert not Path("r").exists() and not Path("d").exists(), "an output was created before the error"
    assert not Path("s.pt").exists() and not Path("n.csv").exists(), "an output was created before the error"


def test_no_traceback_from_the_real_command(files):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                                   os.environ.get("PYTHONPATH")])))
    env.pop("SCORESDE_DEBUG", None)
    out = subprocess.run([sys.executable, "-m", "scoresde", "train", "--out", "r", "--data", "text.pt", *SMALL],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and "text.pt" in out.stderr


def test_debug_brings_the_traceback_back(files, monkeypatch):
    with pytest.raises(ValueError, match="text.pt"):
        main(["--debug", "train", "--out", "r", "--data", "text.pt", *SMALL])
    monkeypatch.setenv("SCORESDE_DEBUG", "1")
    with pytest.raises(ValueError, match="objects.npy"):
        main(["train", "--out", "r", "--data", "objects.npy", *SMALL])


def test_a_bug_is_one_line_with_status_1(files, capsys, monkeypatch):
    import scoresde.commands.mixture as mixture

    def broken(args):
        raise RuntimeError("something deep\ninside")

    monkeypatch.setattr(mixture, "run", broken)
    assert main(["mixture"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "internal error: RuntimeError: something deep inside" in err and "--debug" in err


# ----- a trained image run: errors found only once the checkpoint is read, still before any output -----------
UNET = ["--net", "unet", "--net-kwargs", '{"channels": 8, "norm_groups": 4, "num_res_blocks": 1, "channel_mult": [1], '
        '"attn_resolutions": []}']


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli_errors") / "digits"
    assert main(["train", "--data", "digits", *UNET, "--steps", "1", "--batch-size", "4", "--no-progress",
                 "--no-tensorboard", "--out", str(run)]) == 0
    torch.save(torch.randint(0, 17, (3, 1, 8, 8)), run.parent / "levels17.pt")
    return run


RUN_CASES = [
    # the run records 17 levels: scoring its data as 256 levels would be a wrong bound
    (["nll", "--ckpt", "RUN", "--points", "POINTS", "--levels", "256", "--no-ode", "--bound", "continuous",
      "--out", "old.csv"], ["--levels", "256", "17 levels", "--levels 17"]),
    (["nll", "--ckpt", "RUN", "--points", "POINTS", "--out", "old.csv"], ["--levels", "the run records 17"]),
    # a grid of 12.5 TiB is refused before sampling, not after (MemoryError)
    (["sample", "--ckpt", "RUN", "--n", "4", "--steps", "2", "--out", "old.pt", "--image-grid", "old.png",
      "--grid-scale", "1000000"], ["--grid-scale", "1000000", "at most"]),
    # resuming a U-Net's run as another net: the checkpoint's net is named, not options the user never gave
    (["train", "--out", "new", "--resume", "RUN/checkpoint.pt", "--net", "dit", "--no-progress"],
     ["--net", "'dit'", "U-Net", "'unet'"]),
]


@pytest.mark.parametrize("argv, words", RUN_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in RUN_CASES])
def test_user_error_after_reading_the_run_keeps_old_outputs(digits_run, tmp_path, monkeypatch, capsys, argv, words):
    monkeypatch.chdir(tmp_path)
    old = {name: f"old {name}".encode() for name in ("old.csv", "old.pt", "old.png")}
    for name, data in old.items():
        Path(name).write_bytes(data)
    points = str(digits_run.parent / "levels17.pt")
    argv = [a.replace("RUN", str(digits_run)) if a.startswith("RUN") else points if a == "POINTS" else a for a in argv]
    rc = _run(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old, "an output was written or replaced"


def test_sample_help_says_how_to_spell_n_under_torchrun(capsys):
    """torchrun's own parser refuses `--n` as ambiguous before scoresde runs: the help names `--num-samples`."""
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--num-samples" in capsys.readouterr().out.replace("\n", " ")
