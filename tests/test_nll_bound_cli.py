"""``scoresde nll --bound``: the command's bound is the library's, and bad image/level input exits with one line."""

import torch

from scoresde import VPSDE, toy
from scoresde.bounds import continuous_bound, variational_bound
from scoresde.cli import main


def read_csv(path):
    lines = path.read_text().splitlines()
    names = lines[0].split(",")
    rows = torch.tensor([[float(v) for v in line.split(",")] for line in lines[1:]], dtype=torch.float64)
    return {k: rows[:, i] for i, k in enumerate(names)}


def test_bound_command_is_the_library_bound(tmp_path, capsys):
    csv = tmp_path / "b.csv"
    assert main(["nll", "--data", "eight_gaussians", "--n", "16", "--no-ode", "--bound", "discrete", "--steps", "20",
                 "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "discrete bound, N = 20" in out and "bits/dim" in out
    cols = read_csv(csv)
    assert set(cols) == {"bound", "exact_nll_0"}
    # the command seeds one generator: first the points, then the bound's noise
    gen = torch.Generator().manual_seed(0)
    mix = toy.mixture("eight_gaussians")
    x = toy.sample("eight_gaussians", 16, gen).double()
    ref = variational_bound(mix.model(VPSDE()), x, steps=20, generator=gen)
    torch.testing.assert_close(cols["bound"], ref.nll, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cols["exact_nll_0"], -mix.log_prob(x), rtol=1e-9, atol=1e-9)

    assert main(["nll", "--data", "eight_gaussians", "--n", "16", "--no-ode", "--bound", "continuous", "--n-t", "2",
                 "--out", str(csv)]) == 0
    gen = torch.Generator().manual_seed(0)
    x = toy.sample("eight_gaussians", 16, gen).double()
    ref = continuous_bound(mix.model(VPSDE()), x, n_t=2, generator=gen)
    torch.testing.assert_close(read_csv(csv)["bound"], ref.nll, rtol=1e-9, atol=1e-9)


def test_image_points_and_levels_errors(tmp_path, capsys):
    imgs = tmp_path / "imgs.pt"
    torch.save(torch.randint(0, 17, (4, 1, 2, 2), generator=torch.Generator().manual_seed(0)), imgs)
    cases = [
        (["--points", str(imgs)], "--levels"),                              # image points: levels unknown
        (["--points", str(imgs), "--levels", "5"], "--levels: integer points must lie in [0, 4]"),
        (["--points", str(imgs), "--levels", "17"], "exact oracle of eight_gaussians takes points of shape (B, 2)"),
        (["--levels", "1"], "--levels"),
        (["--levels", "17", "--bin-width", "0.1"], "not both"),
        (["--no-ode"], "--no-ode"),
        (["--bound", "discrete", "--steps", "0"], "--steps"),
        (["--bound", "discrete", "--n-t", "0"], "--n-t"),
    ]
    for extra, message in cases:
        assert main(["nll", "--data", "eight_gaussians", "--n", "4", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_levels_on_float_points_off_the_lattice(tmp_path, capsys):
    pts = tmp_path / "p.pt"
    torch.save(torch.full((4, 2), 0.3, dtype=torch.float64), pts)
    assert main(["nll", "--data", "eight_gaussians", "--points", str(pts), "--levels", "17", "--bound", "discrete",
                 "--steps", "4", "--no-ode"]) == 2
    err = capsys.readouterr().err
    assert "17-level lattice" in err
