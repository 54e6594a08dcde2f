"""Conformance of every registered sampler: the contract of :func:`scoresde.sample`, checked over
the whole registry, so a new sampler file is tested without editing this one.

What varies per sampler is read from the sampler class itself:

* ``adaptive`` / ``expected_nfe(steps) is None``: the solver picks its own steps; NFE is not fixed.
* ``stochastic``: draws noise (reproducibility then relies on the generator; more steps for the
  distribution test, whose weak error is O(h)).
* ``order``: the declared order, used to pick a "generous" step count for the distribution test.
* the option variants exercised (every order and every final-step option): a sampler may list
  them itself in a class attribute ``conformance_options`` (a list of option dicts); otherwise they
  are derived from its constructor: ``order`` over ``cls.orders`` (or whichever of 1..3 the
  constructor accepts), both values of every boolean option whose name mentions "final" (crossed
  with the orders), every other boolean option flipped once, and the discrete choices listed
  in :data:`CHOICES` below (crossed with the orders), keeping only the options the class accepts.

The exact models: the Gaussian-mixture oracle on ``(B, 2)``, and a single Gaussian
``N(0, s^2 I)`` on ``(B, 1, 4, 4)`` whose score ``-x / (alpha^2 s^2 + sigma^2)`` is closed form.
"""
from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde._tensor import append_dims
from scoresde.metrics import sliced_wasserstein
from scoresde.samplers import SAMPLERS, Sampler, available, get_sampler, register, sample
from scoresde.samplers.base import GeneratorNoise, SamplingContext, Schedule, SteppedSampler

NAMES = available()

# Options with a few discrete values worth crossing with every order (option names a sampler does
# not have, and values its constructor rejects, are skipped, so the table may name options of samplers
# that have not landed).
CHOICES = {
    "eta": [0.0, 1.0],
    "variant": ["multistep", "singlestep", "bh1", "bh2"],
    "prediction": ["data", "noise", "x0", "eps"],
    "predictor": ["euler_maruyama", "reverse_diffusion", "ancestral"],
    "corrector": ["langevin", "annealed_langevin", "none"],
    "method": ["euler", "milstein", "srk", "reversible_heun", "rk4", "midpoint", "dopri5", "RK45", "DOP853", "LSODA"],
}
STEPS_FAST = [1, 2, 3, 5, 8, 11, 14, 20]


# ----- option variants from the class metadata --------------------------------------------------
def _constructs(cls, opts) -> bool:
    try:
        cls(**opts)
    except (ValueError, TypeError, NotImplementedError):
        return False
    return True


def option_variants(cls) -> list[dict]:
    declared = getattr(cls, "conformance_options", None)
    if declared is not None:
        return [dict(o) for o in declared]
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"}
    orders = [{}]
    if "order" in params:
        cand = getattr(cls, "orders", None) or (1, 2, 3)
        orders = [{"order": k} for k in cand if _constructs(cls, {"order": k})]
    axes = [orders]
    for name, p in params.items():
        if isinstance(p.default, bool) and "final" in name:
            axes.append([{name: False}, {name: True}])
        elif name in CHOICES:
            values = [v for v in CHOICES[name] if _constructs(cls, {name: v})]
            if values:
                axes.append([{name: v} for v in values])
    variants = []
    for combo in itertools.product(*axes):
        opts = {k: v for d in combo for k, v in d.items()}
        if _constructs(cls, opts) and opts not in variants:
            variants.append(opts)
    for name, p in params.items():
        if isinstance(p.default, bool) and "final" not in name and _constructs(cls, {name: not p.default}):
            variants.append({name: not p.default})
    return variants or [{}]


def _id(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in opts.items()) or "default"


VARIANTS = [(n, o) for n in NAMES for o in option_variants(SAMPLERS[n])]
VARIANT_IDS = [f"{n}[{_id(o)}]" for n, o in VARIANTS]


# ----- exact models ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vp():
    return sd.VPSDE()


def mixture_model(sde):
    return toy.gaussian_mixture_2d().model(sde)


def gaussian_image_model(sde, s: float = 0.5):
    """eps-model of N(0, s^2 I): p_t = N(0, v_t I) with v_t = alpha_t^2 s^2 + sigma_t^2, eps = sigma_t x / v_t."""
    def fn(x, t):
        alpha, sigma = (append_dims(c, x.ndim) for c in sde.alpha_sigma(t))
        return sigma * x / (alpha**2 * s**2 + sigma**2)
    return sd.ScoreModel(fn, sde, "eps")


def run(name, opts, sde, model, steps, shape, *, dtype=torch.float64, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample(shape, generator=g, dtype=dtype)
    return x_T, sample(model, sde, name, steps, x_T=x_T, generator=g, **opts, **kw)


# ----- metadata ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    cls = SAMPLERS[name]
    assert cls.name == name and issubclass(cls, Sampler)
    for opts in option_variants(cls):
        s = cls(**opts)
        assert isinstance(s.stochastic, bool) and isinstance(cls.adaptive, bool)
        assert s.convergence_order is None or (isinstance(s.convergence_order, (int, float)) and s.convergence_order > 0)
        assert isinstance(s.calls_per_step, int) and s.calls_per_step >= 1
        nfe = s.expected_nfe(7)
        assert nfe is None or (isinstance(nfe, int) and nfe >= 1), (opts, nfe)
        assert set(s.describe()) >= {"name", "convergence_order", "calls_per_step", "stochastic", "adaptive"}


def test_registry_has_the_reference_sampler():
    assert "ddim" in NAMES


# ----- the contract, on both shapes and both dtypes ------------------------------------------------
@pytest.mark.parametrize("name,opts", VARIANTS, ids=VARIANT_IDS)
def test_contract(name, opts, vp):
    cases = itertools.product([(mixture_model(vp), (3, 2)), (gaussian_image_model(vp), (2, 1, 4, 4))],
                              [torch.float64, torch.float32])
    for i, ((model, shape), dtype) in enumerate(cases):
        final = i in (1, 2)  # each shape and each dtype once with and once without the final denoising
        steps = 6
        x_T, res = run(name, opts, vp, model, steps, shape, dtype=dtype, final_denoise=final, return_trajectory=True)
        sampler = SAMPLERS[name](**opts)
        assert res.samples.shape == shape and res.samples.dtype == dtype and res.samples.device == x_T.device
        assert torch.isfinite(res.samples).all()
        order_for = getattr(sampler, "convergence_order_for", None)  # orders lowered on short runs
        declared = sampler.convergence_order if order_for is None else order_for(len(res.times) - 1)
        assert res.method == name and res.convergence_order == declared
        # the grid and both ends: the sampler starts at T and ends at t_min (or at 0 after Tweedie's step)
        expected_grid = sd.grids.make_grid("logsnr", vp, steps)
        torch.testing.assert_close(res.times, expected_grid, rtol=0, atol=0)
        assert res.t_start == vp.T and res.t_end == (0.0 if final else vp.t_min)
        a0, s0 = vp.alpha_sigma(torch.tensor(vp.T, dtype=torch.float64))
        assert (res.alpha_start, res.sigma_start) == pytest.approx((float(a0), float(s0)), rel=1e-14)
        if final:
            assert (res.alpha_end, res.sigma_end) == (1.0, 0.0)
        else:
            a1, s1 = vp.alpha_sigma(torch.tensor(vp.t_min, dtype=torch.float64))
            assert (res.alpha_end, res.sigma_end) == pytest.approx((float(a1), float(s1)), rel=1e-14)
        # the trajectory: one state per grid time, starting at x_T, ending at the pre-denoising state
        assert res.trajectory.shape == (steps + 1, *shape) and res.trajectory.dtype == dtype
        torch.testing.assert_close(res.trajectory[0], x_T, rtol=0, atol=0)
        if not final:
            torch.testing.assert_close(res.trajectory[-1], res.samples, rtol=0, atol=0)
        # honest NFE: read from the model's counter, equal to the declared cost
        expected = sampler.expected_nfe(steps)
        if expected is not None:
            assert res.nfe == expected + int(final), f"{name}{opts}: nfe {res.nfe}, declared {expected} (+{int(final)})"
        else:
            assert res.nfe >= 1
        assert res.stats["wall_time"] > 0


STEPPED = [(n, o) for n, o in VARIANTS if issubclass(SAMPLERS[n], SteppedSampler)]


@pytest.mark.parametrize("name,opts", STEPPED, ids=[f"{n}[{_id(o)}]" for n, o in STEPPED])
def test_a_stepped_sampler_driven_from_outside_is_sample(name, opts, vp):
    # an external loop (a diffusers pipeline) owns the model calls: begin, then one step per call,
    # each consuming the raw output at (x_eval, t_eval); the result and the call count equal sample()'s
    model = mixture_model(vp)
    steps, seed = 5, 3
    x_T, res = run(name, opts, vp, model, steps, (4, 2), seed=seed)
    sampler = SAMPLERS[name](**opts)
    g = torch.Generator().manual_seed(seed)
    sde_x_T = vp.prior_sample((4, 2), generator=g, dtype=torch.float64)  # the same draw as run()'s
    assert torch.equal(sde_x_T, x_T)
    times = sd.grids.make_grid("logsnr", vp, steps)
    schedule = Schedule.from_times(vp, times)
    ctx = SamplingContext(sampler, times, GeneratorNoise(g), g, record=False, progress=False)
    state, calls = sampler.begin(schedule, x_T, ctx), 0
    while state.i < schedule.steps:
        needs = sampler.needs_output(state)
        state = sampler.step(model, schedule, state, model.predict(state.x_eval, state.t_eval) if needs else None, ctx)
        calls += needs
    assert torch.equal(state.x, res.samples)
    assert calls == res.nfe == sampler.expected_nfe(steps)


@pytest.mark.parametrize("name,opts", VARIANTS, ids=VARIANT_IDS)
def test_reproducible_with_a_fixed_generator(name, opts, vp):
    model = mixture_model(vp)
    a = run(name, opts, vp, model, 5, (4, 2), seed=3)[1].samples
    b = run(name, opts, vp, model, 5, (4, 2), seed=3)[1].samples
    assert torch.equal(a, b)
    if SAMPLERS[name](**opts).stochastic:
        # same x_T, different noise: a stochastic sampler must actually use the generator
        g = torch.Generator().manual_seed(3)
        x_T = vp.prior_sample((4, 2), generator=g, dtype=torch.float64)
        c = sample(model, vp, name, 5, x_T=x_T, generator=torch.Generator().manual_seed(99), **opts).samples
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name,opts", VARIANTS, ids=VARIANT_IDS)
def test_no_nan_for_any_step_count(name, opts, vp):
    model = mixture_model(vp)
    for steps in STEPS_FAST:
        for final in (False, True):
            _, res = run(name, opts, vp, model, steps, (2, 2), final_denoise=final)
            assert torch.isfinite(res.samples).all(), (steps, final)
            expected = SAMPLERS[name](**opts).expected_nfe(steps)
            if expected is not None:
                assert res.nfe == expected + int(final), (steps, final, res.nfe, expected)


THOUSAND = ([pytest.param(n, {}, id=f"{n}[default]") for n in NAMES]
            + [pytest.param(n, o, marks=pytest.mark.slow, id=f"{n}[{_id(o)}]") for n, o in VARIANTS if o])


@pytest.mark.parametrize("name,opts", THOUSAND)
def test_no_nan_at_1000_steps(name, opts, vp):
    # tiny steps near t_min (sigma ~ 1e-2) stress divisions by sigma and tiny h = lam_s - lam_t
    _, res = run(name, opts, vp, mixture_model(vp), 1000, (1, 2), final_denoise=True)
    assert torch.isfinite(res.samples).all()
    expected = SAMPLERS[name](**opts).expected_nfe(1000)
    if expected is not None:
        assert res.nfe == expected + 1


# ----- distribution --------------------------------------------------------------------------------
def generous_steps(sampler) -> int:
    """Enough steps for the discretisation bias to sit well below the sampling noise of n = 2000."""
    if sampler.stochastic:
        return 200  # weak order 1: moment bias ~ 1/steps
    if sampler.convergence_order is None or sampler.convergence_order < 2:
        return 100
    return 25


def _moments_within_sampling_error(x, mean, cov, n_se=5.0):
    """|empirical - exact| within n_se standard errors estimated from the sample itself."""
    n = x.shape[0]
    m = x.mean(0)
    c = x - m
    prods = c[:, :, None] * c[:, None, :]
    emp_cov = prods.sum(0) / (n - 1)
    se_mean = c.std(0) / math.sqrt(n)
    se_cov = prods.std(0) / math.sqrt(n)
    ok_mean = ((m - mean).abs() <= n_se * se_mean).all()
    ok_cov = ((emp_cov - cov).abs() <= n_se * se_cov).all()
    return bool(ok_mean and ok_cov), (m, emp_cov, se_mean, se_cov)


DISTRIBUTION = ([pytest.param(n, {}, id=f"{n}[default]") for n in NAMES]
                + [pytest.param(n, o, marks=pytest.mark.slow, id=f"{n}[{_id(o)}]") for n, o in VARIANTS
                   if o and not o.get("thresholding")])  # thresholding clips x0 on purpose: another distribution


@pytest.mark.parametrize("name,opts", DISTRIBUTION)
def test_reproduces_the_mixture(name, opts, vp):
    """With the exact score, the samples at t_min follow p_{t_min}: its mean and covariance (exact,
    :meth:`GaussianMixture.marginal_moments`) within 5 standard errors of n = 2000, and a sliced W2
    to an exact sample of p_{t_min} within twice the two-sample noise floor (SW^2 adds a bias b as
    SW^2 ~ floor^2 + b^2, so this allows b up to sqrt(3) floor while exact sampling passes with room)."""
    mix = toy.gaussian_mixture_2d()
    model = mix.model(vp)
    sampler = SAMPLERS[name](**opts)
    steps = None if SAMPLERS[name].adaptive and sampler.expected_nfe(1) is None else generous_steps(sampler)
    n = 2000
    _, res = run(name, opts, vp, model, steps, (n, 2), seed=11)
    x = res.samples
    mean, cov = mix.marginal_moments(vp.t_min, vp)
    ok, info = _moments_within_sampling_error(x, mean, cov)
    assert ok, f"{name}: mean {info[0].tolist()} vs {mean.tolist()}, cov {info[1].tolist()} vs {cov.tolist()}"

    def exact_sample(seed):
        g = torch.Generator().manual_seed(seed)
        x0 = mix.sample(n, generator=g, dtype=torch.float64)
        return vp.perturb(x0, vp.t_min, torch.randn(x0.shape, generator=g, dtype=torch.float64))

    ref = exact_sample(101)
    floor = sum(sliced_wasserstein(exact_sample(200 + k), ref, 128, torch.Generator().manual_seed(5))
                for k in range(3)) / 3
    sw = sliced_wasserstein(x, ref, 128, torch.Generator().manual_seed(5))
    assert sw <= 2 * floor, f"{name}: sliced W2 {sw:.4f} vs noise floor {floor:.4f}"


# ----- bad input through sample() --------------------------------------------------------------------
def _call(sde, **kw):
    args = {"steps": 4, "shape": (2, 2), "generator": torch.Generator().manual_seed(0)}
    args.update(kw)
    method = args.pop("method", "ddim")
    return sample(args.pop("model", mixture_model(sde)), sde, method, **args)


@pytest.mark.parametrize("steps, exc", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_steps_must_be_a_positive_integer(steps, exc, vp):
    # one policy (scoresde.checks): a non-integer is a TypeError, an integer out of range a ValueError
    with pytest.raises(exc, match="steps"):
        _call(vp, steps=steps)


def test_unknown_method_lists_the_known_ones(vp):
    with pytest.raises(ValueError, match="method") as e:
        _call(vp, method="no_such_sampler")
    assert "no_such_sampler" in str(e.value)
    assert all(n in str(e.value) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_lists_the_samplers_options(name, vp):
    with pytest.raises(ValueError, match="not_an_option") as e:
        _call(vp, method=name, not_an_option=1)
    assert all(o in str(e.value) for o in SAMPLERS[name].option_names())


@pytest.mark.parametrize("t_min", [0.0, -0.1, 1.0, 2.0, float("nan")])
def test_t_min_outside_the_interval(t_min, vp):
    with pytest.raises(ValueError, match="t_min"):
        _call(vp, t_min=t_min)


@pytest.mark.parametrize("grid", [[0.5, 0.7, 0.1], [0.9, 0.5, 0.5, 0.1], [1.0, 0.5, 0.0], [1.5, 0.5, 0.1]])
def test_bad_user_grid(grid, vp):
    with pytest.raises(ValueError, match="grid"):
        _call(vp, steps=None, grid=torch.tensor(grid, dtype=torch.float64))


def test_bad_x_T(vp):
    with pytest.raises(ValueError, match="x_T"):
        _call(vp, shape=None, x_T=torch.zeros(2))                    # no batch dimension
    with pytest.raises(ValueError, match="x_T"):
        _call(vp, shape=(2, 2), x_T=torch.zeros(3, 2))               # disagrees with shape
    with pytest.raises(ValueError, match="x_T"):
        _call(vp, shape=None, x_T=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x_T"):
        _call(vp, shape=None, x_T=torch.zeros(2, 2), dtype=torch.float64)
    with pytest.raises(ValueError, match="x_T"):
        _call(vp, shape=None, x_T=torch.full((2, 2), float("inf")))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 2\)"):
        _call(vp, shape=None, x_T=torch.zeros(2, 3))                 # the mixture is 2-D


@pytest.mark.parametrize("name", NAMES)
def test_nan_model_names_step_time_and_sampler(name, vp):
    model = sd.ScoreModel(lambda x, t: torch.full_like(x, float("nan")), vp, "eps")
    with pytest.raises(FloatingPointError) as e:
        _call(vp, method=name, model=model)
    msg = str(e.value)
    assert name in msg and "step" in msg and "t =" in msg and "the model" in msg and "returned NaN/inf" in msg, msg
    assert isinstance(e.value, sd.models.NonFiniteModelOutput)


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_a_single_non_finite_entry_is_caught_at_its_step(bad, vp):
    # one bad entry in a large batch, at the third call: the model's own check names step 2 and its time
    calls = []

    def fn(x, t):
        calls.append(1)
        out = torch.zeros_like(x)
        if len(calls) == 3:
            out[17, 1] = bad
        return out

    with pytest.raises(FloatingPointError, match=r"ddim: during step 2 \(t = .*\): the model .*fn returned NaN/inf"):
        _call(vp, method="ddim", steps=6, model=sd.ScoreModel(fn, vp, "x0"), shape=(64, 2))


def test_an_unstable_step_is_told_apart_from_a_bad_model(vp):
    # finite outputs whose update overflows: the message blames the step, not the model
    def fn(x, t):
        return torch.full_like(x, 1e308)

    with pytest.raises(FloatingPointError, match="state became non-finite after step 0.*outputs were finite") as e:
        _call(vp, method="ddim", steps=3, model=sd.ScoreModel(fn, vp, "eps"), dtype=torch.float64)
    assert not isinstance(e.value, sd.models.NonFiniteModelOutput)


def test_a_sampler_class_in_place_of_a_name(vp):
    class ProbabilityFlowEuler(Sampler):
        """Euler on the probability-flow ODE (not registered: passed as a class)."""
        name = "test_pf_euler"
        order = 1

        def run(self, model, x, schedule, ctx):
            times = schedule.t
            for i in range(len(times) - 1):
                t, dt = float(times[i]), float(times[i + 1] - times[i])
                x = x + dt * model.velocity(x, t)
                ctx.step(i, x)
            return x

    res = _call(vp, method=ProbabilityFlowEuler, steps=7)
    assert res.method == "test_pf_euler" and res.nfe == 7
    assert get_sampler(ProbabilityFlowEuler) is ProbabilityFlowEuler
    assert "test_pf_euler" not in available()


def test_duplicate_registration_raises():
    class Impostor(Sampler):
        name = "ddim"

    with pytest.raises(ValueError, match="'ddim' is already registered"):
        register(Impostor)
    assert SAMPLERS["ddim"] is not Impostor
    # registering the same class again is harmless (module reloads)
    assert register(SAMPLERS["ddim"]) is SAMPLERS["ddim"]

    class Nameless(Sampler):
        pass

    with pytest.raises(ValueError, match="name"):
        register(Nameless)
