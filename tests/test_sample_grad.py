"""Differentiable sampling: ``sample(..., grad=True)`` against central differences, in float64.

Each check compares the autograd directional derivative ``grad L . v`` of a scalar loss of the samples
with ``(L(p + h v) - L(p - h v)) / (2h)`` for a random direction ``v``. With h = 1e-6 the truncation
error is O(h^2) = 1e-12 relative and the rounding error O(1e-16 / h) = 1e-10, so 1e-6 relative
separates a missing or wrong chain rule (which is off by O(1)) from agreement.
"""
import pytest
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import scoresde as sd
from scoresde.samplers import sample
from scoresde.samplers.linear_multistep import dpm_solver_2m_coefficients

H = 1e-6
RTOL = 1e-6

# every sampler of this part, deterministic and stochastic (the noise is a fixed function of the seed)
CASES = [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {}), ("euler_maruyama", {}), ("heun", {}),
         ("heun", {"S_churn": 10.0}), ("pc", {}), ("pc", {"predictor": "ancestral", "corrector": "annealed_langevin"}),
         ("linear_multistep", {})]
IDS = [f"{m}[{','.join(f'{k}={v}' for k, v in o.items()) or 'default'}]" for m, o in CASES]


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()


def mlp_model(net, sde):
    return sd.ScoreModel(lambda x, t: net(torch.cat([x, t[:, None]], dim=1)), sde, "eps")


@pytest.fixture(scope="module")
def problem():
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(5, 2, generator=g, dtype=torch.float64)
    w = torch.randn(5, 2, generator=g, dtype=torch.float64)  # the loss is <w, samples>
    return sde, x_T, w


def _loss(model, sde, method, opts, x_T, w, grad, steps=3, **kw):
    res = sample(model, sde, method, steps, x_T=x_T, grad=grad, generator=torch.Generator().manual_seed(7),
                 **opts, **kw)
    return (w * res.samples).sum()


@pytest.mark.parametrize("method, opts", CASES, ids=IDS)
def test_gradient_with_respect_to_the_network_parameters(problem, method, opts):
    sde, x_T, w = problem
    net = tiny_net()
    model = mlp_model(net, sde)
    _loss(model, sde, method, opts, x_T, w, True).backward()
    g = parameters_to_vector(p.grad for p in net.parameters())
    assert float(g.norm()) > 0
    p0 = parameters_to_vector(net.parameters()).detach().clone()
    v = torch.randn(p0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        vector_to_parameters(p0 + H * v, net.parameters())
        up = _loss(model, sde, method, opts, x_T, w, False)
        vector_to_parameters(p0 - H * v, net.parameters())
        down = _loss(model, sde, method, opts, x_T, w, False)
        vector_to_parameters(p0, net.parameters())
    assert float(g @ v) == pytest.approx(float((up - down) / (2 * H)), rel=RTOL)


@pytest.mark.parametrize("method, opts", CASES, ids=IDS)
def test_gradient_with_respect_to_x_T(problem, method, opts):
    sde, x_T, w = problem
    model = mlp_model(tiny_net(), sde)
    x = x_T.clone().requires_grad_(True)
    _loss(model, sde, method, opts, x, w, True).backward()
    v = torch.randn(x_T.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    up = _loss(model, sde, method, opts, x_T + H * v, w, False)
    down = _loss(model, sde, method, opts, x_T - H * v, w, False)
    assert float((x.grad * v).sum()) == pytest.approx(float((up - down) / (2 * H)), rel=RTOL)


def test_gradient_with_respect_to_linear_multistep_coefficients(problem):
    sde, x_T, w = problem
    model = mlp_model(tiny_net(), sde)
    times = sd.grids.make_grid("logsnr", sde, 3)
    C0 = dpm_solver_2m_coefficients(sde.lam(times))
    C = C0.clone().requires_grad_(True)
    _loss(model, sde, "linear_multistep", {"coefficients": C}, x_T, w, True, grid=times, steps=None).backward()
    v = torch.randn(C0.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).tril()
    scale = float(C0.abs().max())
    up = _loss(model, sde, "linear_multistep", {"coefficients": C0 + H * scale * v}, x_T, w, False, grid=times,
               steps=None)
    down = _loss(model, sde, "linear_multistep", {"coefficients": C0 - H * scale * v}, x_T, w, False, grid=times,
                 steps=None)
    assert float((C.grad * v).sum()) == pytest.approx(float((up - down) / (2 * H * scale)), rel=RTOL)
    # the entry (2, 0) is zero in DPM-Solver-2M's C and still gets its gradient
    assert float(C.grad[2, 0]) != 0.0


def test_without_grad_there_is_no_graph(problem):
    sde, x_T, _ = problem
    model = mlp_model(tiny_net(), sde)
    res = sample(model, sde, "ddim", 3, x_T=x_T.clone().requires_grad_(True))
    assert not res.samples.requires_grad
