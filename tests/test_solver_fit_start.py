"""The fitted solver starts from any registered multistep solver and never returns worse than its start
(scoresde.studies.solver_fit, issue 23 item 2)."""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.samplers import SAMPLERS, sample
from scoresde.schedule import Schedule
from scoresde.studies.references import reference_pf_ode
from scoresde.studies.solver_fit import fit_linear_multistep, grid_of_lam


def _problem(batch, seed, reference=True):
    sde = sd.VPSDE()
    model = toy.mixture("eight_gaussians").model(sde)
    x_T = sde.prior_sample((batch, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if not reference:  # the fit's loss is then meaningless, but its start is what is checked
        return sde, model, x_T, torch.zeros_like(x_T)
    return sde, model, x_T, reference_pf_ode(model, x_T, float(sde.T), float(sde.t_min), tol=1e-10).x


@pytest.mark.parametrize("start", [("deis", {"order": 4}), ("ipndm", {"weights": "published"}), "ipndm"])
def test_zero_iterations_reproduce_the_start(start):
    sde, model, x, ref = _problem(16, 1, reference=False)
    fs = fit_linear_multistep(model, 6, x, ref, iterations=0, init_grid="time_rho2", init_solver=start)
    name, opts = start if isinstance(start, tuple) else (start, {})
    direct = sample(model, sde, name, 6, x_T=x, grid="time_rho2", **opts).samples
    assert torch.allclose(fs.sample(model, x_T=x).samples, direct, rtol=0, atol=1e-12)
    assert fs.config["init_solver"].startswith(name)


def test_start_coefficients_follow_the_grid_differentiably():
    # d C_deis / d lam by autograd against central differences (the fit moves the grid under the start's weights)
    sde = sd.VPSDE()
    lam0 = sde.lam(sd.grids.make_grid("time_rho2", sde, 5))
    deis = SAMPLERS["deis"](order=3)

    def C(lam):
        return deis.coefficient_matrix(Schedule.from_times(sde, grid_of_lam(sde, lam, T=1.0, t_min=1e-3)))

    lam = lam0.clone().requires_grad_(True)
    weights = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tril()
    (grad,) = torch.autograd.grad((C(lam) * weights).sum(), lam)
    for k in (1, 2, 4):
        E = torch.zeros_like(lam0)
        E[k] = 1e-6
        fd = float(((C(lam0 + E) - C(lam0 - E)) * weights).sum()) / 2e-6
        assert float(grad[k]) == pytest.approx(fd, rel=1e-5, abs=1e-9), k


def test_the_start_is_kept_when_held_out_points_do_not_confirm_the_fit():
    sde, model, x_cal, ref_cal = _problem(32, 1)
    _, _, x_val, ref_val = _problem(32, 2)
    start = ("deis", {"order": 3})
    # held-out "references" that are the start's own outputs: the start's held-out error is 0, so no fit can beat it
    own = sample(model, sde, "deis", 5, x_T=x_val, grid="logsnr", order=3).samples
    kept = fit_linear_multistep(model, 5, x_cal, ref_cal, iterations=10, init_solver=start, x_valid=x_val, ref_valid=own)
    assert kept.config["kept_start"] and kept.valid_error == kept.valid_error_initial < 1e-12
    assert kept.calib_error == kept.calib_error_initial
    assert torch.allclose(kept.sample(model, x_T=x_val).samples, own, rtol=0, atol=1e-12)
    # with the true references the same fit lowers both errors and is returned
    fitted = fit_linear_multistep(model, 5, x_cal, ref_cal, iterations=10, init_solver=start, x_valid=x_val, ref_valid=ref_val)
    assert not fitted.config["kept_start"]
    assert fitted.valid_error < fitted.valid_error_initial and fitted.calib_error < fitted.calib_error_initial


@pytest.mark.parametrize("start, match", [(("ddim", {}), "no linear multistep coefficients"),
                                          (("deis", {"prediction": "data"}), "data prediction"),
                                          (("deis", {"afs": True}), "no linear multistep"),
                                          (("deis", [1]), "expected a sampler name"),
                                          ("nope", "unknown sampler")])
def test_bad_init_solver(start, match):
    model, x = toy.mixture("eight_gaussians").model(sd.VPSDE()), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        fit_linear_multistep(model, 2, x, x, init_solver=start)
