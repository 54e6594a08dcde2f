"""The boundary's pieces: the coefficient record, the conversion table, failures kept as data (issue 17)."""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.checks import CHECK_FINITE, check_bool, check_count, check_finite_number, check_shape
from scoresde.models import FROM_PAIR, PARAMETERIZATIONS, TO_EPS, TO_X0


def _interior_times(sde, n=7):
    return torch.linspace(sde.t_min + 0.05 * (sde.T - sde.t_min), 0.95 * sde.T, n, dtype=torch.float64)


# ----- one coefficient record ---------------------------------------------------------------------
def test_the_record_holds_the_derivatives_of_alpha_and_sigma(any_sde):
    # d alpha/dt and d sigma/dt against central differences of the closed forms (float64; h = 1e-6 gives
    # an O(h^2) truncation near 1e-12 and a rounding error near 1e-10 relative to the values)
    t = _interior_times(any_sde)
    if isinstance(any_sde, sd.DiscreteVPSDE):  # piecewise linear log alpha: stay inside one segment
        t = (torch.floor(t * any_sde.N) + 0.5) / any_sde.N
    c, h = any_sde.coefficients(t), 1e-6
    a_p, s_p = any_sde.alpha_sigma(t + h)
    a_m, s_m = any_sde.alpha_sigma(t - h)
    torch.testing.assert_close(c.d_alpha, (a_p - a_m) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(c.d_sigma, (s_p - s_m) / (2 * h), rtol=1e-6, atol=1e-8)
    alpha, sigma = any_sde.alpha_sigma(t)
    torch.testing.assert_close(c.alpha, alpha, rtol=0, atol=0)
    torch.testing.assert_close(c.sigma, sigma, rtol=0, atol=0)
    torch.testing.assert_close(c.lam, torch.log(alpha / sigma), rtol=1e-12, atol=1e-12)


def test_the_public_record_checks_its_times_and_the_private_one_does_not():
    sde = sd.FlowMatchingSDE()
    with pytest.raises(ValueError, match=r"t: times must lie in \[0, 1\]"):
        sde.coefficients(torch.tensor([0.5, 1.5], dtype=torch.float64))
    assert sde._coefficients(torch.tensor([1.5], dtype=torch.float64)).sigma.item() == 1.5  # no check, no sync


# ----- one conversion table -----------------------------------------------------------------------
@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_the_table_round_trips_every_parameterisation(any_sde, p):
    # from a consistent pair (x0, eps) at x = alpha x0 + sigma eps to p, and back: the same pair
    g = torch.Generator().manual_seed(0)
    t = _interior_times(any_sde)[:, None]
    x0, eps = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    c = any_sde._coefficients(t)
    x = c.alpha * x0 + c.sigma * eps
    out = FROM_PAIR[p](x0, eps, c)
    torch.testing.assert_close(TO_EPS[p](out, x, c), eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(TO_X0[p](out, x, c), x0, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
def test_the_wrapper_views_agree_with_the_table(p):
    # ScoreModel's five views of one network are the table's conversions of its output
    sde = sd.VPSDE()
    net = lambda x, t: torch.sin(x) + t[:, None]  # noqa: E731
    model = sd.ScoreModel(net, sde, p)
    x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(4, 2)
    t = 0.3
    c = sde.coefficients(torch.tensor(t, dtype=torch.float64))
    out = net(x, torch.full((4,), t, dtype=torch.float64))
    eps, x0 = TO_EPS[p](out, x, c), TO_X0[p](out, x, c)
    torch.testing.assert_close(model.eps(x, t), eps)
    torch.testing.assert_close(model.x0(x, t), x0)
    torch.testing.assert_close(model.score(x, t), -eps / c.sigma)
    torch.testing.assert_close(model.v(x, t), FROM_PAIR["v"](x0, eps, c))
    torch.testing.assert_close(model.velocity(x, t), FROM_PAIR["velocity"](x0, eps, c))


# ----- one policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("call, exc", [
    (lambda: check_count("n", 2.5), TypeError), (lambda: check_count("n", True), TypeError),
    (lambda: check_count("n", 0), ValueError), (lambda: check_count("n", 11, maximum=10), ValueError),
    (lambda: check_bool("flag", "false"), TypeError), (lambda: check_bool("flag", 0), TypeError),
    (lambda: check_finite_number("x", "1"), TypeError), (lambda: check_finite_number("x", math.nan), ValueError),
    (lambda: check_shape("shape", (2.0, 3)), TypeError), (lambda: check_shape("shape", (2,)), ValueError),
])
def test_a_wrong_type_is_a_type_error_and_a_wrong_value_a_value_error(call, exc):
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    assert msg.split(":")[0] in ("n", "flag", "x", "shape") and "expected" in msg and "got" in msg, msg


# ----- failures as data -----------------------------------------------------------------------------
def _nan_at_call(k, parameterization="x0"):
    calls = []

    def fn(x, t):
        calls.append(1)
        out = torch.zeros_like(x)
        if len(calls) == k:
            out[3, 1] = math.nan
        return out

    return sd.ScoreModel(fn, sd.VPSDE(), parameterization)


def _run(model, check_finite, **kw):
    args = dict(method="ddim", steps=6, shape=(8, 2), generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return sd.sample(model, model.sde, args.pop("method"), args.pop("steps"), check_finite=check_finite, **args)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_a_bad_model_is_reported_at_the_end_as_a_per_call_check_would(k):
    with pytest.raises(sd.models.NonFiniteModelOutput) as at_once:
        _run(_nan_at_call(k), "step")
    with pytest.raises(sd.models.NonFiniteModelOutput) as at_end:
        _run(_nan_at_call(k), "end")
    assert str(at_end.value) == str(at_once.value)
    assert f"during step {k - 1} " in str(at_end.value) and "fn returned NaN/inf at t = " in str(at_end.value)


def test_an_unstable_step_is_reported_at_the_end_as_a_per_step_check_would():
    model = sd.ScoreModel(lambda x, t: torch.full_like(x, 1e308), sd.VPSDE(), "eps")
    msgs = []
    for mode in ("step", "end"):
        with pytest.raises(FloatingPointError) as e:
            _run(model, mode, steps=3, dtype=torch.float64)
        assert not isinstance(e.value, sd.models.NonFiniteModelOutput)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] and "state became non-finite after step 0" in msgs[1]


def test_the_final_denoising_step_is_named():
    with pytest.raises(sd.models.NonFiniteModelOutput, match="in the final denoising step: the model"):
        _run(_nan_at_call(7), "end", final_denoise=True)


def test_record_keeps_the_failure_in_the_stats_and_returns_the_samples():
    r = _run(_nan_at_call(4), "record")
    assert r.stats["non_finite"]["kind"] == "model" and r.stats["non_finite"]["step"] == 3
    assert r.stats["non_finite"]["call"] == 4 and not torch.isfinite(r.samples).all()
    assert _run(_nan_at_call(99), "record").stats["non_finite"] is None  # a finite run records None
    assert "non_finite" not in _run(_nan_at_call(4), "off").stats


def test_check_finite_is_checked():
    with pytest.raises(ValueError, match=f"check_finite: unknown 'never'; allowed: {', '.join(CHECK_FINITE)}"):
        _run(_nan_at_call(99), "never")
