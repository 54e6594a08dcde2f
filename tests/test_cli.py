"""The command line: help works both ways in, and the mixture command writes its plot."""
import subprocess
import sys

import pytest

from scoresde.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "mixture" in capsys.readouterr().out


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "scoresde", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: scoresde" in out.stdout


def test_mixture_command_writes_png(tmp_path):
    png = tmp_path / "m.png"
    assert main(["mixture", "--method", "ddim", "--steps", "5", "--n", "200", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_mixture_command_rejects_missing_folder(tmp_path, capsys):
    assert main(["mixture", "--method", "ddim", "--out", str(tmp_path / "nope" / "m.png")]) == 2
    assert "--out" in capsys.readouterr().err
