"""Bad input to GaussianMixture and the toy datasets: a named TypeError/ValueError, never NaN or a truncated count."""
import numpy as np
import pytest
import torch
from _named_error import assert_named_error

from scoresde import toy
from scoresde.toy import GaussianMixture

NAN, INF = float("nan"), float("inf")
MIX = toy.mixture("eight_gaussians")
GEN = torch.Generator().manual_seed(0)

CASES = [
    # the mixture's parameters
    (lambda: GaussianMixture([0.5, 0.5], [[0.0, NAN], [1.0, 1.0]], 1.0), ValueError, ["means", "nan"]),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0, INF], [1.0, 1.0]], 1.0), ValueError, ["means", "inf"]),
    (lambda: GaussianMixture([NAN, 0.5], [[0.0, 0.0], [1.0, 1.0]], 1.0), ValueError, ["weights", "nan"]),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, INF]), ValueError, ["covs", "finite"]),
    (lambda: GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [1.0, -1.0]), ValueError, ["covs", "positive"]),
    (lambda: GaussianMixture([0.3, 0.3], [[0.0, 0.0], [1.0, 1.0]], 1.0), ValueError, ["weights", "sum"]),
    (lambda: GaussianMixture([1.0], [0.0, 0.0], 1.0), ValueError, ["means", "(K, D)"]),
    (lambda: GaussianMixture([], np.zeros((0, 2)), 1.0), ValueError, ["means", "(0, 2)"]),
    (lambda: GaussianMixture("uniform", [[0.0, 0.0]], 1.0), TypeError, ["weights", "str"]),
    (lambda: GaussianMixture([1.0], None, 1.0), TypeError, ["means", "NoneType"]),
    (lambda: GaussianMixture([1.0], [["a", "b"]], 1.0), TypeError, ["means"]),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], "big"), TypeError, ["covs", "str"]),
    # sampling: counts are integers, generators are torch.Generators, dtypes are floating
    (lambda: MIX.sample(2.5), TypeError, ["n", "2.5"]),
    (lambda: MIX.sample(2.0), TypeError, ["n", "2.0"]),
    (lambda: MIX.sample(True), TypeError, ["n", "True"]),
    (lambda: MIX.sample(0), ValueError, ["n", "0"]),
    (lambda: MIX.sample(-3), ValueError, ["n", "-3"]),
    (lambda: MIX.sample(4, generator=np.random.default_rng(0)), TypeError, ["generator", "Generator"]),
    (lambda: MIX.sample(4, generator=0), TypeError, ["generator", "int"]),
    (lambda: MIX.sample(4, dtype=torch.int64), TypeError, ["dtype", "torch.int64"]),
    (lambda: MIX.sample(4, return_labels="yes"), TypeError, ["return_labels", "'yes'"]),
    # evaluation at bad points or times
    (lambda: MIX.score(torch.zeros(3, 3), 0.5, _vp()), ValueError, ["x", "(3, 3)", "(B, 2)"]),
    (lambda: MIX.score([[0.0, 0.0]], 0.5, _vp()), TypeError, ["x", "list"]),
    (lambda: MIX.log_prob(torch.zeros(3, 2, dtype=torch.long)), TypeError, ["x", "torch.int64"]),
    (lambda: MIX.score(torch.zeros(3, 2), -0.5, _vp()), ValueError, ["t", "-0.5"]),
    (lambda: MIX.score(torch.zeros(3, 2), torch.rand(4), _vp()), ValueError, ["t", "(4,)"]),
    (lambda: MIX.marginal_moments(NAN, _vp()), ValueError, ["t", "nan"]),
    (lambda: MIX.component_score(torch.zeros(3, 2), 0.5, _vp(), 8), ValueError, ["k", "8"]),
    # the datasets
    (lambda: toy.sample("eight_gaussians", 2.5, GEN), TypeError, ["n", "2.5"]),
    (lambda: toy.sample("rings", "10", GEN), TypeError, ["n", "'10'"]),
    (lambda: toy.sample("nope", 10), ValueError, ["dataset", "nope", "eight_gaussians"]),
    (lambda: toy.sample(3, 10), ValueError, ["dataset", "3"]),
    (lambda: toy.mixture("checkerboard"), ValueError, ["mixture", "checkerboard", "eight_gaussians"]),
    (lambda: toy.checkerboard(0), ValueError, ["n", "0"]),
    (lambda: toy.two_moons(10, noise=-0.1), ValueError, ["noise", "-0.1"]),
    (lambda: toy.swiss_roll(10, noise="a lot"), TypeError, ["noise", "'a lot'"]),
    (lambda: toy.rings(10, generator=7), TypeError, ["generator", "int"]),
    (lambda: toy.pinwheel(10, n_arms=2.5), TypeError, ["n_arms", "2.5"]),
    (lambda: toy.spirals(10.0), TypeError, ["n", "10.0"]),
    (lambda: toy.eight_gaussians_mixture(std=0.0), ValueError, ["std", "0.0"]),
    (lambda: toy.anisotropic_mixture(dim=0), ValueError, ["dim", "0"]),
    (lambda: toy.anisotropic_mixture(dim=4, n_components=1.5), TypeError, ["n_components", "1.5"]),
    (lambda: toy.anisotropic_mixture(seed=2**64), ValueError, ["seed", str(2**64), str(2**63 - 1)]),
]


def _vp():
    import scoresde as sd

    return sd.VPSDE()


@pytest.mark.parametrize("call, exc, words", CASES)
def test_bad_input_is_a_named_error(call, exc, words):
    assert_named_error(call, exc, words)


@pytest.mark.parametrize("name", toy.available())
def test_integer_like_counts_still_work(name):
    # NumPy and 0-d tensor integers are counts too, and give exactly what the Python int gives
    for n in (np.int64(5), torch.tensor(5)):
        x = toy.sample(name, n, torch.Generator().manual_seed(1))
        assert torch.equal(x, toy.sample(name, 5, torch.Generator().manual_seed(1)))
