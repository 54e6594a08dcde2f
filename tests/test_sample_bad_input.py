"""Bad input at ``sample()``'s boundary: each case raises the named exception type, with the argument's
name in the message, before any model call (issue 14)."""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.samplers import brownian_path, sample
from scoresde.samplers.base import MAX_STEPS

VP = sd.VPSDE()


def _wrong_length_grid(sde, steps, t_min, T):
    return torch.linspace(T, t_min, steps + 2, dtype=torch.float64)


def _ignores_t_min(sde, steps, t_min, T):
    return torch.linspace(T, 1e-2, steps + 1, dtype=torch.float64)


# (id, overrides of the good call, exception type, the argument the message must name)
CASES = [
    # one policy (scoresde.checks): a value of the wrong type (a float or bool count, a list for a tensor) is a
    # TypeError, a value of the right type that is not allowed a ValueError
    ("shape-int", {"shape": 16}, TypeError, "shape"),
    ("shape-str", {"shape": "16,2"}, TypeError, "shape"),
    ("shape-negative", {"shape": (16, -2)}, ValueError, "shape"),
    ("shape-float", {"shape": (16.0, 2)}, TypeError, "shape"),
    ("shape-bool", {"shape": (True, 2)}, TypeError, "shape"),
    ("shape-no-event", {"shape": (16,)}, ValueError, "shape"),
    ("shape-empty-batch", {"shape": (0, 2)}, ValueError, "shape"),
    ("dtype-int", {"dtype": torch.int64}, ValueError, "dtype"),
    ("dtype-bool", {"dtype": torch.bool}, ValueError, "dtype"),
    ("dtype-str", {"dtype": "float32"}, TypeError, "dtype"),
    ("steps-fraction", {"steps": 2.5}, TypeError, "steps"),
    ("steps-integral-float", {"steps": 4.0}, TypeError, "steps"),
    ("steps-nan", {"steps": math.nan}, TypeError, "steps"),
    ("steps-inf", {"steps": math.inf}, TypeError, "steps"),
    ("steps-bool", {"steps": True}, TypeError, "steps"),
    ("steps-huge", {"steps": 10**12}, ValueError, "steps"),
    ("steps-above-max", {"steps": MAX_STEPS + 1}, ValueError, "steps"),
    ("steps-zero", {"steps": 0}, ValueError, "steps"),
    ("steps-str", {"steps": "10"}, TypeError, "steps"),
    ("generator-numpy", {"generator": np.random.default_rng(0)}, TypeError, "generator"),
    ("generator-int", {"generator": 0}, TypeError, "generator"),
    ("brownian-batch", {"method": "euler_maruyama", "brownian": brownian_path(torch.tensor([1.0, 1e-3]), (3, 2))},
     ValueError, "brownian"),
    ("brownian-span", {"method": "euler_maruyama", "brownian": brownian_path(torch.tensor([0.5, 1e-3]), (4, 2))},
     ValueError, "brownian"),
    ("brownian-not-a-path", {"method": "euler_maruyama", "brownian": 3}, TypeError, "brownian"),
    ("x_T-empty-batch", {"shape": None, "x_T": torch.zeros(0, 2)}, ValueError, "x_T"),
    ("x_T-list", {"shape": None, "x_T": [[0.0, 0.0]]}, TypeError, "x_T"),
    ("grid-not-decreasing", {"steps": None, "grid": torch.tensor([1.0, 0.5, 0.7, 0.1])}, ValueError, "grid"),
    ("grid-repeated", {"steps": None, "grid": torch.tensor([1.0, 0.5, 0.5, 0.1])}, ValueError, "grid"),
    ("grid-above-T", {"steps": None, "grid": torch.tensor([1.5, 0.5, 0.1])}, ValueError, "grid"),
    ("grid-reaches-0", {"steps": None, "grid": torch.tensor([1.0, 0.5, 0.0])}, ValueError, "grid"),
    ("grid-nan", {"steps": None, "grid": torch.tensor([1.0, math.nan, 0.1])}, ValueError, "grid"),
    ("grid-and-other-T", {"steps": None, "grid": torch.tensor([0.9, 0.5, 0.1]), "T": 1.0}, ValueError, "T"),
    ("grid-and-other-t_min", {"steps": None, "grid": torch.tensor([0.9, 0.5, 0.1]), "t_min": 0.01}, ValueError,
     "t_min"),
    ("grid-callable-length", {"grid": _wrong_length_grid}, ValueError, "grid"),
    ("grid-callable-ignores-t_min", {"grid": _ignores_t_min}, ValueError, "grid"),
    ("grid-unknown-name", {"grid": "cosine-ish"}, ValueError, "grid"),
    ("T-nan", {"T": math.nan}, ValueError, "T"),
    ("T-str", {"T": "0.5"}, TypeError, "T"),
    ("T-above-sde", {"T": 2.0}, ValueError, "T"),
    ("T-negative", {"T": -0.5}, ValueError, "T"),
    ("t_min-bool", {"t_min": True}, TypeError, "t_min"),
    ("t_min-above-T", {"t_min": 0.6, "T": 0.5}, ValueError, "t_min"),
    ("final_denoise-str", {"final_denoise": "yes"}, TypeError, "final_denoise"),
    ("grad-int", {"grad": 1}, TypeError, "grad"),
    ("return_trajectory-none", {"return_trajectory": None}, TypeError, "return_trajectory"),
    ("method-unknown", {"method": "no_such"}, ValueError, "method"),
    ("option-unknown", {"not_an_option": 1}, ValueError, "not_an_option"),
]


@pytest.mark.parametrize("overrides, exc, arg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named_before_any_model_call(overrides, exc, arg):
    mix = toy.gaussian_mixture_2d()
    model = mix.model(VP)
    kw = {"method": "ddim", "steps": 4, "shape": (4, 2), "generator": torch.Generator().manual_seed(0)}
    kw.update(overrides)
    method = kw.pop("method")
    with pytest.raises(exc) as e:
        sample(model, VP, method, **kw)
    assert type(e.value) is exc
    assert arg in str(e.value), str(e.value)
    assert model.nfe == 0


def test_the_good_call_of_the_table_runs():
    model = toy.gaussian_mixture_2d().model(VP)
    res = sample(model, VP, "ddim", 4, shape=(4, 2), generator=torch.Generator().manual_seed(0))
    assert res.samples.shape == (4, 2) and bool(torch.isfinite(res.samples).all())


def test_the_generator_message_says_how_to_make_one():
    model = toy.gaussian_mixture_2d().model(VP)
    with pytest.raises(TypeError, match=r"torch\.Generator\(\)\.manual_seed\(7\)"):
        sample(model, VP, "ddim", 4, shape=(4, 2), generator=7)


@pytest.mark.parametrize("sde, T", [(sd.VESDE(), 0.5), (sd.VPSDE(), 0.3), (sd.SubVPSDE(), 0.5)])
def test_the_prior_follows_the_T_the_run_starts_from(sde, T):
    # x_T ~ N(0, sigma(T)^2 I) at the given T, not at sde.T: the std of 40000 draws is within 2% of
    # sigma(T) (its standard error is 0.35%)
    model = toy.gaussian_mixture_2d().model(sde)
    res = sample(model, sde, "ddim", 2, T=T, shape=(20000, 2), dtype=torch.float64, return_trajectory=True,
                 generator=torch.Generator().manual_seed(0))
    sigma_T = float(sde.sigma(torch.tensor(T, dtype=torch.float64)))
    assert sde.prior_std(T) == sigma_T and sde.prior_std() == float(sde.sigma(torch.tensor(sde.T, dtype=torch.float64)))
    assert float(res.trajectory[0].std()) == pytest.approx(sigma_T, rel=0.02)
    assert res.t_start == T
