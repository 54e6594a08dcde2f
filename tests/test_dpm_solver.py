"""DPM-Solver and DPM-Solver++: identities, measured orders (with the corrected third-order multistep
step against the published one), thresholding, NFE, conformance and bad input.

Every numerical check runs in float64 on the exact score of ``toy.mixture('gaussian_mixture_2d')``.
"""
import functools
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde._tensor import append_dims
from scoresde.samplers import sample
from scoresde.samplers.dpm_solver import DPMSolver
from scoresde.samplers.dpm_solver_pp import DPMSolverPP, dynamic_threshold
from scoresde.studies.orders import empirical_order
from scoresde.studies.references import reference_pf_ode

NAMES = ("dpm_solver", "dpm_solver++")




def _setup(sde, batch=64, seed=0):
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    gen = torch.Generator().manual_seed(seed)
    return model, sde.prior_sample((batch, 2), generator=gen, dtype=torch.float64)


# ----- identities --------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_first_order_solvers_are_ddim(sde_name):
    # DDIM(eta=0) and both first-order exponential integrators are the same map written three ways
    # (sigma_s/sigma_t x - alpha_s expm1(-h) x0 = alpha_s/alpha_t x - sigma_s expm1(h) eps);
    # float64 rounding over 12 steps stays near 1e-14, so 1e-10 leaves room only for a real difference.
    sde = sd.make_sde(sde_name)
    model, x_T = _setup(sde, batch=16)
    ddim = sample(model, sde, "ddim", 12, x_T=x_T).samples
    for name in NAMES:
        for variant in ("multistep", "singlestep"):
            out = sample(model, sde, name, 12, x_T=x_T, order=1, variant=variant).samples
            torch.testing.assert_close(out, ddim, rtol=0, atol=1e-10, msg=f"{name} {variant}")


# ----- orders ------------------------------------------------------------------------------------
class PublishedDPMSolverPP3M(DPMSolverPP):
    """The published DPM-Solver++(3M) (Lu et al. 2022b, Alg. 2; diffusers' third-order update), kept
    here only as a contrast: its x0'' estimate is D2 instead of 2 D2, half the Taylor coefficient."""

    name = "published_dpm_solver++_3m"

    def multistep_derivatives(self, history, h):
        terms = super().multistep_derivatives(history, h)
        if len(terms) == 3:
            terms[2] = 0.5 * terms[2]
        return terms


# Steps 24..96 on the log-SNR grid (h = 0.4 .. 0.1 in lambda) are asymptotic for the typical
# trajectory: the local slopes between successive counts are within ~0.2 of the declared order
# from ~30 steps on (measured for every case below). A few trajectories that pass between two mixture components, where x0 turns over
# on a lambda-scale shorter than h, reach their asymptotic regime only beyond ~150 steps, so the
# error is the median over 64 trajectories of the endpoint distance (the order is a property of
# each trajectory; the median measures the typical one and ignores the few late ones).
STEPS = [24, 34, 48, 68, 96]


@functools.cache
def _reference(sde_name):
    """x_T and the PF-ODE solution from it: torchdiffeq's dopri5 at rtol = atol = 1e-10 to the
    same t_min (solve() passes step_t so the solver lands on t_min and never steps past it)."""
    sde = sd.make_sde(sde_name)
    model, x_T = _setup(sde)
    return x_T, reference_pf_ode(model, x_T, sde.T, sde.t_min, tol=1e-10, variable="t", estimate_error=False).x


def _fitted_order(sde_name, method, **options):
    sde = sd.make_sde(sde_name)
    model = toy.mixture("gaussian_mixture_2d").model(sde)
    x_T, ref = _reference(sde_name)
    errs = []
    for n in STEPS:
        out = sample(model, sde, method, n, x_T=x_T, grid="logsnr", **options).samples
        errs.append(float((out - ref).norm(dim=1).median()))
    slope = empirical_order(STEPS, errs)
    return slope, errs


# Multistep order 3 starts with an order-1 and an order-2 step (no history yet). Formally those
# local errors, c_1 F'(lam_T) ~ h^2 F'/2 and O(h^3 F''), would cap the global order at 2, but at
# the start F = x0_theta(x_T) = E[x0] + O(alpha_T) varies by O(alpha_T) per unit lambda and enters
# x with the weight alpha_s ~ alpha_T e^h: the start's error is O(alpha_T^2 h^2) ~ 4e-5 h^2 for
# the VP SDE (alpha_T = 6.6e-3; O(alpha_T h^2) for the noise prediction), below the O(h^3)
# terms until ~1e4 steps. (Starting errors of a multistep method count with the local, not the
# global, size, so an O(h^3) second step does not cap order 3 at all.)
ORDER_CASES = [
    ("dpm_solver++", dict(order=2), 2),
    ("dpm_solver", dict(order=2), 2),
    ("dpm_solver++", dict(order=2, solver_type="taylor"), 2),
    ("dpm_solver++", dict(order=3, lower_order_final=False), 3),
    ("dpm_solver", dict(order=3, lower_order_final=False), 3),
    ("dpm_solver++", dict(order=2, variant="singlestep"), 2),
    ("dpm_solver", dict(order=2, variant="singlestep"), 2),
    ("dpm_solver++", dict(order=3, variant="singlestep", lower_order_final=False), 3),
    ("dpm_solver", dict(order=3, variant="singlestep", lower_order_final=False), 3),
    ("dpm_solver++", dict(order=3, variant="singlestep", lower_order_final=False, solver_type="taylor"), 3),
]


@pytest.mark.parametrize("method,options,expected", ORDER_CASES, ids=lambda v: str(v))
def test_fitted_order(method, options, expected):
    slope, errs = _fitted_order("vp", method, **options)
    assert abs(slope - expected) < 0.3, f"{method} {options}: slope {slope:.2f}, errors {errs}"
    cls = sd.samplers.get_sampler(method)
    assert cls(**options).convergence_order == expected


def test_fitted_order_ve():
    slope, errs = _fitted_order("ve", "dpm_solver++", order=3, lower_order_final=False)
    assert abs(slope - 3) < 0.3, f"slope {slope:.2f}, errors {errs}"


def test_warm_up_caps_third_order_when_starting_at_high_snr():
    # The converse of the warm-up argument above: started at T = 0.3 (alpha_T = 0.63) the first-order
    # first step's O(alpha_T^2 h^2) error is no longer negligible and 3M measures order 2.
    sde, T = sd.VPSDE(), 0.3
    mix = toy.mixture("gaussian_mixture_2d")
    model = mix.model(sde)
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(torch.tensor(T, dtype=torch.float64)))
    gen = torch.Generator().manual_seed(0)
    x_T = alpha_T * mix.sample(64, generator=gen, dtype=torch.float64) + sigma_T * torch.randn(
        64, 2, generator=gen, dtype=torch.float64)  # a draw from the true marginal at T
    ref = reference_pf_ode(model, x_T, T, sde.t_min, tol=1e-10, variable="t", estimate_error=False).x
    errs = [float((sample(model, sde, "dpm_solver++", n, x_T=x_T, T=T, order=3, lower_order_final=False).samples
                   - ref).norm(dim=1).median()) for n in STEPS]
    slope = empirical_order(STEPS, errs)
    assert abs(slope - 2) < 0.3, f"slope {slope:.2f}, errors {errs}"


def test_published_third_order_multistep_is_second_order():
    # The same run with the published x0'' coefficient (half the Taylor one) converges at order 2;
    # ours at 3, and at 96 steps it is already ~3 times more accurate.
    ours, err_ours = _fitted_order("vp", "dpm_solver++", order=3, lower_order_final=False)
    published, err_pub = _fitted_order("vp", PublishedDPMSolverPP3M, order=3, lower_order_final=False)
    assert abs(published - 2) < 0.3, f"published 3M slope {published:.2f}"
    assert abs(ours - 3) < 0.3, f"our 3M slope {ours:.2f}"
    assert err_ours[-1] < 0.5 * err_pub[-1]


@pytest.mark.parametrize("order,steps,algorithm", [(2, 10, "dpmsolver++"), (2, 20, "dpmsolver++"), (3, 10, "dpmsolver++"),
                                                  (3, 25, "dpmsolver++"), (2, 10, "dpmsolver")])
def test_agrees_with_diffusers_and_the_contrast_is_the_published_3m(order, steps, algorithm):
    # diffusers' DPMSolverMultistepScheduler on the same 1000-step linear schedule (our
    # DiscreteVPSDE), its time steps as our grid (index k <-> t = (k + 1)/1000) and its final
    # 'sigma_min' step to t = 1/1000; it lowers the final orders only below 15 steps. Its 2M is ours;
    # its 3M is the published update (PublishedDPMSolverPP3M), not ours. The scheduler keeps its
    # sigmas in float32: 1e-4 relative is 100x the float32 rounding it accumulates over 25 steps.
    diffusers = pytest.importorskip("diffusers")
    sde = sd.DiscreteVPSDE()
    model, x_T = _setup(sde, batch=16)
    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, solver_order=order,
        algorithm_type=algorithm, final_sigmas_type="sigma_min", lower_order_final=True)
    sched.set_timesteps(steps)
    x = x_T.clone()
    for k in sched.timesteps:
        x = sched.step(model.eps(x, (int(k) + 1) / 1000), k, x).prev_sample
    times = torch.cat([(sched.timesteps.double() + 1) / 1000, torch.tensor([1e-3], dtype=torch.float64)])
    ours = PublishedDPMSolverPP3M if order == 3 else ("dpm_solver++" if algorithm == "dpmsolver++" else "dpm_solver")
    out = sample(model, sde, ours, x_T=x_T, grid=times, order=order, lower_order_final=steps < 15).samples
    assert float((out - x).norm() / x.norm()) < 1e-4
    # the default lower_order_final=None is diffusers' rule: the same run without the option
    default = sample(model, sde, ours, x_T=x_T, grid=times, order=order).samples
    torch.testing.assert_close(default, out, rtol=0, atol=0)
    if order == 3:  # and the corrected 3M differs from it by far more than that
        corrected = sample(model, sde, "dpm_solver++", x_T=x_T, grid=times, order=3, lower_order_final=steps < 15).samples
        assert float((corrected - x).norm() / x.norm()) > 1e-3


def test_lower_order_final_declares_the_cap():
    # The last step at order 1 has local error O(h^2): the declared global order is at most 2.
    # The default None lowers below 15 steps only; convergence_order is the order from 15 steps on.
    for name in NAMES:
        cls = sd.samplers.get_sampler(name)
        for variant in ("multistep", "singlestep"):
            forced = cls(order=3, variant=variant, lower_order_final=True)
            assert forced.convergence_order == 2 and forced.step_orders(20)[-2:] == [2, 1]
            assert cls(order=3, variant=variant, lower_order_final=False).convergence_order == 3
            default = cls(order=3, variant=variant)
            assert default.convergence_order == 3 == default.convergence_order_for(15)
            assert default.convergence_order_for(14) == 2
            assert default.step_orders(14)[-2:] == [2, 1] and default.step_orders(15)[-2:] == [3, 3]


def test_lower_order_final_changes_the_result_at_second_order():
    # What lower_order_final changes in 3M (a first-order last step, a second-order one before it)
    # is a local error O(h^2): the difference of the two runs falls with slope 2 (measured 1.9-2.0
    # over 160..640 steps; below ~100 steps the O(h^3) part of the second-to-last step still shows).
    sde = sd.VPSDE()
    model, x_T = _setup(sde)
    steps = [160, 320, 640]
    diffs = []
    for n in steps:
        runs = [sample(model, sde, "dpm_solver++", n, x_T=x_T, order=3, lower_order_final=lof).samples
                for lof in (True, False)]
        diffs.append(float((runs[0] - runs[1]).norm(dim=1).median()))
    slope = empirical_order(steps, diffs)
    assert abs(slope - 2) < 0.3, f"slope {slope:.2f}, differences {diffs}"


# ----- thresholding -------------------------------------------------------------------------------
def test_dynamic_threshold_matches_its_definition():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.stack([
        0.4 * torch.rand(3, 4, 4, generator=gen, dtype=torch.float64) - 0.2,   # inside [-1, 1]: s = 1
        torch.linspace(-4, 4, 48, dtype=torch.float64).reshape(3, 4, 4),      # s = quantile of |x0|
        6 * torch.randn(3, 4, 4, generator=gen, dtype=torch.float64),
    ])
    for p, max_value in [(0.995, math.inf), (0.9, math.inf), (0.995, 2.0), (0.5, 1.0), (0.995, 0.5)]:
        out = dynamic_threshold(x0, p, max_value)
        q = np.quantile(x0.abs().reshape(3, -1).numpy(), p, axis=1)  # independent: numpy's linear rule
        s = torch.from_numpy(np.minimum(np.maximum(q, 1.0), max_value)).reshape(3, 1, 1, 1)
        torch.testing.assert_close(out, x0.clamp(-s, s) / s, rtol=1e-14, atol=1e-14)
        assert out.abs().max() <= 1.0
        if max_value >= 1:
            torch.testing.assert_close(out[0], x0[0], rtol=0, atol=0)  # already inside: untouched
        else:  # s = max_value for every sample: a clip to [-0.5, 0.5] rescaled to [-1, 1]
            torch.testing.assert_close(out, x0.clamp(-max_value, max_value) / max_value, rtol=1e-15, atol=0)


def test_thresholding_acts_on_the_data_prediction():
    # A model whose data prediction is the constant 5: thresholding makes it 1, and one first-order
    # step is then exactly sigma_s/sigma_t x + alpha_s (1 - e^{-h}) * 1.
    sde = sd.VPSDE()
    model = sd.ScoreModel(lambda x, t: torch.full_like(x, 5.0), sde, "x0")
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = torch.tensor([0.8, 0.5], dtype=torch.float64)
    out = sample(model, sde, "dpm_solver++", x_T=x_T, grid=times, order=1, thresholding=True).samples
    (a_t, a_s), (s_t, s_s) = (v.tolist() for v in sde.alpha_sigma(times))
    h = float(sde.lam(times[1]) - sde.lam(times[0]))
    torch.testing.assert_close(out, s_s / s_t * x_T + a_s * (-math.expm1(-h)), rtol=1e-13, atol=1e-13)
    plain = sample(model, sde, "dpm_solver++", x_T=x_T, grid=times, order=1).samples
    torch.testing.assert_close(plain, s_s / s_t * x_T + a_s * (-math.expm1(-h)) * 5.0, rtol=1e-13, atol=1e-13)


# ----- NFE, recorded orders, conformance -------------------------------------------------------------
def _expected_orders(order, variant, lower_order_final, steps):
    lower = steps < 15 if lower_order_final is None else lower_order_final
    orders = []
    for i in range(steps):
        k = order if variant == "singlestep" else min(order, i + 1)
        orders.append(min(k, steps - i) if lower else k)
    return orders


def _gaussian_model(sde, mean=0.5, std=0.7):
    """Exact score of N(mean, std^2 I) data in any shape (for (B, C, H, W) runs)."""
    def fn(x, t):
        alpha, sigma = (append_dims(v, x.ndim) for v in sde.alpha_sigma(t))
        return -(x - alpha * mean) / (alpha**2 * std**2 + sigma**2)
    return sd.ScoreModel(fn, sde, "score")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("variant", ["multistep", "singlestep"])
def test_nfe_orders_and_steps_are_as_declared(name, variant):
    sde = sd.VPSDE()
    model = _gaussian_model(sde)
    x_T = sde.prior_sample((3, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    for order in (1, 2, 3):
        for lof in (None, True, False):
            sampler = sd.samplers.get_sampler(name)(order=order, variant=variant, lower_order_final=lof)
            assert sampler.calls_per_step == (1 if variant == "multistep" else order)
            for steps in (1, 2, 3, 5) + ((15,) if lof is None else ()):
                res = sample(model, sde, name, steps, x_T=x_T, order=order, variant=variant,
                             lower_order_final=lof, return_trajectory=True)
                expected = _expected_orders(order, variant, lof, steps)
                assert res.stats["orders"] == expected
                assert res.nfe == sampler.expected_nfe(steps) == (steps if variant == "multistep" else sum(expected))
                assert res.trajectory.shape == (steps + 1, 3, 1, 2, 2)  # ctx.step once per grid step
                assert res.samples.dtype == torch.float32 and res.samples.shape == x_T.shape


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_for_any_step_count_order_and_final_option(name):
    sde = sd.VPSDE()
    model = _gaussian_model(sde)
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for variant in ("multistep", "singlestep"):
        for order in (1, 2, 3):
            for lof in (True, False):
                # 1000 steps once per configuration family is enough to show small-h stability.
                counts = (1, 2, 3, 5, 8, 11, 14, 20) + ((1000,) if lof and variant == "multistep" else ())
                for steps in counts:
                    out = sample(model, sde, name, steps, x_T=x_T, order=order, variant=variant,
                                 lower_order_final=lof, grid="uniform").samples
                    assert torch.isfinite(out).all(), (variant, order, lof, steps)


def test_every_sde_agrees_with_a_fine_solution(any_sde):
    # 3M at 40 log-SNR steps, both predictions, on every SDE of the family, against a 400-step
    # singlestep-3 solution (a different algorithm, error ~1e-8 there): within 1e-2, where the VP
    # runs above have median error ~1e-4 at 40 steps; this only guards gross mistakes per SDE.
    # (Not dopri5: the piecewise-linear log alpha of DiscreteVPSDE stalls it at rtol 1e-10.)
    model, x_T = _setup(any_sde, batch=8)
    fine = sample(model, any_sde, "dpm_solver++", 400, x_T=x_T, order=3, variant="singlestep",
                  lower_order_final=False).samples
    for name in NAMES:
        out = sample(model, any_sde, name, 40, x_T=x_T, order=3, lower_order_final=False).samples
        assert float((out - fine).norm(dim=1).median()) < 1e-2, name


# ----- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,match", [
    (dict(order=4), "order"),
    (dict(order=0), "order"),
    (dict(order=True), "order"),
    (dict(order=2.0), "order"),
    (dict(variant="adaptive"), "variant"),
    (dict(solver_type="midpoint"), "solver_type"),
    (dict(lower_order_final="yes"), "lower_order_final"),
    (dict(lower_order_final=1), "lower_order_final"),
])
@pytest.mark.parametrize("name", NAMES)
def test_bad_options_raise(name, options, match):
    sde = sd.VPSDE()
    # one policy (scoresde.checks): a flag that is not True/False is a TypeError, other bad values ValueErrors
    exc = TypeError if match == "lower_order_final" else ValueError
    with pytest.raises(exc, match=match):
        sample(_gaussian_model(sde), sde, name, 5, shape=(2, 2), **options)


@pytest.mark.parametrize("options,match", [
    (dict(thresholding=True, percentile=0.0), "percentile"),
    (dict(thresholding=True, percentile=1.5), "percentile"),
    (dict(thresholding=True, max_value=0.0), "max_value"),
    (dict(thresholding=True, max_value=-1.0), "max_value"),
    (dict(thresholding=True, max_value=float("nan")), "max_value"),
    (dict(thresholding="on"), "thresholding"),
])
def test_bad_thresholding_options_raise(options, match):
    # one policy (scoresde.checks): a flag that is not True/False is a TypeError, other bad values ValueErrors
    with pytest.raises(TypeError if options["thresholding"] == "on" else ValueError, match=match):
        DPMSolverPP(**options)


def test_thresholding_is_for_the_data_prediction_only():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="thresholding.*dpm_solver\\+\\+"):
        sample(_gaussian_model(sde), sde, "dpm_solver", 5, shape=(2, 2), thresholding=True)
    with pytest.raises(ValueError, match="thresholding"):
        DPMSolver(thresholding=True)
