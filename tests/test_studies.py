"""The studies end to end on small configurations, their numbers checked against theory.

All in float64 with the exact eight_gaussians oracle, so every reference is a closed form or a
tight-tolerance ODE solve whose own error is measured (and far below the tolerances used here).
"""
import math

import pytest
import torch
from matplotlib.figure import Figure

import scoresde as sd
from scoresde import plotting
from scoresde.samplers import available
from scoresde.studies import error_vs_steps, method_specs, orders, output, references
from scoresde.studies.ddim_limit import ddim_convergence, ddim_identity, eta_family, exp_euler_step
from scoresde.studies.grid_opt import grid_comparison, grid_from_logits
from scoresde.studies.trajectories import state_at, trajectories


@pytest.fixture(scope="module")
def mix():
    return sd.toy.mixture("eight_gaussians")


# ----- input checks ------------------------------------------------------------------------------
def test_parse_method_names_options_and_errors():
    m = method_specs.parse_method("ddim:eta=0.5")
    assert (m.name, m.opts, m.label) == ("ddim", {"eta": 0.5}, "ddim(eta=0.5)")
    assert method_specs.parse_method(("ddim", {"eta": 1})).opts == {"eta": 1}
    with pytest.raises(ValueError, match="unknown sampler 'nope'.*known samplers: .*ddim"):
        method_specs.parse_method("nope")
    with pytest.raises(ValueError, match="does not accept bogus"):
        method_specs.parse_method("ddim:bogus=1")
    with pytest.raises(ValueError, match="eta"):
        method_specs.parse_method("ddim:eta=-1")
    with pytest.raises(ValueError, match="duplicate"):
        method_specs.parse_methods(["ddim", "ddim"])


@pytest.mark.parametrize("steps, msg", [([], "non-empty"), ([4, 4], "strictly increasing"), ([8, 4], "strictly increasing"),
                                        ([0, 4], "positive"), ([2.5], "positive"), ("x", "positive")])
def test_check_steps_rejects(steps, msg):
    with pytest.raises(ValueError, match=msg):
        method_specs.check_steps(steps)


def test_check_grids_and_dir(tmp_path):
    assert method_specs.check_grids("karras") == ["karras"]
    with pytest.raises(ValueError, match="unknown name 'cosine'.*known grids"):
        method_specs.check_grids(["cosine"])
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        output.check_writable_dir(f / "sub")


def test_fit_order_recovers_a_power_law_and_skips_the_floor():
    steps = [4, 8, 16, 32, 64]
    errs = [3.0 * n**-2.0 for n in steps]
    fit = orders.fit_order(steps, errs)
    assert abs(fit.order - 2.0) < 1e-12
    # points within 10x of the floor are not used: the last one here
    fit = orders.fit_order(steps, errs[:-1] + [1e-9], floor=1e-9)
    assert fit.steps_used == [4, 8, 16, 32]


def test_empirical_and_median_order_recover_power_laws():
    steps = [16, 24, 32, 48]
    assert orders.empirical_order(steps, [2.0 * n**-3.0 for n in steps]) == pytest.approx(3.0, abs=1e-12)
    # per-sample orders 1, 2, 2, 4 (one column each): the median is 2, the mean error's slope would not be
    errs = [[n**-1.0, 5 * n**-2.0, n**-2.0, 40 * n**-4.0] for n in steps]
    assert orders.median_order(steps, errs) == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("steps, errors, match", [
    ([8, 16], [1e-2], "one error per step count"),
    ([8], [1e-2], "at least two"),
    ([8, 16], [1e-2, 0.0], "positive finite errors"),
    ([8, 16], [1e-2, float("nan")], "positive finite errors"),
    ([8, 8], [1e-2, 1e-3], "two distinct positive step counts"),
])
def test_loglog_fit_rejects(steps, errors, match):
    with pytest.raises(ValueError, match=match):
        orders.loglog_fit(steps, errors)


def test_plotting_and_jobs_leave_pyplot_and_the_backend_alone(tmp_path):
    # importing the figure code and drawing a figure must not import pyplot or choose a backend
    import subprocess
    import sys

    code = ("import sys, matplotlib\n"
            "before = matplotlib.rcParams._get_backend_or_none()\n"
            "import scoresde.studies.jobs, scoresde.plotting as p\n"
            "from types import SimpleNamespace as N\n"
            "rows = [{'method': 'm', 'grid': 'logsnr', 'nfe': n, 'error_test': 1.0 / n, 'nfe_budget': n} for n in (4, 8)]\n"
            "fig = p.plot_grid_comparison(N(rows=rows, gains=lambda: []))\n"
            f"fig.savefig({str(tmp_path / 'f.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
            "assert matplotlib.rcParams._get_backend_or_none() == before, 'backend changed'\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "f.png").stat().st_size > 0


def test_staged_output_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with output.staged_output(out) as (tmp, _):
            (tmp / "half.png").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    with output.staged_output(out) as (tmp, written):
        (tmp / "a.csv").write_text("x")
    assert [p.name for p in written] == ["a.csv"] and sorted(p.name for p in out.iterdir()) == ["a.csv"]


# ----- DDIM as the ODE limit ---------------------------------------------------------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.DiscreteVPSDE()], ids=["vp", "subvp", "discrete"])
def test_one_ddim_step_is_exponential_euler(mix, sde):
    model = mix.model(sde)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    rows = ddim_identity(model, x)
    for r in rows:
        # same step in two algebraic forms (x0 vs eps): a few roundings apart
        assert r["rel_diff"] < 50 * r["machine_eps"], r
        # DDIM's coefficient -sigma_s (e^h - 1) against quadrature of the PF ODE's g^2 / (2 sigma alpha)
        # (8-point Gauss-Legendre on >= 256 pieces: error far below 1e-9 for these smooth integrands)
        assert r["factor_rel_diff"] < 1e-9, r


def test_exp_euler_step_is_exact_for_a_gaussian():
    # a single Gaussian N(0, s0^2): eps(x_t, t) is linear in x and the PF ODE has the closed-form
    # solution x_s = x_t * sqrt(alpha_s^2 s0^2 + sigma_s^2) / sqrt(alpha_t^2 s0^2 + sigma_t^2); one
    # exponential-Euler step is not exact, but it must converge to it with order 1 in h.
    sde = sd.VPSDE()
    g = sd.toy.GaussianMixture([1.0], [[0.0, 0.0]], [0.3**2])
    model = g.model(sde)
    x = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    t = 0.5
    errs = []
    for h in (0.1, 0.05, 0.025):
        s = float(sde.t_of_lam(sde.lam(torch.tensor(t, dtype=torch.float64)) + h))
        a_t, s_t = (float(v) for v in sde.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        a_s, s_s = (float(v) for v in sde.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
        exact = x * math.sqrt(a_s**2 * 0.09 + s_s**2) / math.sqrt(a_t**2 * 0.09 + s_t**2)
        errs.append(float((exp_euler_step(model, x, t, s) - exact).abs().max()))
    # local error O(h^2): halving h divides it by about 4
    assert 3.0 < errs[0] / errs[1] < 5.0 and 3.0 < errs[1] / errs[2] < 5.0, errs


def test_ddim_converges_like_one_over_n(mix):
    sdes = {"VP": sd.VPSDE(), "discrete": sd.DiscreteVPSDE()}
    limit = ddim_convergence(sdes, mix, steps=(16, 32, 64, 128), n=16, ref_tol=1e-10, pairs=((1.0, 0.5),))
    for name, slope in limit.slopes().items():
        # exponential Euler is first order: slope -1 up to the pre-asymptotic curvature of a
        # 4-point fit (measured -1.0 to -1.06 on these configurations)
        assert -1.2 < slope < -0.9, (name, slope)
        study = limit.convergence[name]
        errs = [r["endpoint_error"] for r in study.rows]
        assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
        assert study.references["pf_ode"].error < 1e-3 * errs[-1]
    assert len(limit.rows()) == 8
    fig = plotting.plot_ddim_limit(limit)
    assert isinstance(fig, Figure)


def test_eta_family_improves_with_steps(mix):
    model = mix.model(sd.VPSDE())
    fam = eta_family(model, mix, etas=(0.0, 1.0), steps=(3, 30), n=200)
    for eta in (0.0, 1.0):
        lp = {r["steps"]: r["mean_log_density"] for r in fam.rows if r["eta"] == eta}
        # 3 steps leave samples between the modes (log-density far below the data's); 30 steps land
        # within 0.5 nats of the data's mean log-density (measured about 0.1 to 0.3 apart)
        assert lp[3] < lp[30] and abs(lp[30] - fam.data_log_density) < 0.5, (eta, lp, fam.data_log_density)
    assert fam.floors["w2"] > 0
    with pytest.raises(ValueError, match="etas"):
        eta_family(model, mix, etas=(1.5,), steps=(3,), n=10)


# ----- error against steps -----------------------------------------------------------------------
def test_error_vs_steps_orders_near_declared(mix):
    methods = ["ddim"] + [m for m in ("dpm_solver++", "heun") if m in available()]
    model = mix.model(sd.VPSDE())
    study = error_vs_steps(model, methods, [16, 32, 64, 128], n=16, ref_tol=1e-11, distribution=False)
    assert study.references["pf_ode"].error < 1e-8
    for label in methods:
        errs = [r["endpoint_error"] for r in study.rows if r["method"] == label]
        assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), (label, errs)
        fit = study.fits[(label, "logsnr")]
        declared = study.declared[label]
        # the fitted slope over 16..128 steps lies within 0.35 of the declared order (measured:
        # ddim 1.04, dpm_solver++ (2M) 2.0, heun 2.0; a sampler with a wrong coefficient drops a full order)
        assert fit is not None and abs(fit.order - declared) < 0.35, (label, fit, declared)
    assert "declared" in study.table()


def test_error_vs_steps_stochastic_and_distribution(mix):
    model = mix.model(sd.VPSDE())
    study = error_vs_steps(model, ["ddim:eta=1.0", "ddim"], [4, 32], n=128, mixture=mix, ref_tol=1e-8,
                           ref_sde_steps=512)
    rows = {(r["method"], r["steps"]): r for r in study.rows}
    # DDPM-type steps on the shared Brownian path converge strongly to the reverse SDE's path
    assert rows[("ddim(eta=1.0)", 32)]["endpoint_error"] < 0.5 * rows[("ddim(eta=1.0)", 4)]["endpoint_error"]
    assert rows[("ddim(eta=1.0)", 4)]["reference"] == "reverse_sde"
    # the exact log-density of the samples approaches the data's as steps grow
    for label in ("ddim", "ddim(eta=1.0)"):
        assert rows[(label, 4)]["mean_log_density"] < rows[(label, 32)]["mean_log_density"]
    assert study.floors["w2"] > 0 and study.data_log_density is not None
    fig = plotting.plot_error_vs_steps(study)
    assert isinstance(fig, Figure) and len(fig.axes) == 4


def test_error_vs_steps_rejects_bad_input(mix):
    model = mix.model(sd.VPSDE())
    with pytest.raises(ValueError, match="unknown sampler"):
        error_vs_steps(model, ["nope"], [4])
    with pytest.raises(ValueError, match="strictly increasing"):
        error_vs_steps(model, ["ddim"], [8, 4])
    with pytest.raises(ValueError, match="unknown name"):
        error_vs_steps(model, ["ddim"], [4], grids="nope")
    from scoresde.samplers import get_sampler

    adaptive = [n for n in available() if getattr(get_sampler(n)(), "adaptive", False)]
    for name in adaptive[:1]:
        with pytest.raises(ValueError, match="adaptive"):
            error_vs_steps(model, [name], [4])


# ----- grids -------------------------------------------------------------------------------------
def test_grid_from_logits_uniform_is_logsnr():
    sde = sd.VPSDE()
    g = grid_from_logits(sde, torch.zeros(6), sde.t_min, sde.T)
    ref = sd.grids.make_grid("logsnr", sde, 6)
    assert torch.allclose(g, ref, rtol=1e-12, atol=1e-14)


def test_optimised_grid_beats_named_grids_on_calibration(mix):
    comp = grid_comparison(mix.model(sd.VPSDE()), ["ddim"], [5], n_calib=32, n_test=32, max_evals=40, ref_tol=1e-9)
    named = [r for r in comp.rows if r["grid"] != "optimised"]
    opt = next(r for r in comp.rows if r["grid"] == "optimised")
    assert len(named) == len(sd.grids.available())
    # Nelder-Mead starts from the best named grid and only accepts improvements
    assert opt["error_calib"] <= min(r["error_calib"] for r in named) + 1e-15
    times = comp.optimised[("ddim", 5)]
    assert times[0] == sd.VPSDE().T and times[-1] == sd.VPSDE().t_min and (times[1:] < times[:-1]).all()
    assert comp.gains()[0]["gain"] > 0
    assert isinstance(plotting.plot_grid_comparison(comp), Figure)
    with pytest.raises(ValueError, match="stochastic"):
        grid_comparison(mix.model(sd.VPSDE()), ["ddim:eta=1.0"], [5])


def test_grid_comparison_with_a_fitted_solver(mix):
    # The fitted rows: one per budget, fitted on the calibration batch and measured on the test batch; the
    # fit starts from DPM-Solver-2M on the log-SNR grid and keeps its best iterate, so on its own points it
    # is never worse than that start (checked against the sampler directly).
    from scoresde.studies.grid_opt import FITTED

    model = mix.model(sd.VPSDE())
    comp = grid_comparison(model, ["dpm_solver:order=2,lower_order_final=False"], [4], n_calib=32, n_test=32,
                           optimise=False, ref_tol=1e-9, fit_solver=True, fit_iterations=40, grids=["logsnr"])
    fitted = [r for r in comp.rows if r["grid"] == "fitted"]
    assert [(r["method"], r["nfe"]) for r in fitted] == [(FITTED, 4)]
    start = next(r for r in comp.rows if r["grid"] == "logsnr")
    assert fitted[0]["error_calib"] <= start["error_calib"] + 1e-12
    assert [g["method"] for g in comp.gains()] == [start["method"]]  # no gain row for the fitted solver
    assert isinstance(plotting.plot_grid_comparison(comp), Figure)


# ----- trajectories ------------------------------------------------------------------------------
def test_trajectories_share_x_T_and_agree_at_the_end(mix, tmp_path):
    traj = trajectories(mix, sd.VPSDE(), n_paths=4, steps=20, sde_steps=40, n_frames=3, mesh=60, score_mesh=6,
                        n_samples=50)
    starts = [states[0] for _, states in traj.paths.values()]
    assert all(torch.equal(s, starts[0]) for s in starts)
    ode_end = traj.paths["PF ODE"][1][-1]
    ddim_end = traj.paths["DDIM, 20 steps"][1][-1]
    # DDIM with 20 steps is within ~0.05 of the ODE endpoint here (first order, C about 1)
    assert float((ddim_end - ode_end).norm(dim=1).mean()) < 0.15
    # p_T on the mesh is (almost) a normalised density: the square [-3.5, 3.5]^2 holds 99.9% of N(0, I)
    xs = traj.mesh[0]
    dx = float(xs[1] - xs[0])
    assert abs(float(traj.log_density[0].exp().sum()) * dx * dx - 1) < 0.02
    t_mid = 0.5 * (float(traj.paths["PF ODE"][0][3]) + float(traj.paths["PF ODE"][0][4]))
    times, states = traj.paths["PF ODE"]
    mid = state_at(times, states, t_mid)
    assert torch.allclose(mid, 0.5 * (states[3] + states[4]), atol=1e-6)
    assert isinstance(plotting.plot_trajectories(traj), Figure)
    from matplotlib.animation import PillowWriter

    plotting.animate_trajectories(traj).save(tmp_path / "a.gif", writer=PillowWriter(fps=2), dpi=30)
    assert (tmp_path / "a.gif").stat().st_size > 0
    assert len(traj.rows()) == sum(s.shape[0] * s.shape[1] for _, s in traj.paths.values())


# ----- the reference solver ----------------------------------------------------------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.DiscreteVPSDE()], ids=["vp", "ve", "discrete"])
def test_reference_pf_ode_against_the_gaussian_closed_form(sde):
    # For data N(m, s^2 I) the probability-flow ODE keeps z = (x_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2)
    # constant, so its solution is closed form. The reference (in lambda) must meet it to about its tolerance,
    # also on the 1000-knot discrete schedule, and its own error estimate must be within 10x of the true error
    # (measured at tol 1e-10: errors 1.3e-10 (VP, discrete), 3.7e-11 (VE); the estimates are about half).
    m, s2 = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3**2
    model = sd.toy.GaussianMixture([1.0], [m.tolist()], [s2]).model(sde)
    t0, t1 = float(sde.T), float(sde.t_min)
    (a0, a1), (s0, s1) = sde.alpha_sigma(torch.tensor([t0, t1], dtype=torch.float64))
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = a1 * m + torch.sqrt(a1**2 * s2 + s1**2) * (x_T - a0 * m) / torch.sqrt(a0**2 * s2 + s0**2)
    ref = references.reference_pf_ode(model, x_T, t0, t1, tol=1e-10)
    err = float((ref.x - exact).norm(dim=1).mean())
    assert err < 1e-8 * float(exact.norm(dim=1).mean()), (err, ref)
    assert ref.error < 1e-8 and err < 10 * max(ref.error, 1e-13), (err, ref.error)
    assert ref.nfe < 2000, ref.nfe  # the knots of DiscreteVPSDE do not stall the solver in lambda
