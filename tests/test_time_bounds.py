"""The model is only ever evaluated inside the run's own interval [t_min, T].

Registry-wide: every registered sampler with each of its ``conformance_options`` (defaults where it
lists none), on VP, sub-VP, VE and the 1000-step DiscreteVPSDE, plus ``log_likelihood`` with every
backend. A spy network records every time it is handed; all must lie in [t_min, T] of the run, with
no tolerance. Outside the interval alpha and sigma may not exist (past t = 0, or past 1 where alpha
vanishes), and DiscreteVPSDE's schedule is not defined past its last knot; an adaptive solver's
first-step heuristic used to probe t ~ -22 there.
"""
from __future__ import annotations

import pytest
import torch

import scoresde as sd
from scoresde import toy
from scoresde.likelihood import log_likelihood
from scoresde.samplers import SAMPLERS, available, sample

SDES = {"vp": sd.VPSDE, "subvp": sd.SubVPSDE, "ve": sd.VESDE, "discrete": sd.DiscreteVPSDE}
MIX = toy.mixture("eight_gaussians")


def spy_model(sde):
    """The exact eight-Gaussians score, recording the (B,) times it is called with."""
    seen: list[torch.Tensor] = []

    def fn(x, t):
        seen.append(t.detach().to(torch.float64).cpu())
        return MIX.score(x, t, sde)

    return sd.ScoreModel(fn, sde, "score"), seen


def assert_inside(seen, lo, hi, what):
    assert seen, f"{what}: the model was never called"
    t = torch.cat(seen)
    assert float(t.min()) >= lo and float(t.max()) <= hi, \
        f"{what}: the model saw t in [{float(t.min())!r}, {float(t.max())!r}], outside [{lo!r}, {hi!r}]"


def run(name, opts, sde, steps, **kw):
    """Sample 4 points; adaptive solvers at a loose tolerance (their probes, not their accuracy, matter here)."""
    model, seen = spy_model(sde)
    cls = SAMPLERS[name]
    loose = {k: 1e-3 for k in ("rtol", "atol") if k in cls.option_names() and k not in opts}
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = cls(**opts)
    sample(model, sde, name, None if sampler.adaptive else steps, x_T=x_T,
           generator=torch.Generator().manual_seed(1), **opts, **loose, **kw)
    return sampler, seen


def variants():
    for name in available():
        for opts in getattr(SAMPLERS[name], "conformance_options", None) or [{}]:
            yield pytest.param(name, opts, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in opts.items()) or 'default'}")


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name, opts", list(variants()))
def test_samplers_evaluate_inside_the_interval(name, opts, sde_name):
    sde = SDES[sde_name]()
    _, seen = run(name, opts, sde, 5)
    assert_inside(seen, sde.t_min, sde.T, f"{name} {opts} on {sde_name}")


@pytest.mark.parametrize("name, opts", list(variants()))
def test_samplers_respect_a_run_inside_the_sdes_interval(name, opts):
    # ends of the run's own choosing, away from the SDE's: nothing may pass the end the run asked for,
    # nor the start, except that a stochastic sampler may first add noise above its start (EDM's
    # churn) while staying below the SDE's T
    sde = sd.VPSDE()
    T, t_min = 0.7, 0.05
    sampler, seen = run(name, opts, sde, 4, T=T, t_min=t_min)
    assert_inside(seen, t_min, sde.T if sampler.stochastic else T, f"{name} {opts} on [{t_min}, {T}]")


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("backend, method, options", [
    ("torchdiffeq", "dopri5", {}),
    ("torchdiffeq", "rk4", {"step_size": 1.0}),
    ("scipy", "RK45", {}),
])
def test_likelihood_evaluates_inside_the_interval(sde_name, backend, method, options):
    sde = SDES[sde_name]()
    model, seen = spy_model(sde)
    x = MIX.sample(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = log_likelihood(model, x, backend=backend, method=method, options=options, rtol=1e-3, atol=1e-3)
    assert torch.isfinite(res.log_likelihood).all()
    assert_inside(seen, sde.t_min, sde.T, f"log_likelihood {backend} {method} on {sde_name}")
    # and within a narrower interval of the caller's choosing
    seen.clear()
    log_likelihood(model, x, t_min=0.05, T=0.7, backend=backend, method=method, options=options, rtol=1e-3, atol=1e-3)
    assert_inside(seen, 0.05, 0.7, f"log_likelihood {backend} {method} on [0.05, 0.7]")
