r"""The Anderson reverse-time SDE through ``torchsde.sdeint`` (Li et al. 2020; Kidger et al. 2021).

.. math::  dx = [f(t)\, x - g(t)^2 s(x, t)]\, dt + g(t)\, d\bar w, \qquad t: T \to t_{min},

integrated in the flipped time ``u = t_start - t``, where the drift changes sign and the diffusion
does not (:func:`scoresde.dynamics.reverse_drift`). torchsde steps with a fixed ``dt`` and interpolates
linearly between its steps; to follow an arbitrary grid exactly, ``sdeint`` is called once per grid
interval ``[t_start - t_i, t_start - t_{i+1}]`` with a ``dt`` above its length (one solver step
landing on its end; a solver's extra state, e.g. reversible Heun's, is carried to the next call).

Option ``solver`` (named so because ``sample``'s ``method`` names the sampler); weak order and model
calls per step for our additive noise (g depends on t only):

* ``euler``: 1, 2 calls;
* ``milstein``: 1, 2 calls (equal to Euler-Maruyama here: g does not depend on x);
* ``srk``: 2, 4 calls: torchsde's scheme for additive noise, Rossler's (2010) two-stage SRA1 (strong
  order 1.5, weak order 2), which evaluates its first stage twice; needs a path with
  ``levy_area_approximation='space-time'``;
* ``reversible_heun``: 1, 2 calls plus 1 at the start (a Stratonovich scheme, valid because with
  additive noise the Ito and Stratonovich SDEs coincide). It is only conditionally stable: like
  leapfrog, its parasitic mode grows on strongly contracting drifts, and the reverse drift near t_min
  contracts at a rate ~ g^2 / sigma^2, so it needs ~100 steps or more.

Each count includes the one drift evaluation with which ``sdeint`` checks the shapes of the SDE it is
given, once per call, i.e. once per grid step.

Noise: the user's torchsde Brownian path when ``sample`` got ``brownian=`` (its increments cast to
x's dtype and device), otherwise a ``BrownianInterval`` on x's dtype and device seeded from the
sampling generator.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..dynamics import AdditiveReverseSDE, ReverseSDE
from ..models import ScoreModel
from ..schedule import Schedule
from .base import BrownianNoise, Sampler, SamplingContext, register

# method -> (sde_type the torchsde solver integrates, noise_type declared, weak order, model calls per step)
METHODS = {"euler": ("ito", "additive", 1.0, 2), "milstein": ("ito", "additive", 1.0, 2),
           "srk": ("ito", "additive", 2.0, 4), "reversible_heun": ("stratonovich", "diagonal", 1.0, 2)}
_LEVY_AREA = {"srk": ("space-time", "davie", "foster")}


class _CastPath:
    """A Brownian path whose increments are cast to the state's dtype and device."""

    def __init__(self, path, like: torch.Tensor):
        self.path, self.dtype, self.device = path, like.dtype, like.device
        self.shape = path.shape
        self.levy_area_approximation = path.levy_area_approximation

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        out = self.path(ta, tb, return_U=return_U, return_A=return_A)
        if isinstance(out, tuple):
            return tuple(o.to(device=self.device, dtype=self.dtype) for o in out)
        return out.to(device=self.device, dtype=self.dtype)


@register
class TorchSDE(Sampler):
    name = "torchsde"
    stochastic = True
    # reversible Heun is left out of the registry-wide checks: it is only conditionally stable (above)
    # and 200 log-SNR steps on VP are not enough for it; its NFE and dtype are tested on their own
    conformance_options = [{"solver": s} for s in ("euler", "milstein", "srk")]

    def __init__(self, solver: str = "euler"):
        if solver not in METHODS:
            raise ValueError(f"solver: unknown torchsde method {solver!r}; known methods: {', '.join(METHODS)}")
        self.solver = solver
        self.sde_type, self.noise_type, self.convergence_order, self.calls_per_step = METHODS[solver]

    def expected_nfe(self, steps: int) -> int:
        # reversible Heun evaluates the drift once at the start to seed its extra state
        return self.calls_per_step * steps + (1 if self.solver == "reversible_heun" else 0)

    def run(self, model: ScoreModel, x: Tensor, schedule: Schedule, ctx: SamplingContext) -> Tensor:
        import torchsde

        if schedule.t.requires_grad:
            raise ValueError("grid: torchsde cannot differentiate with respect to the grid times (sdeint refuses "
                             "times that require grad); pass grid.detach(), or use a stepped sampler "
                             "(euler_maruyama, ddpm, ...) to differentiate the grid")
        shape = x.shape
        t_start = float(schedule.t[0])
        us = t_start - schedule.t  # flipped time, increasing from 0
        path = self._path(x, us, ctx)
        cls = ReverseSDE if self.noise_type == "diagonal" else AdditiveReverseSDE
        rsde = cls(model.sde, model.score, shape[1:], t_start, float(schedule.t[-1]), sde_type=self.sde_type)
        y = x.reshape(shape[0], -1)
        extra = None
        spans = us.to(device=x.device)  # once per run; the step lengths are read on the host's copy
        lengths = (us[1:] - us[:-1]).tolist()
        for i in range(schedule.steps):
            # dt above the interval: the solver's step is min(u0 + dt, u1) - u0, one step landing on u1
            ys, extra = torchsde.sdeint(rsde, y, spans[i:i + 2], bm=path, method=self.solver, dt=2 * lengths[i],
                                        adaptive=False, extra=True, extra_solver_state=extra)
            y = ys[-1]
            ctx.step(i, y.reshape(shape))
        return y.reshape(shape)

    def _path(self, x, us, ctx):
        import torchsde

        need = _LEVY_AREA.get(self.solver)
        if isinstance(ctx.noise, BrownianNoise):
            path = ctx.noise.path
            if need and path.levy_area_approximation not in need:
                raise ValueError(f"brownian: method {self.solver!r} needs a Brownian path with levy_area_approximation "
                                 f"in {need}, got {path.levy_area_approximation!r}; build it with "
                                 f"brownian_path(..., levy_area_approximation='space-time')")
            if path.dtype != x.dtype or path.device != x.device:
                path = _CastPath(path, x)
            return path
        gen = ctx.generator
        entropy = None
        if gen is not None:
            entropy = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
        span = float(us[-1])
        # dt: the mean step, torchsde's hint for building its search tree (queries made in order would
        # otherwise grow it into a chain)
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=(x.shape[0], math.prod(x.shape[1:])),
                                         dtype=x.dtype, device=x.device, entropy=entropy, dt=span / (len(us) - 1),
                                         levy_area_approximation=need[0] if need else "none")
