"""Flow matching in the field's convention (issue 18 item 6): the map to Lipman et al.'s, the adapter, the grid.

The reference formulas are facebookresearch/flow_matching's ``CondOTProbPath`` (Lipman et al. 2023):
noise ``x_0`` at ``s = 0``, data ``x_1`` at ``s = 1``, ``x_s = s x_1 + (1 - s) x_0``, ``dx_s/ds = x_1 - x_0``.
"""
import pytest
import torch

import scoresde as sd
from scoresde.interop.flow_matching import from_lipman, lipman_model
from scoresde.losses import flow_matching_loss
from scoresde.samplers import sample
from scoresde.studies.references import reference_pf_ode

F64 = torch.float64


def _pairs(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = 2.0 + 0.5 * torch.randn(n, d, generator=g, dtype=F64)  # data
    x0 = torch.randn(n, d, generator=g, dtype=F64)  # noise
    t = torch.rand(n, generator=g, dtype=F64) * 0.99 + 0.005
    return x1, x0, t


def test_the_paths_are_one_random_variable_under_s_equals_one_minus_t():
    sde = sd.FlowMatchingSDE()
    x1, x0, t = _pairs()
    s = 1 - t
    condot = s[:, None] * x1 + (1 - s[:, None]) * x0
    ours = sde.alpha(t)[:, None] * x1 + sde.sigma(t)[:, None] * x0
    torch.testing.assert_close(ours, condot, rtol=0, atol=1e-15)


def test_the_adapted_conditional_velocity_is_the_loss_target_exactly():
    # u_L = x_1 - x_0 (CondOT's conditional velocity) seen through the adapter is our target eps - x_data:
    # the flow-matching loss of that model is zero
    sde = sd.FlowMatchingSDE()
    x1, x0, t = _pairs()
    model = lipman_model(lambda x, s: x1 - x0, sde)
    loss = flow_matching_loss(model, x1, t=t, noise=x0)
    # a sum of squared round-off: alpha' x + sigma' eps against x_1 - x_0, each ~1e-15, squared
    assert float(loss.abs().max()) < 1e-26


def _lipman_gaussian_velocity(m, v):
    """E[x_1 - x_0 | x_s = x] for data x_1 ~ N(m, v I) and noise x_0 ~ N(0, I) on CondOT's path."""

    def u(x, s):
        s = s[:, None]
        var = s**2 * v + (1 - s) ** 2  # Var(x_s)
        r = x - s * m
        e_x1 = m + s * v / var * r  # Cov(x_1, x_s) = s v
        e_x0 = (1 - s) / var * r  # Cov(x_0, x_s) = 1 - s
        return e_x1 - e_x0

    return u


def test_an_adapted_lipman_network_equals_the_exact_velocity():
    m, v = 0.7, 0.3**2
    sde = sd.FlowMatchingSDE()
    oracle = sd.toy.GaussianMixture([1.0], [[m, m]], [v]).model(sde)
    adapted = lipman_model(_lipman_gaussian_velocity(m, v), sde)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 2, generator=g, dtype=F64)
    t = torch.rand(32, generator=g, dtype=F64) * 0.99 + 0.005
    torch.testing.assert_close(adapted.velocity(x, t), oracle.velocity(x, t), rtol=1e-12, atol=1e-12)
    # unadapted (the sign and the time left as they are) it is another field
    assert (_lipman_gaussian_velocity(m, v)(x, t) - oracle.velocity(x, t)).abs().max() > 0.1
    # and both models sample the same thing
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    a = sample(adapted, sde, "dpm_solver++", 20, x_T=x_T).samples
    b = sample(oracle, sde, "dpm_solver++", 20, x_T=x_T).samples
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_adapter_input_checks():
    with pytest.raises(TypeError, match="u_lipman"):
        from_lipman(3)
    with pytest.raises(TypeError, match="sde: .* FlowMatchingSDE"):
        lipman_model(lambda x, s: x, sd.VPSDE())


def test_the_flow_path_defaults_to_the_quadratic_grid_and_others_keep_log_snr():
    assert sd.FlowMatchingSDE().default_grid == "quadratic"
    assert all(cls().default_grid == "logsnr" for cls in (sd.VPSDE, sd.VESDE, sd.SubVPSDE))
    for sde, name in ((sd.FlowMatchingSDE(), "quadratic"), (sd.VPSDE(), "logsnr")):
        model = sd.toy.mixture("eight_gaussians").model(sde)
        x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
        r = sample(model, sde, "ddim", 7, x_T=x_T)
        torch.testing.assert_close(r.times, sd.grids.make_grid(name, sde, 7), rtol=0, atol=0)


def test_the_default_grid_beats_log_snr_for_ddim_on_the_flow_path():
    # the measurement behind the default (FlowMatchingSDE's docstring), on fewer points
    sde = sd.FlowMatchingSDE()
    model = sd.toy.mixture("eight_gaussians").model(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = reference_pf_ode(model, x_T, sde.T, sde.t_min, tol=1e-9, estimate_error=False)

    def err(grid, n):
        return float((sample(model, sde, "ddim", n, x_T=x_T, grid=grid).samples - ref.x).norm(dim=1).mean())

    for n in (10, 80):
        assert err(None, n) < 0.75 * err("logsnr", n)
