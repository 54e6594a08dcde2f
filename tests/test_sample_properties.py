"""Property-based test of ``sample()``'s arguments with hypothesis (issue 14): for generated shapes,
step counts, ends, grids, dtypes and registered methods (default options) on the exact oracle, either
a ``ValueError``/``TypeError`` naming an argument, or a finite result of the right shape and dtype.
Never another exception, never NaN."""
import math

import pytest
import torch

import scoresde as sd
from scoresde import grids, toy
from scoresde.samplers import available, sample

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ARGUMENTS = ("shape", "steps", "t_min", "T", "grid", "dtype", "x_T", "method")
VP = sd.VPSDE()
MIX = toy.gaussian_mixture_2d()



def mostly(good, bad):
    """Four draws in five from ``good``, so that whole valid calls (and runs) are common."""
    return st.integers(0, 4).flatmap(lambda k: bad if k == 0 else good)


bad_sizes = st.one_of(st.integers(-2, 0), st.floats(0.5, 3.5), st.booleans())
shapes = mostly(st.tuples(st.integers(1, 4), st.just(2)),
                st.one_of(st.tuples(bad_sizes, st.just(2)), st.tuples(st.integers(1, 4), bad_sizes),
                          st.tuples(st.integers(1, 4)), st.integers(1, 4), st.just("4,2")))
steps = mostly(st.integers(1, 12), st.one_of(st.integers(-1, 0), st.floats(allow_nan=True, allow_infinity=True),
                                             st.booleans(), st.none(), st.just(10**12)))
ends = mostly(st.one_of(st.none(), st.floats(1e-4, 1.0)), st.one_of(st.floats(-0.5, 1.5), st.just(math.nan)))
dtypes = mostly(st.sampled_from([None, torch.float32, torch.float64]), st.sampled_from([torch.int64, torch.bool]))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(shape=shapes, steps=steps, t_min=ends, T=ends, grid=st.sampled_from(grids.available()), dtype=dtypes,
       method=st.sampled_from(available()), seed=st.integers(0, 2**31 - 1))
def test_sample_either_names_an_argument_or_returns_finite_samples(shape, steps, t_min, T, grid, dtype, method, seed):
    model = MIX.model(VP)
    try:
        res = sample(model, VP, method, steps, shape=shape, t_min=t_min, T=T, grid=grid, dtype=dtype,
                     generator=torch.Generator().manual_seed(seed))
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert any(msg.startswith(a) or f"{a}:" in msg or f"{a}=" in msg for a in ARGUMENTS), msg
        assert model.nfe == 0, msg
        return
    assert res.samples.shape == tuple(shape)
    assert res.samples.dtype == (dtype or torch.float32)
    assert bool(torch.isfinite(res.samples).all())
