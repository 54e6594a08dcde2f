"""The linear multistep sampler and the solver fit: identities with DDIM and DPM-Solver-2M, the
declared order, the fit's gradients against finite differences, what a fit buys on held-out
starting points, save/load, and bad input. float64 on the exact mixture oracle throughout."""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.samplers import sample
from scoresde.samplers.linear_multistep import ddim_increments, dpm_solver_2m_coefficients
from scoresde.studies.common import reference_pf_ode
from scoresde.studies.solver_fit import FittedSolver, fit_linear_multistep, times_of_lam


def _setup(sde_name="vp", batch=32, seed=0, name="gaussian_mixture_2d"):
    sde = sd.make_sde(sde_name)
    model = toy.mixture(name).model(sde)
    x_T = sde.prior_sample((batch, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sde, model, x_T


# ----- identities ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
@pytest.mark.parametrize("grid", ["logsnr", "uniform", "karras"])
def test_default_coefficients_are_dpm_solver_2m(sde_name, grid):
    # Same map, written as y = x/alpha increments here and as an exponential-integrator step there;
    # float64 rounding over a dozen steps stays below 1e-12 (the first step multiplies by
    # alpha_1/alpha_T ~ 1e2 on VP), so 1e-10 leaves room only for a real difference.
    sde, model, x_T = _setup(sde_name)
    for steps in (1, 2, 3, 12):
        ours = sample(model, sde, "linear_multistep", steps, x_T=x_T, grid=grid).samples
        ref = sample(model, sde, "dpm_solver", steps, x_T=x_T, grid=grid, order=2, lower_order_final=False).samples
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10, msg=f"{sde_name} {grid} {steps} steps")


def test_diagonal_ddim_coefficients_are_ddim():
    sde, model, x_T = _setup()
    times = sd.grids.make_grid("logsnr", sde, 10)
    C = torch.diag(ddim_increments(sde.lam(times)))
    ours = sample(model, sde, "linear_multistep", x_T=x_T, grid=times, coefficients=C).samples
    torch.testing.assert_close(ours, sample(model, sde, "ddim", x_T=x_T, grid=times).samples, rtol=0, atol=1e-10)


def test_default_order_is_two():
    # Error against a tight dopri5 reference from the same x_T at 16..64 log-SNR steps: the asymptotic
    # range of 2M on this mixture (tests/test_dpm_solver.py uses the same); slope within 0.3 of 2.
    sde, model, x_T = _setup(batch=64)
    ref = reference_pf_ode(model, x_T, float(sde.T), float(sde.t_min), tol=1e-11).x
    steps = [16, 24, 32, 48, 64]
    errs = [float((sample(model, sde, "linear_multistep", n, x_T=x_T).samples - ref).norm(dim=1).median()) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - 2) < 0.3, f"slope {slope:.2f}, errors {errs}"
    assert sd.samplers.get_sampler("linear_multistep")().convergence_order == 2
    assert sd.samplers.get_sampler("linear_multistep")(coefficients=torch.eye(3)).convergence_order is None


def test_one_call_per_step_and_keeps_dtype():
    sde, model, x_T = _setup()
    res = sample(model, sde, "linear_multistep", 7, x_T=x_T.float())
    assert res.nfe == 7 and res.samples.dtype == torch.float32


# ----- the fit -------------------------------------------------------------------------------------
def test_times_of_lam_is_the_grid_with_pinned_ends():
    sde, _, _ = _setup()
    times = sd.grids.make_grid("quadratic", sde, 6)
    got = times_of_lam(sde, sde.lam(times), T=float(times[0]), t_min=float(times[-1]))
    assert float(got[0]) == float(times[0]) and float(got[-1]) == float(times[-1])
    torch.testing.assert_close(got, times, rtol=1e-12, atol=0)


def test_gradients_match_finite_differences():
    # d(loss)/d(C_ij) and d(loss)/d(lam_k) by autograd through sample(grad=True) (through the oracle,
    # and through t(lam) by the implicit-function rule) against central differences with step 1e-6:
    # the truncation error is O(1e-12) relative, rounding O(1e-16/1e-6 = 1e-10); 1e-5 relative
    # separates a wrong chain rule.
    sde, model, x_T = _setup(batch=8)
    times = sd.grids.make_grid("logsnr", sde, 4)
    lam = sde.lam(times).clone()
    C = dpm_solver_2m_coefficients(lam).clone()
    target = torch.zeros_like(x_T)
    T, t_min = float(times[0]), float(times[-1])

    def loss(lam_, C_):
        grid = times_of_lam(sde, lam_, T=T, t_min=t_min)
        x = sample(model, sde, "linear_multistep", x_T=x_T, grid=grid, coefficients=C_, grad=True).samples
        return (x - target).norm(dim=1).mean()

    lam_v, C_v = lam.clone().requires_grad_(True), C.clone().requires_grad_(True)
    loss(lam_v, C_v).backward()
    step = 1e-6
    # (1, 0) is zero in DPM-Solver-2M's C: a C that requires grad still gets its gradient there
    for (i, j) in [(0, 0), (2, 1), (3, 3), (3, 0)]:
        E = torch.zeros_like(C)
        E[i, j] = step * max(abs(float(C[i, j])), 1.0)
        fd = (loss(lam, C + E) - loss(lam, C - E)) / (2 * E[i, j])
        assert float(C_v.grad[i, j]) == pytest.approx(float(fd), rel=1e-5), (i, j)
    assert float(C_v.grad[3, 0]) != 0.0
    for k in (1, 2, 3):
        E = torch.zeros_like(lam)
        E[k] = step
        fd = (loss(lam + E, C) - loss(lam - E, C)) / (2 * step)
        assert float(lam_v.grad[k]) == pytest.approx(float(fd), rel=1e-5), k


@pytest.fixture(scope="module")
def fitted():
    # eight Gaussians (well separated: the hard case for few steps), 4 steps, calibration and held-out
    # starting points from different seeds, references at dopri5 1e-10.
    sde, model, x_cal = _setup(batch=128, seed=1, name="eight_gaussians")
    _, _, x_val = _setup(batch=256, seed=2, name="eight_gaussians")
    T, t_min = float(sde.T), float(sde.t_min)
    ref_cal = reference_pf_ode(model, x_cal, T, t_min, tol=1e-10).x
    ref_val = reference_pf_ode(model, x_val, T, t_min, tol=1e-10).x
    nfe0 = model.nfe
    fs = fit_linear_multistep(model, 4, x_cal, ref_cal, iterations=150, x_valid=x_val, ref_valid=ref_val)
    return sde, model, fs, x_val, ref_val, model.nfe - nfe0


def test_fit_cuts_the_held_out_error(fitted):
    sde, model, fs, x_val, ref_val, _ = fitted
    # DPM-Solver-2M on the log-SNR grid at 4 steps: mean error 0.059 on these held-out points; the fit
    # measures 0.018 there (0.054 -> 0.016 on its own points). It must at least halve the error on
    # points it never saw, not only on its own.
    assert fs.calib_error < fs.calib_error_initial / 2
    assert fs.valid_error < fs.valid_error_initial / 2, (fs.valid_error_initial, fs.valid_error)
    res = fs.sample(model, x_T=x_val)
    assert res.nfe == 4 and res.convergence_order is None
    assert float((res.samples - ref_val).norm(dim=1).mean()) == pytest.approx(fs.valid_error, rel=1e-9)
    # it beats every named grid under DPM-Solver-2M, the solver it started from
    for g in sd.grids.available():
        base = sample(model, sde, "dpm_solver", 4, x_T=x_val, grid=g, order=2, lower_order_final=False).samples
        assert fs.valid_error < float((base - ref_val).norm(dim=1).mean()), g


def test_fit_records_its_cost_and_a_valid_grid(fitted):
    sde, _, fs, _, _, spent = fitted
    assert fs.fit_nfe == 151 * 4 and spent == fs.fit_nfe  # one forward pass per iteration, + the last
    assert len(fs.history) == 151 and fs.calib_error == min(fs.history)
    assert float(fs.times[0]) == float(sde.T) and float(fs.times[-1]) == float(sde.t_min)
    assert bool((torch.diff(fs.times) < 0).all())
    assert torch.equal(fs.coefficients, fs.coefficients.tril())


def test_save_and_load_round_trip(fitted, tmp_path):
    _, model, fs, x_val, _, _ = fitted
    path = tmp_path / "solver.pt"
    fs.save(path)
    back = FittedSolver.load(path)
    assert torch.equal(back.times, fs.times) and torch.equal(back.coefficients, fs.coefficients)
    assert back.history == fs.history and back.config == fs.config
    assert [p.name for p in tmp_path.iterdir()] == ["solver.pt"]  # no temporary file left behind
    torch.testing.assert_close(back.sample(model, x_T=x_val).samples, fs.sample(model, x_T=x_val).samples,
                               rtol=0, atol=0)


def test_fit_without_moving_the_grid_keeps_it():
    sde, model, x_cal = _setup(batch=32, seed=1)
    ref = reference_pf_ode(model, x_cal, float(sde.T), float(sde.t_min), tol=1e-10).x
    fs = fit_linear_multistep(model, 3, x_cal, ref, iterations=20, fit_grid=False, init_grid="quadratic")
    torch.testing.assert_close(fs.times, sd.grids.make_grid("quadratic", sde, 3), rtol=0, atol=1e-12)
    assert fs.calib_error <= fs.calib_error_initial


# ----- bad input -----------------------------------------------------------------------------------
def test_bad_coefficients():
    sde, model, x_T = _setup()
    with pytest.raises(ValueError, match="coefficients: entry \\(0, 1\\) is above the diagonal"):
        sample(model, sde, "linear_multistep", 3, x_T=x_T, coefficients=torch.ones(3, 3))
    with pytest.raises(ValueError, match="coefficients: expected a square"):
        sample(model, sde, "linear_multistep", 3, x_T=x_T, coefficients=torch.ones(3, 2))
    with pytest.raises(ValueError, match="coefficients: contains NaN"):
        sample(model, sde, "linear_multistep", 2, x_T=x_T, coefficients=torch.tensor([[1.0, 0.0], [math.nan, 1.0]]))
    with pytest.raises(ValueError, match="coefficients: fitted for 3 steps, but the grid has 5"):
        sample(model, sde, "linear_multistep", 5, x_T=x_T, coefficients=torch.eye(3))


def test_fit_bad_input():
    sde, model, x = _setup(batch=4)
    with pytest.raises(ValueError, match="steps: expected a positive integer"):
        fit_linear_multistep(model, 0, x, x)
    with pytest.raises(ValueError, match="iterations"):
        fit_linear_multistep(model, 2, x, x, iterations=-1)
    with pytest.raises(ValueError, match="lr_grid"):
        fit_linear_multistep(model, 2, x, x, lr_grid=0.0)
    with pytest.raises(ValueError, match="ref_calib: shape"):
        fit_linear_multistep(model, 2, x, x[:2])
    with pytest.raises(ValueError, match="x_valid, ref_valid"):
        fit_linear_multistep(model, 2, x, x, x_valid=x)
