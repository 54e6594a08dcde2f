"""UniPC (Zhao et al. 2023) on the exact mixture oracle, in float64.

The order tests compare the final sample with a reference solution of the probability-flow ODE
from the same x_T (torchdiffeq dopri8 at rtol = atol = 1e-10; against dopri8 at 1e-13 its per-sample
error is below 2e-11, four decades under the smallest error fitted here) and fit the log-log slope
of the median per-sample error against the number of steps.
"""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.samplers import sample
from scoresde.samplers._phi import phi
from scoresde.samplers._thresholding import dynamic_threshold
from scoresde.samplers.unipc import UniPC, unipc_weights
from scoresde.studies.orders import median_order
from scoresde.studies.references import reference_pf_ode

# Why these step ranges are asymptotic: on the default VP SDE lambda runs from -5.0 (T = 1) to 4.6
# (t_min = 1e-3), and the error of each sample is fitted on its own; the test takes the median of
# the per-sample slopes, which leaves out the few samples near a boundary between components whose
# posterior switches in a narrow lambda-window. For orders 2 and 3, 64..256 steps (h = 0.15..0.04)
# are small against the lambda-scale (~1) on which the posterior weights of a typical sample move:
# the local slopes are constant there (measured within 0.05). Order 4 needs more: its local slopes
# dip to ~3.5 around 64..128 steps (the higher-order terms of a few samples cancel the leading one)
# and climb back to 3.88, 3.93, 3.95, 3.96, 3.97 between 181 and 1024 steps (measured), so it is
# fitted on 181..724, where its errors (~1e-6..4e-9) stay far above the reference error.
STEPS = [64, 90, 128, 181, 256]
STEPS_ORDER4 = [181, 256, 362, 512, 724]
BATCH = 32




def reference(model, sde, x_T, T, t_min):
    return reference_pf_ode(model, x_T, T, t_min, tol=1e-10, solver="dopri8", variable="t", estimate_error=False).x


class Problem:
    """The mixture oracle under the VP SDE, a batch x_T, and its reference endpoint (cached)."""

    def __init__(self):
        self.sde = sd.VPSDE()
        self.mix = sd.toy.mixture("gaussian_mixture_2d")
        self.model = self.mix.model(self.sde)
        self._refs = {}

    def start(self, T):
        g = torch.Generator().manual_seed(1234)
        if T == self.sde.T:
            return self.sde.prior_sample((BATCH, 2), generator=g, dtype=torch.float64)
        # a typical point of the marginal at T, so the trajectory is a typical one
        x0 = self.mix.sample(BATCH, generator=g, dtype=torch.float64)
        return self.sde.perturb(x0, T, torch.randn(BATCH, 2, generator=g, dtype=torch.float64))

    def errors(self, steps, T=1.0, t_min=1e-3, **options):
        """Per-sample errors, shape (len(steps), BATCH)."""
        key = (T, t_min)
        if key not in self._refs:
            x_T = self.start(T)
            self._refs[key] = (x_T, reference(self.model, self.sde, x_T, T, t_min))
        x_T, ref = self._refs[key]
        out = []
        for n in steps:
            r = sample(self.model, self.sde, "unipc", n, x_T=x_T, T=T, t_min=t_min, **options)
            out.append((r.samples - ref).norm(dim=1))
        return torch.stack(out).numpy()


@pytest.fixture(scope="module")
def problem():
    return Problem()


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hh", [-0.7, 0.05, 1.3])
def test_weights_solve_the_order_conditions(hh):
    # one linear solve for every K; checked row by row
    B = math.expm1(hh)
    for r in ([-1.0, 1.0], [-1.0, -2.3, 1.0], [-1.0, -2.3, -3.1, 1.0], [-0.4, -1.1, -1.9, -2.6, 1.0]):
        rho = unipc_weights(r, hh, B)
        for k in range(1, len(r) + 1):
            lhs = sum(rm ** (k - 1) * p for rm, p in zip(r, rho, strict=True))
            assert lhs == pytest.approx(hh * phi(k + 1, hh) * math.factorial(k) / B, rel=1e-12, abs=1e-14)
    assert unipc_weights([1.0], hh, B) == [0.5]  # the published one-term shortcut
    assert unipc_weights([1.0], hh, B, exact=True)[0] == pytest.approx(hh * phi(2, hh) / B, rel=1e-14)


# --------------------------------------------------------------------------------------------
# identities
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", ["logsnr", "uniform", "karras"])
@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_order_one_without_corrector_is_ddim(problem, grid, prediction):
    x_T = problem.start(1.0)
    for steps in (1, 4, 13):
        u = sample(problem.model, problem.sde, "unipc", steps, x_T=x_T, grid=grid, order=1, corrector=False,
                   prediction=prediction)
        d = sample(problem.model, problem.sde, "ddim", steps, x_T=x_T, grid=grid)
        # the same exponential-Euler step written in two frames: only rounding separates them
        torch.testing.assert_close(u.samples, d.samples, rtol=0, atol=1e-10)


def test_exact_weights_make_bh1_and_bh2_coincide(problem):
    # B(h) cancels from an exactly solved system, so the variants differ only through rho = 1/2
    x_T = problem.start(1.0)
    runs = {v: sample(problem.model, problem.sde, "unipc", 12, x_T=x_T, order=3, variant=v, exact_weights=True).samples
            for v in ("bh1", "bh2")}
    torch.testing.assert_close(runs["bh1"], runs["bh2"], rtol=0, atol=1e-12)
    bh1 = sample(problem.model, problem.sde, "unipc", 12, x_T=x_T, order=3, variant="bh1").samples
    assert (bh1 - runs["bh1"]).abs().max() > 1e-8


# --------------------------------------------------------------------------------------------
# orders of convergence
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_order_with_corrector(problem, order, variant):
    """UniP-p + UniC: global order p + 1 (2, 3, 4), with the last step's corrector skipped."""
    assert UniPC(order=order, variant=variant).convergence_order == order + 1
    steps = STEPS_ORDER4 if order == 3 else STEPS
    slope = median_order(steps, problem.errors(steps, order=order, variant=variant))
    assert abs(slope - (order + 1)) < 0.3, slope


@pytest.mark.parametrize("options", [dict(prediction="noise"), dict(final_corrector=True),
                                     dict(corrector=False)])
def test_order_other_options(problem, options):
    expected = UniPC(order=3, **options).convergence_order  # 4, 4, and 3 for UniP-3 alone
    assert expected == (3 if options.get("corrector") is False else 4)
    steps = STEPS_ORDER4 if expected == 4 else STEPS
    slope = median_order(steps, problem.errors(steps, order=3, **options))
    assert abs(slope - expected) < 0.3, slope


def test_lower_order_final_lowers_the_order(problem):
    """A first-order last step (local O(h^2)) caps the global order at 2.

    From t_min = 1e-3 its error constant carries sigma^2/alpha^2 = e^{-2 lam} ~ 1e-4 and is hidden
    behind the fourth-order term over this step range; at t_min = 0.1 (e^{-2 lam} ~ 0.7) it shows.
    """
    without = problem.errors(STEPS, order=3, t_min=0.1)
    lowered = problem.errors(STEPS, order=3, t_min=0.1, lower_order_final=True)
    assert UniPC(order=3, lower_order_final=True).convergence_order == 2
    assert abs(median_order(STEPS, without) - 4) < 0.3
    assert abs(median_order(STEPS, lowered) - 2) < 0.3
    assert np.median(lowered[-1]) > 100 * np.median(without[-1])


def test_warm_up_caps_the_order_away_from_T(problem):
    """The first step is UniP-1 + UniC (local O(h^3)). From T its constant carries alpha_T ~ 7e-3
    and the order measures 4 (above); started at T = 0.3 (alpha = 0.8) it bounds order 3 by 3.
    Splitting the two warm-up steps into 64 pieces each (so their local errors vanish) restores
    order 4 there: the warm-up, not the corrector, is what caps it."""
    T, t_min = 0.3, 1e-3
    plain = problem.errors(STEPS, order=3, T=T)
    assert abs(median_order(STEPS, plain) - 3) < 0.3
    sde = problem.sde
    lam_T, lam_min = (float(sde.lam(torch.tensor(t, dtype=torch.float64))) for t in (T, t_min))
    x_T, ref = problem._refs[(T, t_min)]
    refined = []
    for n in STEPS:
        lam = torch.linspace(lam_T, lam_min, n + 1, dtype=torch.float64)
        lam = torch.cat([torch.linspace(lam_T, float(lam[2]), 129, dtype=torch.float64), lam[3:]])
        times = sde.t_of_lam(lam)
        times[0], times[-1] = T, t_min
        r = sample(problem.model, sde, "unipc", x_T=x_T, grid=times, order=3)
        refined.append((r.samples - ref).norm(dim=1))
    refined = torch.stack(refined).numpy()
    assert abs(median_order(STEPS, refined) - 4) < 0.3
    assert np.median(refined[-1]) < 0.1 * np.median(plain[-1])


# --------------------------------------------------------------------------------------------
# stats, NFE, conformance
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,options,orders,corrected", [
    (5, dict(order=3, lower_order_final=False), [1, 2, 3, 3, 3], [True, True, True, True, False]),
    (5, dict(order=3, lower_order_final=True), [1, 2, 3, 2, 1], [True, True, True, True, False]),
    (5, dict(order=3), [1, 2, 3, 2, 1], [True, True, True, True, False]),  # default: lowered below 15 steps
    (15, dict(order=3), [1, 2] + [3] * 13, [True] * 14 + [False]),
    (20, dict(order=2, lower_order_final=True), [1] + [2] * 18 + [1], [True] * 19 + [False]),
    (2, dict(order=3, lower_order_final=True), [1, 1], [True, False]),
    (4, dict(order=2, final_corrector=True, lower_order_final=False), [1, 2, 2, 2], [True, True, True, True]),
    (3, dict(order=2, corrector=False, final_corrector=True, lower_order_final=False), [1, 2, 2], [False, False, False]),
    (1, dict(order=1), [1], [False]),
])
def test_stats_record_orders_and_corrections(problem, steps, options, orders, corrected):
    r = sample(problem.model, problem.sde, "unipc", steps, shape=(4, 2), generator=torch.Generator().manual_seed(0),
               dtype=torch.float64, **options)
    assert r.stats["orders"] == orders
    assert r.stats["corrected"] == corrected


@pytest.mark.parametrize("corrector", [True, False])
@pytest.mark.parametrize("final_corrector", [True, False])
@pytest.mark.parametrize("lower_order_final", [None, True, False])
def test_nfe_equals_expected(problem, corrector, final_corrector, lower_order_final):
    opts = dict(corrector=corrector, final_corrector=final_corrector, lower_order_final=lower_order_final)
    for order in (1, 2, 3):
        sampler = UniPC(order=order, **opts)
        for steps in (1, 2, 3, 5, 8):
            r = sample(problem.model, problem.sde, "unipc", steps, shape=(3, 2), generator=torch.Generator().manual_seed(0),
                       order=order, **opts)
            assert r.nfe == sampler.expected_nfe(steps) == steps + int(corrector and final_corrector)


def _gaussian_model(sde, v=0.5):
    """Exact score of N(0, v I) in any shape: -x / (alpha^2 v + sigma^2)."""
    def fn(x, t):
        a, s = sde.alpha_sigma(t)
        return -x / (a**2 * v + s**2).reshape(-1, *([1] * (x.ndim - 1)))
    return sd.ScoreModel(fn, sde, "score")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_image_shapes_and_dtype(dtype):
    sde = sd.VPSDE()
    model = _gaussian_model(sde)
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sample((2, 3, 4, 4), generator=g, dtype=dtype)
    img = sample(model, sde, "unipc", 7, x_T=x_T, order=3, return_trajectory=True)
    flat = sample(model, sde, "unipc", 7, x_T=x_T.reshape(2, -1), order=3)
    assert img.samples.shape == x_T.shape and img.samples.dtype == dtype
    assert img.trajectory.shape == (8, 2, 3, 4, 4)
    # the update is elementwise: the layout must not matter
    torch.testing.assert_close(img.samples.reshape(2, -1), flat.samples, rtol=0, atol=0)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_no_nan_for_any_step_count(order):
    sde = sd.VPSDE()
    model = sd.toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    for steps in (1, 2, 3, 5, 8, 11, 14, 20, 1000):
        for opts in (dict(), dict(lower_order_final=True, final_corrector=True), dict(prediction="noise", variant="bh1")):
            if steps == 1000 and opts:
                continue  # one long run per order keeps the test short
            r = sample(model, sde, "unipc", steps, x_T=x_T, order=order, **opts)
            assert torch.isfinite(r.samples).all() and r.samples.dtype == torch.float32


@pytest.mark.parametrize("sde", [sd.VESDE(), sd.SubVPSDE(), sd.CosineVPSDE(), sd.FlowMatchingSDE()],
                         ids=["ve", "subvp", "cosine", "flow"])
def test_every_sde_converges(sde):
    """Error at 20 steps is far below that at 5 on each SDE (orders were measured on VP above)."""
    model = sd.toy.mixture("gaussian_mixture_2d").model(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = reference(model, sde, x_T, sde.T, sde.t_min)
    e5, e40 = ((sample(model, sde, "unipc", n, x_T=x_T).samples - ref).norm(dim=1).median() for n in (5, 40))
    assert e40 < 1e-2 * e5


# --------------------------------------------------------------------------------------------
# thresholding
# --------------------------------------------------------------------------------------------
def test_dynamic_threshold_rule():
    x0 = torch.tensor([[3.0, 0.5], [0.2, -0.4]], dtype=torch.float64)
    out = dynamic_threshold(x0, 1.0, math.inf)
    # row 0: s = max|x0| = 3, so x0 / 3; row 1: s = max(0.4, 1) = 1, unchanged
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.5 / 3], [0.2, -0.4]], dtype=torch.float64))
    out = dynamic_threshold(x0, 1.0, 2.0)  # s capped at 2: clip to [-2, 2], then / 2
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.25], dtype=torch.float64))


def test_thresholding_acts_on_the_data_prediction():
    sde = sd.VPSDE()
    big = sd.ScoreModel(lambda x, t: torch.tensor([3.0, 0.5], dtype=x.dtype).expand_as(x), sde, "x0")
    clipped = sd.ScoreModel(lambda x, t: torch.tensor([1.0, 0.5 / 3], dtype=x.dtype).expand_as(x), sde, "x0")
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = sample(big, sde, "unipc", 6, x_T=x_T, thresholding=True, percentile=1.0).samples
    b = sample(clipped, sde, "unipc", 6, x_T=x_T).samples
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,name", [
    (dict(order=4), "order"), (dict(order=0), "order"), (dict(order=True), "order"), (dict(order=2.5), "order"),
    (dict(variant="bh3"), "variant"), (dict(prediction="x0"), "prediction"),
    (dict(corrector="yes"), "corrector"), (dict(lower_order_final=1), "lower_order_final"),
    (dict(final_corrector=None), "final_corrector"),
    (dict(thresholding=True, prediction="noise"), "thresholding"),
    (dict(percentile=0.0), "percentile"), (dict(max_value=0.0), "max_value"), (dict(max_value=-2.0), "max_value"),
])
def test_bad_options(problem, options, name):
    # one policy (scoresde.checks): a flag that is not True/False is a TypeError, other bad values ValueErrors
    exc = TypeError if name in ("corrector", "lower_order_final", "final_corrector") else ValueError
    with pytest.raises(exc, match=name):
        UniPC(**options)
    with pytest.raises(exc, match=name):
        sample(problem.model, problem.sde, "unipc", 3, shape=(2, 2), **options)


# --------------------------------------------------------------------------------------------
# agreement with the public reference implementation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order,variant,prediction,steps", [
    (1, "bh2", "data", 5), (2, "bh2", "data", 5), (3, "bh2", "data", 10), (3, "bh1", "data", 5),
    (2, "bh2", "noise", 10)])
def test_matches_diffusers(order, variant, prediction, steps):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant,
                                              predict_x0=prediction == "data", lower_order_final=True,
                                              final_sigmas_type="sigma_min")
    sched.set_timesteps(steps)
    sde = sd.DiscreteVPSDE(alphas_cumprod=sched.alphas_cumprod.double())
    mix = sd.toy.mixture("gaussian_mixture_2d")
    model = sd.ScoreModel(lambda x, t: mix.score(x, (t + 1) / sde.N, sde), sde, "score", time_input="discrete")
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    theirs = x.clone()
    for ts in sched.timesteps:
        t = (ts.double() + 1) / sde.N  # knot ts of the discrete schedule
        eps = -mix.score(theirs, t, sde) * sde.sigma(t)
        theirs = sched.step(eps, ts, theirs).prev_sample
    # the scheduler's grid, ending at its sigma_min (training step 0, t = 1/N)
    grid = torch.cat([(sched.timesteps.double() + 1) / sde.N, torch.tensor([1.0 / sde.N], dtype=torch.float64)])
    r = sample(model, sde, "unipc", x_T=x, grid=grid, order=order, variant=variant, prediction=prediction,
               lower_order_final=True)
    # the scheduler computes its coefficients in float32: relative agreement ~1e-7 (data) and
    # ~1e-6 (noise, which cancels alpha_t/alpha_s x against sigma_t (e^h - 1) eps)
    rel = float((r.samples - theirs).norm() / theirs.norm())
    assert rel < 1e-4, rel
