"""Property-based tests (hypothesis): for any generated input, a named ValueError/TypeError or a finite,
well-shaped result; never another exception, never NaN or inf.

Inputs mix the plausible with the hostile: NaN, infinities, signed zeros, huge and tiny magnitudes,
booleans, strings and None where numbers belong.
"""
import dataclasses
import json
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde as sd
from scoresde.config import TrainConfig
from scoresde.toy import GaussianMixture

# a fixed, fast budget by default; SCORESDE_HYPOTHESIS_EXAMPLES=2000 runs a longer random search
_EXAMPLES = os.environ.get("SCORESDE_HYPOTHESIS_EXAMPLES")
SETTINGS = settings(max_examples=int(_EXAMPLES or 60), deadline=None, derandomize=_EXAMPLES is None,
                    suppress_health_check=[HealthCheck.too_slow])

numbers = st.floats(allow_nan=True, allow_infinity=True, width=64)
reals = st.one_of(numbers, st.integers(-10**6, 10**6), st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 1.0, 2.0]))
hostile = st.one_of(reals, st.booleans(), st.none(), st.text(max_size=4), st.lists(st.floats(), max_size=2))


def _float_fields(cls):
    return [f.name for f in dataclasses.fields(cls) if f.init and f.type in ("float", float)]


def _check_named(err: Exception, names) -> None:
    assert isinstance(err, (TypeError, ValueError)), f"{type(err).__name__}: {err}"
    assert any(n in str(err) for n in names), f"no argument named in {err!r}"


@st.composite
def sde_arguments(draw):
    cls = draw(st.sampled_from([sd.VPSDE, sd.SubVPSDE, sd.VESDE, sd.CosineVPSDE, sd.FlowMatchingSDE]))
    kwargs = {}
    for name in _float_fields(cls):
        if draw(st.booleans()):
            kwargs[name] = draw(hostile if draw(st.integers(0, 4)) == 0 else reals)
    return cls, kwargs


@SETTINGS
@given(sde_arguments())
def test_sde_constructors(args):
    cls, kwargs = args
    try:
        sde = cls(**kwargs)
    except Exception as err:
        _check_named(err, _float_fields(cls))
        return
    t = torch.linspace(sde.t_min, sde.T, 9, dtype=torch.float64)
    alpha, sigma = sde.alpha_sigma(t)
    lam = sde.lam(t)
    for v in (alpha, sigma, lam, sde.f(t), sde.g2(t), sde.t_of_lam(lam)):
        assert v.shape == (9,) and v.dtype == torch.float64 and torch.isfinite(v).all()
    assert (alpha > 0).all() and (sigma > 0).all() and (lam[1:] < lam[:-1]).all()
    assert math.isfinite(sde.prior_std()) and sde.prior_std() > 0
    x0 = torch.ones(9, 2, dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    assert mean.shape == std.shape == (9, 2) and mean.dtype == torch.float64
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()


@SETTINGS
@given(sde_arguments(), st.one_of(reals, st.lists(reals, min_size=1, max_size=3)))
def test_sde_evaluators(args, times):
    cls, _ = args
    sde = cls()
    t = torch.tensor(times, dtype=torch.float64)
    for evaluate in (sde.alpha, sde.sigma, sde.lam, lambda s: sde.alpha_sigma(s)[1], sde.t_of_lam):
        try:
            out = evaluate(t)
        except Exception as err:
            _check_named(err, ["t:", "lam:"])
            continue
        assert out.shape == t.shape and out.dtype == torch.float64
        assert not torch.isnan(out).any()


@st.composite
def mixtures(draw):
    k, d = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    entries = st.one_of(st.floats(-1e3, 1e3), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    means = draw(st.lists(st.lists(entries, min_size=d, max_size=d), min_size=k, max_size=k))
    weights = draw(st.one_of(st.just([1.0 / k] * k), st.lists(st.one_of(st.floats(-1, 2), st.just(float("nan"))),
                                                                min_size=k, max_size=k)))
    variances = st.one_of(st.floats(1e-4, 1e2), st.sampled_from([0.0, -1.0, float("nan"), float("inf")]))
    covs = draw(st.one_of(variances, st.lists(variances, min_size=k, max_size=k),
                          st.lists(st.lists(variances, min_size=d, max_size=d), min_size=k, max_size=k)))
    return weights, means, covs


@SETTINGS
@given(mixtures(), st.sampled_from(sorted(sd.SDES)), st.integers(1, 20), st.sampled_from([torch.float32, torch.float64]))
def test_gaussian_mixture(params, sde_name, n, dtype):
    try:
        mix = GaussianMixture(*params)
    except Exception as err:
        _check_named(err, ["weights", "means", "covs"])
        return
    gen = torch.Generator().manual_seed(0)
    x = mix.sample(n, generator=gen, dtype=dtype)
    assert x.shape == (n, mix.dim) and x.dtype == dtype and torch.isfinite(x).all()
    sde = sd.make_sde(sde_name)
    t = torch.linspace(sde.t_min, sde.T, n, dtype=dtype)
    xt = sde.perturb(x, t, torch.randn(x.shape, generator=gen, dtype=dtype))
    score = mix.score(xt.double(), t.double(), sde)
    assert score.shape == (n, mix.dim) and torch.isfinite(score).all()
    assert torch.isfinite(mix.log_prob_t(xt.double(), t.double(), sde)).all()


config_fields = {
    "importance": hostile, "conditional": st.one_of(st.booleans(), st.text(max_size=5)),
    "steps": st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=3)),
    "lr": reals, "ema_decay": reals, "label_dropout": reals, "sigma_data": st.one_of(st.none(), reals),
    "sde": st.one_of(st.sampled_from(sorted(sd.SDES)), st.text(max_size=4)),
    "sde_kwargs": st.dictionaries(st.sampled_from(["beta_min", "beta_max", "T", "sigma_max", "s", "bogus"]),
                                  reals, max_size=2),
    "weighting": st.sampled_from(["sigma2", "likelihood", "min_snr", "snr", "SIGMA2", ""]),
    "batch_size": st.one_of(st.integers(-2, 4096), st.booleans()),
}


@SETTINGS
@given(st.fixed_dictionaries({}, optional=config_fields))
def test_train_config(fields):
    try:
        cfg = TrainConfig(**fields)
    except Exception as err:
        _check_named(err, list(config_fields))
        return
    # a config that is built round-trips through JSON unchanged and holds the types it promises
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert all(isinstance(getattr(cfg, f), bool) for f in ("importance", "conditional", "progress", "tensorboard"))
    assert isinstance(cfg.steps, int) and not isinstance(cfg.steps, bool) and cfg.steps >= 1
    assert math.isfinite(cfg.lr) and cfg.lr > 0 and 0 <= cfg.ema_decay < 1
    sde = sd.make_sde(cfg.sde, **cfg.sde_kwargs)
    assert math.isfinite(sde.prior_std())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", None])
def test_settings_reach_the_edges(bad):
    # the strategies do produce each hostile kind (a property test that never sees NaN proves nothing)
    with pytest.raises((TypeError, ValueError)):
        sd.VPSDE(beta_min=bad)


# ----- image data readers: integer pixels come back exactly, anything else is a named error -----------------
@st.composite
def pixel_arrays(draw):
    """A small stack of integer images: 8-bit grey or RGB, or 16-bit grey, with any values of their depth."""
    import numpy as np

    kind = draw(st.sampled_from(["grey8", "rgb8", "grey16"]))
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    top = 65535 if kind == "grey16" else 255
    shape = (n, h, w, 3) if kind == "rgb8" else (n, h, w)
    flat = draw(st.lists(st.one_of(st.integers(0, top), st.sampled_from([0, top])), min_size=math.prod(shape),
                         max_size=math.prod(shape)))
    return kind, np.array(flat, dtype=np.uint16 if kind == "grey16" else np.uint8).reshape(shape)


@SETTINGS
@given(pixel_arrays(), st.booleans())
def test_image_folders_read_every_pixel_exactly(tmp_path_factory, drawn, classes):
    """PNG files (8-bit grey, RGB, 16-bit grey; flat or in class folders) read back as from_levels of their
    integers with L = 256 or 65536, and to_levels inverts that exactly; labels follow the sorted folders."""
    import numpy as np
    from PIL import Image

    from scoresde.images import load_folder, to_levels

    kind, pixels = drawn
    root = tmp_path_factory.mktemp("png")
    for i, a in enumerate(pixels):
        where = root / f"class{i % 2}" if classes else root
        where.mkdir(exist_ok=True)
        Image.fromarray(a).save(where / f"{i:03d}.png")
    data = load_folder(root)
    levels = 65536 if kind == "grey16" else 256
    assert data.levels == levels and data.x.dtype == torch.float32
    assert float(data.x.min()) >= -1.0 and float(data.x.max()) <= 1.0
    order = sorted(range(len(pixels)), key=lambda i: (i % 2, i)) if classes else list(range(len(pixels)))
    expect = np.stack([pixels[i] for i in order]).astype(np.int64)
    expect = expect.transpose(0, 3, 1, 2) if kind == "rgb8" else expect[:, None]
    assert torch.equal(to_levels(data.x, levels), torch.from_numpy(expect))
    if classes:
        assert data.y.tolist() == [i % 2 for i in order]
    else:
        assert data.y is None


@SETTINGS
@given(st.lists(st.one_of(numbers, st.floats(-1, 1)), min_size=1, max_size=12), st.sampled_from([2, 3, 4]))
def test_array_files_keep_valid_floats_and_name_the_rest(tmp_path_factory, values, ndim):
    """A float image array is kept as it is when finite and in [-1, 1]; anything else is a named ValueError
    (the file and the range), never clipped; (N, D) vectors may take any finite value."""
    from scoresde.images import load_array

    x = torch.tensor(values, dtype=torch.float32)
    x = x.reshape((len(values),) + (1,) * (ndim - 1))
    path = tmp_path_factory.mktemp("arr") / "x.pt"
    torch.save(x, path)
    finite = bool(torch.isfinite(x).all())
    in_range = finite and float(x.min()) >= -1 and float(x.max()) <= 1
    try:
        data = load_array(path)
    except ValueError as err:
        assert "data" in str(err) and "x.pt" in str(err)
        assert not finite or (ndim >= 3 and not in_range), str(err)
        return
    assert finite and (ndim == 2 or in_range)
    assert torch.equal(data.x.reshape(x.shape), x) and data.levels is None


@SETTINGS
@given(st.lists(st.one_of(st.integers(-5, 300), numbers), min_size=1, max_size=8), st.sampled_from([2, 17, 256]))
def test_levels_round_trip_or_named_error(values, levels):
    """from_levels takes integers 0..L-1 and nothing else; to_levels inverts it; non-finite x is refused."""
    from scoresde.images import from_levels, to_levels

    k = torch.tensor(values, dtype=torch.float64)
    valid = bool(torch.isfinite(k).all()) and bool((k == k.round()).all()) and float(k.min()) >= 0 \
        and float(k.max()) <= levels - 1
    try:
        x = from_levels(k, levels)
    except ValueError as err:
        assert not valid and str(err).startswith("k:")
        with pytest.raises(ValueError, match="^x:") if not bool(torch.isfinite(k).all()) else _no_error():
            to_levels(k, levels)
        return
    assert valid and float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(to_levels(x, levels), k.long())


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
