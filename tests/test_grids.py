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


def _lin(n_points, hi, lo):
    return torch.linspace(hi, lo, n_points, dtype=torch.float64)


# A grid callable fn(sde, steps, t_min, T) is checked against what it was asked for, before any sampling.
@pytest.mark.parametrize("fn, exc, match", [
    (lambda sde, n, lo, hi: _lin(n, hi, lo), ValueError, r"grid: the callable returned 5 times for steps=5"),
    (lambda sde, n, lo, hi: _lin(n + 1, hi, 0.01), ValueError, r"grid: .*ends at 0\.01 where t_min=0\.001"),
    (lambda sde, n, lo, hi: _lin(n + 1, 0.9, lo), ValueError, r"grid: .*ends at 0\.9 where T=1\.0"),
    (lambda sde, n, lo, hi: _lin(n + 1, hi, lo).flip(0), ValueError, r"grid: .*not strictly decreasing"),
    (lambda sde, n, lo, hi: torch.cat([_lin(n, hi, lo), torch.tensor([lo], dtype=torch.float64)]), ValueError,
     r"grid: .*not strictly decreasing"),
    (lambda sde, n, lo, hi: torch.where(torch.arange(n + 1) == 2, float("nan"), _lin(n + 1, hi, lo)), ValueError,
     r"grid: .*non-finite"),
    (lambda sde, n, lo, hi: _lin(n + 1, hi, lo)[None], ValueError, r"grid: .*shape \(1, 6\).*1-D"),
    (lambda sde, n, lo, hi: "0.5,0.1", TypeError, r"grid: the callable returned str"),
    (lambda sde, n, lo, hi: None, TypeError, r"grid: the callable returned NoneType"),
])
def test_bad_grid_callables_are_refused(fn, exc, match):
    with pytest.raises(exc, match=match) as info:
        grids.make_grid(fn, sd.VPSDE(), 5)
    assert "steps + 1 = 6 finite times from T=1.0 to t_min=0.001" in str(info.value)  # what is allowed


def test_a_grid_callable_is_refused_before_sampling():
    calls = []
    model = sd.ScoreModel(lambda x, t: calls.append(t) or x, sd.VPSDE(), "eps")
    with pytest.raises(ValueError, match="grid: the callable returned 3 times"):
        sd.sample(model, sd.VPSDE(), "ddim", 4, shape=(2, 2), grid=lambda sde, n, lo, hi: _lin(3, hi, lo))
    assert calls == []


@pytest.mark.parametrize("name", ["karras", "quadratic", "uniform"])
def test_logits_of_grid_inverts_grid_from_logits(any_sde, name):
    # the log-SNR gap parametrisation of optimised grids and fitted solvers reproduces any grid it is given
    times = grids.make_grid(name, any_sde, 7)
    back = grids.grid_from_logits(any_sde, grids.logits_of_grid(any_sde, times), any_sde.t_min, any_sde.T)
    torch.testing.assert_close(back, times, rtol=1e-9, atol=1e-12)


def test_lam_from_logits_is_increasing_with_pinned_ends():
    w = torch.randn(9, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lam = grids.lam_from_logits(w, -5.0, 4.0)
    assert lam.shape == (10,) and float(lam[0]) == -5.0 and float(lam[-1]) == pytest.approx(4.0, abs=1e-14)
    assert (lam.diff() > 0).all()
    torch.testing.assert_close(grids.lam_from_logits(w + 7.0, -5.0, 4.0), lam)  # shift-invariant in w
