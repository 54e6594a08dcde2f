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
