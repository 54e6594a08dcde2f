"""Time grids: shape, ends, monotonicity, and the spacing each one promises."""
import pytest
import torch

import scoresde as sd
from scoresde import grids


@pytest.mark.parametrize("name", grids.available())
def test_named_grids(any_sde, name):
    times = grids.make_grid(name, any_sde, 12)
    assert times.shape == (13,) and times.dtype == torch.float64
    assert float(times[0]) == pytest.approx(any_sde.T, rel=1e-12)
    assert float(times[-1]) == pytest.approx(any_sde.t_min, rel=1e-12)
    assert (times[1:] < times[:-1]).all()


def test_spacings(any_sde):
    lam = any_sde.lam(grids.make_grid("logsnr", any_sde, 10))
    torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(10), rtol=1e-8, atol=1e-10)
    t = grids.make_grid("uniform", any_sde, 10)
    torch.testing.assert_close(t.diff(), t.diff().mean().expand(10))
    q = grids.make_grid("quadratic", any_sde, 10).sqrt()
    torch.testing.assert_close(q.diff(), q.diff().mean().expand(10))
    # Karras: s = sigma/alpha to the power 1/rho is uniform
    s = torch.exp(-any_sde.lam(grids.make_grid("karras", any_sde, 10))) ** (1 / 7)
    torch.testing.assert_close(s.diff(), s.diff().mean().expand(10), rtol=1e-7, atol=1e-10)


def test_custom_ends_and_user_grid():
    sde = sd.VPSDE()
    times = grids.make_grid("uniform", sde, 4, t_min=0.2, T=0.6)
    torch.testing.assert_close(times, torch.tensor([0.6, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64))
    user = grids.make_grid(torch.tensor([0.9, 0.5, 0.1]), sde, None)
    assert user.dtype == torch.float64 and user.shape == (3,)
    assert torch.equal(grids.make_grid(lambda s, n, lo, hi: torch.linspace(hi, lo, n + 1, dtype=torch.float64), sde, 3),
                       torch.linspace(1.0, 1e-3, 4, dtype=torch.float64))


@pytest.mark.parametrize("grid, steps, kwargs, match", [
    ("uniform", 0, {}, "steps"),
    ("uniform", 2.5, {}, "steps"),
    ("bogus", 5, {}, "logsnr"),
    ("uniform", 5, {"t_min": 0.0}, "t_min"),
    ("uniform", 5, {"t_min": 2.0}, "t_min"),
    (torch.tensor([0.5, 0.6]), None, {}, "decreasing"),
    (torch.tensor([0.5, 0.0]), None, {}, r"\(0, T"),
    (torch.tensor([0.5, float("nan")]), None, {}, "finite"),
    (torch.tensor([0.9, 0.5, 0.1]), 5, {}, "steps"),
])
def test_bad_grids(grid, steps, kwargs, match):
    with pytest.raises(ValueError, match=match):
        grids.make_grid(grid, sd.VPSDE(), steps, **kwargs)


def test_duplicate_grid_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        grids.register_grid("uniform")(lambda *a: None)
