"""``scoresde demo`` and ``scoresde study`` in a temporary folder: the promised files, and clean bad input."""
import csv

import pytest

from scoresde.cli import main
from scoresde.grids import available as available_grids

DEMO_FILES = {"trajectories.png", "trajectories.csv", "error_vs_steps.png", "error_vs_steps.csv",
              "error_vs_steps_orders.csv", "ddim_limit.png", "ddim_limit.csv", "ddim_limit_identity.csv",
              "ddim_limit_eta.csv"}


def test_demo_quick_writes_every_promised_file(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--quiet", "--no-gif", "--train-steps", "0", "--methods", "ddim", "heun",
               "--steps", "4", "8", "16", "--n", "16", "--out", str(out)])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    assert DEMO_FILES <= names, DEMO_FILES - names
    assert not [n for n in names if n.startswith(".")]  # the staging folder is gone
    printed = capsys.readouterr().out
    assert "declared" in printed and "fitted" in printed and "two-sample level" in printed
    with open(out / "error_vs_steps.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["method"], int(r["steps"])) for r in rows} == {(m, n) for m in ("ddim", "heun") for n in (4, 8, 16)}
    # the endpoint error falls with the number of steps for each sampler
    for m in ("ddim", "heun"):
        errs = [float(r["endpoint_error"]) for r in rows if r["method"] == m]
        assert errs[0] > errs[1] > errs[2]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, msg", [
    (["--methods", "nope"], "unknown sampler 'nope'"),
    (["--grid", "nope"], "unknown name 'nope'"),
    (["--steps", "8", "4"], "strictly increasing"),
    (["--steps", "0"], "positive"),
    (["--n", "1"], "--n"),
])
def test_demo_bad_input_fails_before_any_work(tmp_path, capsys, args, msg):
    out = tmp_path / "never"
    rc = main(["demo", "--quiet", "--out", str(out), *args])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()


def test_demo_empty_step_list_is_an_argparse_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path / "x"), "--steps"])
    assert e.value.code == 2


def test_demo_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc = main(["demo", "--quiet", "--out", str(blocker / "out")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err


def test_study_grids_quick(tmp_path, capsys):
    out = tmp_path / "grids"
    rc = main(["study", "grids", "--quick", "--quiet", "--methods", "ddim", "--out", str(out)])
    assert rc == 0
    assert {"grid_comparison.png", "grid_comparison.csv", "grid_comparison_gains.csv"} <= {p.name for p in out.iterdir()}
    with open(out / "grid_comparison.csv") as fh:
        grids = {r["grid"] for r in csv.DictReader(fh)}
    assert grids == set(available_grids()) | {"optimised", "fitted"}  # every named grid, and the two tuned ones
    assert "gain=" in capsys.readouterr().out


def test_study_trajectories_quick(tmp_path):
    out = tmp_path / "traj"
    assert main(["study", "trajectories", "--quick", "--quiet", "--no-gif", "--out", str(out)]) == 0
    assert {"trajectories.png", "trajectories.csv"} <= {p.name for p in out.iterdir()}


def test_study_bad_input(tmp_path, capsys):
    assert main(["study", "error-vs-steps", "--methods", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "known samplers" in capsys.readouterr().err
    assert main(["study", "error-vs-steps", "--data", "two_moons", "--out", str(tmp_path / "x")]) == 2
    assert "no exact mixture" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_demo_with_a_short_trained_model(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--quiet", "--no-gif", "--train-steps", "20", "--methods", "ddim",
               "--steps", "4", "8", "16", "--n", "16", "--out", str(out)])
    assert rc == 0
    with open(out / "error_vs_steps.csv") as fh:
        models = {r["model"] for r in csv.DictReader(fh)}
    assert models == {"exact", "learned MLP (20 steps)"}
    assert "learned model" in capsys.readouterr().out
