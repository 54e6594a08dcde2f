"""Bad input to the SDE constructors and evaluators: a named TypeError/ValueError, never a plausible number.

Each row is (call, exception type, the words the message must contain: the argument and the value).
The second half checks that the checks cost nothing in correctness: in-domain values are unchanged,
and the domain ends are where the closed forms stop being float64 numbers.
"""
import math

import pytest
import torch
from _named_error import assert_named_error

import scoresde as sd
from scoresde.sde import sde_arguments

NAN, INF = float("nan"), float("inf")
X = torch.zeros(3, 2, dtype=torch.float64)

CONSTRUCTORS = [
    # wrong types are refused, not stored or coerced
    (lambda: sd.VPSDE(beta_min="0.1"), TypeError, ["beta_min", "'0.1'"]),
    (lambda: sd.VPSDE(beta_min=True), TypeError, ["beta_min", "True"]),
    (lambda: sd.VPSDE(beta_max=None), TypeError, ["beta_max", "None"]),
    (lambda: sd.SubVPSDE(T="1"), TypeError, ["T", "'1'"]),
    (lambda: sd.VESDE(sigma_max=[50.0]), TypeError, ["sigma_max"]),
    (lambda: sd.CosineVPSDE(s="0.008"), TypeError, ["s", "'0.008'"]),
    (lambda: sd.FlowMatchingSDE(t_min=False), TypeError, ["t_min", "False"]),
    (lambda: sd.DiscreteVPSDE(betas="linear"), TypeError, ["betas", "str"]),
    (lambda: sd.DiscreteVPSDE(betas=[[0.1, "a"]]), TypeError, ["betas"]),
    (lambda: sd.DiscreteVPSDE(t_min="0.01"), TypeError, ["t_min"]),
    # values out of range
    (lambda: sd.VPSDE(beta_min=NAN), ValueError, ["beta_min", "nan"]),
    (lambda: sd.VPSDE(T=INF), ValueError, ["T", "inf"]),
    (lambda: sd.VESDE(sigma_min=-1.0), ValueError, ["sigma_min", "-1.0"]),
    (lambda: sd.CosineVPSDE(T=1.2), ValueError, ["T", "1.2"]),
    (lambda: sd.DiscreteVPSDE(betas=[0.5, NAN]), ValueError, ["betas"]),
    # schedules that leave float64: refused when built, naming the parameters
    (lambda: sd.VPSDE(beta_max=1e4), ValueError, ["beta_max=10000.0", "alpha(T)", "underflows"]),
    (lambda: sd.SubVPSDE(beta_max=1e4), ValueError, ["beta_max=10000.0", "alpha(T)"]),
    (lambda: sd.VPSDE(T=30.0), ValueError, ["T=30.0", "alpha(T)"]),
    (lambda: sd.VESDE(T=100.0), ValueError, ["T=100.0", "sigma(T)^2", "overflows"]),
    (lambda: sd.VESDE(sigma_max=1e300, sigma_min=1e-300), ValueError, ["sigma_max=1e+300", "sigma(T)"]),
    (lambda: sd.DiscreteVPSDE(betas=torch.full((1000,), 0.9)), ValueError, ["betas", "alpha(T)"]),
    # unknown arguments list the allowed ones
    (lambda: sd.make_sde("ve", beta_max=3.0), ValueError, ["beta_max", "sigma_min, sigma_max, T, t_min"]),
    (lambda: sd.make_sde("vp", **{"beta-max": 3.0}), ValueError, ["beta-max", "beta_min, beta_max"]),
]

EVALUATORS = [
    (lambda: sd.VPSDE().sigma(-0.5), ValueError, ["t", "-0.5", "[0, inf)"]),
    (lambda: sd.VPSDE().alpha(torch.tensor([0.5, -1e-3])), ValueError, ["t", "-0.001"]),
    (lambda: sd.VPSDE().alpha_sigma(NAN), ValueError, ["t", "nan"]),
    (lambda: sd.SubVPSDE().lam(-2.0), ValueError, ["t", "-2.0"]),
    (lambda: sd.VESDE().sigma(100.0), ValueError, ["t", "100.0", "VESDE"]),
    (lambda: sd.VESDE().alpha(-1.0), ValueError, ["t", "-1.0"]),
    (lambda: sd.CosineVPSDE().alpha_sigma(1.5), ValueError, ["t", "1.5", "[0, 1]"]),
    (lambda: sd.FlowMatchingSDE().alpha_sigma(1.5), ValueError, ["t", "1.5", "[0, 1]"]),
    (lambda: sd.FlowMatchingSDE().sigma(INF), ValueError, ["t", "inf"]),
    (lambda: sd.DiscreteVPSDE().lam(1.01), ValueError, ["t", "1.01"]),
    (lambda: sd.VPSDE().t_of_lam(NAN), ValueError, ["lam", "nan"]),
    (lambda: sd.VESDE().t_of_lam(torch.tensor([0.0, INF])), ValueError, ["lam", "inf"]),
    (lambda: sd.FlowMatchingSDE().t_of_lam(-INF), ValueError, ["lam", "-inf"]),
    # the process lives on [0, T]
    (lambda: sd.VPSDE().marginal(X, 1.5), ValueError, ["t", "1.5", "T=1.0"]),
    (lambda: sd.VPSDE().drift(X, -0.1), ValueError, ["t", "-0.1"]),
    # shapes and types at the boundary
    (lambda: sd.VPSDE().marginal(X, torch.rand(4)), ValueError, ["t", "(4,)", "(3,)"]),
    (lambda: sd.VPSDE().drift(X, torch.rand(2, 3)), ValueError, ["t", "(2, 3)"]),
    (lambda: sd.VPSDE().perturb(X, torch.rand(5), torch.zeros_like(X)), ValueError, ["t", "(5,)"]),
    (lambda: sd.VPSDE().perturb(X, 0.5, torch.zeros(3, 3)), ValueError, ["noise", "(3, 3)"]),
    (lambda: sd.VPSDE().perturb([[0.0, 0.0]], 0.5, X), TypeError, ["x0", "list"]),
    (lambda: sd.VPSDE().marginal(torch.zeros(3, 2, dtype=torch.long), 0.5), ValueError, ["x0", "torch.int64"]),
    (lambda: sd.VPSDE().drift(1.0, 0.5), TypeError, ["x", "float"]),
    (lambda: sd.VPSDE().prior_sample((-1, 2)), ValueError, ["shape", "(-1, 2)", "non-negative"]),
    (lambda: sd.VPSDE().prior_sample((2.5, 2)), TypeError, ["shape", "(2.5, 2)"]),
]


@pytest.mark.parametrize("call, exc, words", CONSTRUCTORS + EVALUATORS)
def test_bad_input_is_a_named_error(call, exc, words):
    assert_named_error(call, exc, words)


@pytest.mark.parametrize("name", sorted(sd.SDES))
def test_every_sde_names_its_arguments(name):
    allowed = sde_arguments(sd.SDES[name])
    assert allowed and all(isinstance(a, str) for a in allowed)
    with pytest.raises(ValueError, match="not_an_argument") as info:
        sd.make_sde(name, not_an_argument=1.0)
    assert all(a in str(info.value) for a in allowed)


def test_in_domain_evaluations_are_unchanged(any_sde):
    # the checks only look: at times inside [0, T] every evaluator returns what the closed form gives
    t = torch.linspace(any_sde.t_min, any_sde.T, 7, dtype=torch.float64)
    alpha, sigma = any_sde.alpha_sigma(t)
    torch.testing.assert_close(alpha, torch.exp(any_sde.log_alpha(t)), rtol=0, atol=0)
    torch.testing.assert_close(any_sde.lam(t), any_sde.log_alpha(t) - any_sde.log_sigma(t), rtol=0, atol=0)
    torch.testing.assert_close(any_sde.t_of_lam(any_sde.lam(t)), t, rtol=1e-9, atol=1e-12)
    assert any_sde.domain[0] == 0 and any_sde.domain[1] >= any_sde.T


@pytest.mark.parametrize("make", [sd.VPSDE, sd.SubVPSDE, sd.VESDE, sd.CosineVPSDE, sd.FlowMatchingSDE])
def test_domain_end_is_where_the_closed_form_stops(make):
    sde = make()
    lo, hi = sde.domain
    if math.isinf(hi):  # VP, sub-VP: alpha decays to 0 and sigma to its limit, both finite for all t >= 0
        t = torch.tensor([0.0, 1e3, 1e150], dtype=torch.float64)
        a, s = sde.alpha_sigma(t)
        assert torch.isfinite(a).all() and torch.isfinite(s).all()
        return
    a, s = sde.alpha_sigma(torch.tensor([lo, hi], dtype=torch.float64))
    assert torch.isfinite(s).all() and (a >= 0).all()
    if isinstance(sde, sd.VESDE):
        # sigma(t_max)^2 = e^700 up to rounding: the largest value the check lets through (g^2 ~ sigma^2)
        assert float(torch.log(s[1])) == pytest.approx(350.0, rel=1e-12)
    with pytest.raises(ValueError, match="t: times must lie"):
        sde.sigma(hi * (1 + 1e-9))


def test_float64_limit_is_a_boundary_not_a_guess():
    # log alpha(T) = -(beta_max - beta_min)/4 - beta_min/2 at T = 1: the constructor accepts -699 and refuses -701
    beta_min = 0.1
    ok = 4 * (699 - beta_min / 2) + beta_min
    bad = 4 * (701 - beta_min / 2) + beta_min
    assert float(sd.VPSDE(beta_max=ok).log_alpha(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(-699)
    with pytest.raises(ValueError, match="beta_max"):
        sd.VPSDE(beta_max=bad)


def test_adaptive_pf_ode_never_leaves_the_interval():
    # torchdiffeq's first-step probe evaluates the drift at T - h0 for a guessed h0 (about T - 30 here,
    # far below t = 0, where alpha and sigma are undefined); solve() evaluates it at the end instead
    sde, mix = sd.VPSDE(), sd.toy.mixture("eight_gaussians")
    seen = []

    def score(x, t):
        seen.append(float(t))
        return mix.score(x, t, sde)

    x = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sde.probability_flow(score).solve(x, torch.tensor([sde.T, sde.t_min], dtype=torch.float64),
                                            rtol=1e-6, atol=1e-6)
    assert torch.isfinite(out).all()
    assert min(seen) >= sde.t_min and max(seen) <= sde.T
