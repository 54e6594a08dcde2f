"""Sliced and exact 2-Wasserstein distances against closed forms and an exact LP solver."""
import math

import numpy as np
import ot
import pytest
import torch

from scoresde.metrics import sliced_wasserstein, wasserstein1d_sq, wasserstein2


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_1d_equal_sizes_is_sorted_matching_and_translation():
    g = _gen(1)
    u = torch.randn(300, 3, generator=g, dtype=torch.float64)
    c = torch.tensor([0.0, 0.5, -2.0], dtype=torch.float64)
    # W2 between a sample and its translate is exactly the translation
    torch.testing.assert_close(wasserstein1d_sq(u, u + c), c**2, rtol=0, atol=1e-12)
    # and it does not depend on the order of the points
    perm = torch.randperm(300, generator=g)
    torch.testing.assert_close(wasserstein1d_sq(u[perm], u), torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("n,m", [(7, 13), (50, 20), (31, 32)])
def test_1d_unequal_sizes_match_exact_lp(n, m):
    g = _gen(n * m)
    u = torch.randn(n, 1, generator=g, dtype=torch.float64)
    v = 0.7 * torch.randn(m, 1, generator=g, dtype=torch.float64) + 0.3
    cost = (u - v.T) ** 2
    lp = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), cost.numpy())
    # both are exact: the only difference is rounding in sums of ~n*m terms
    assert float(wasserstein1d_sq(u, v)[0]) == pytest.approx(lp, rel=1e-10, abs=1e-12)


def test_exact_w2_of_a_translate_is_the_shift_length():
    g = _gen(2)
    x = torch.randn(200, 4, generator=g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    # the translation is an optimal map between x and x + c (it is the gradient of a convex function)
    assert wasserstein2(x, x + c) == pytest.approx(float(c.norm()), rel=1e-9)
    # the LP optimum is 0 up to rounding of ~1e-16 in the summed costs, and W2 is its square root
    assert wasserstein2(x, x[torch.randperm(200, generator=g)]) == pytest.approx(0.0, abs=1e-7)


def test_sliced_of_a_translate_matches_the_sphere_average():
    # every projection gives W2^2 = (theta . c)^2 exactly, and E_theta (theta . c)^2 = |c|^2 / D
    g = _gen(3)
    d, p = 3, 4000
    x = torch.randn(100, d, generator=g, dtype=torch.float64)
    c = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + c, n_projections=p, generator=_gen(4))
    # (theta . c)^2 / |c|^2 = cos^2 of the angle, with mean 1/D and variance 2(D-1)/(D^2 (D+2)) on S^{D-1};
    # five standard errors of the Monte-Carlo mean bound the relative error of SW^2
    rel_sd = math.sqrt(2 * (d - 1) / (d + 2)) / math.sqrt(p)
    assert sw**2 / (float(c.norm()) ** 2 / d) == pytest.approx(1.0, abs=5 * rel_sd)


def test_sliced_is_bounded_by_exact_and_reproducible():
    g = _gen(5)
    x = torch.randn(150, 5, generator=g, dtype=torch.float64)
    y = torch.randn(120, 5, generator=g, dtype=torch.float64) * 1.5 + 0.2
    sw = sliced_wasserstein(x, y, 64, _gen(6))
    # a projection is 1-Lipschitz, so each sliced term is at most W2^2, and so is their mean
    assert 0 < sw <= wasserstein2(x, y) + 1e-12
    assert sw == sliced_wasserstein(x, y, 64, _gen(6))
    # float32 inputs give the same value to float32 precision
    assert sliced_wasserstein(x.float(), y.float(), 64, _gen(6)) == pytest.approx(sw, rel=1e-4)


def test_sliced_noise_floor_shrinks_with_sample_size():
    # two independent samples of one Gaussian: E W2^2 ~ c log log n / n in 1-D (Bobkov & Ledoux 2019,
    # sec. 6), so quadrupling n divides SW by 2 sqrt(loglog 1000 / loglog 250) ~ 1.88. Averaged over
    # 4 pairs the ratio lies well inside (1.4, 2.6); a bias that does not shrink would give ~1.
    def floor(n):
        vals = []
        for s in range(4):
            a = torch.randn(n, 2, generator=_gen(100 + s), dtype=torch.float64)
            b = torch.randn(n, 2, generator=_gen(200 + s), dtype=torch.float64)
            vals.append(sliced_wasserstein(a, b, 128, _gen(7)))
        return sum(vals) / len(vals)
    assert 1.4 < floor(250) / floor(1000) < 2.6


def test_images_are_flattened():
    g = _gen(8)
    x = torch.randn(40, 1, 2, 2, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, x + 1.0, 16, _gen(0)) == pytest.approx(
        sliced_wasserstein(x.flatten(1), x.flatten(1) + 1.0, 16, _gen(0)))
    assert wasserstein2(x, x + 1.0) == pytest.approx(2.0)


@pytest.mark.parametrize("call,match", [
    (lambda: sliced_wasserstein(torch.zeros(5), torch.zeros(5, 1)), "x: expected shape"),
    (lambda: sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3)), "y: dimension 3"),
    (lambda: sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), n_projections=0), "n_projections"),
    (lambda: sliced_wasserstein(torch.full((5, 2), float("nan")), torch.zeros(5, 2)), "x: contains non-finite"),
    (lambda: wasserstein2(torch.zeros(5, 2, dtype=torch.long), torch.zeros(5, 2)), "x: expected a floating"),
    (lambda: wasserstein2([[0.0]], torch.zeros(1, 1)), "x: expected a tensor"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
