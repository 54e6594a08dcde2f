r"""The Anderson reverse-time SDE through ``torchsde.sdeint`` (Li et al. 2020; Kidger et al. 2021).

.. math::  dx = [f(t)\, x - g(t)^2 s(x, t)]\, dt + g(t)\, d\bar w,

integrated in the flipped time ``u = t_start - t`` (``sde.reverse_sde``), with fixed steps exactly on
the grid: ``sdeint`` is called once per grid interval ``[t_start - t_i, t_start - t_{i+1}]`` (one
solver step each; the solver's extra state, e.g. reversible Heun's, is carried from one call to the
next), so non-uniform grids are honoured without torchsde's linear interpolation between steps.

Option ``solver`` (named so because ``sample``'s ``method`` names the sampler); for our additive
noise, strong / weak order and model calls per step:

* ``euler``: 1 / 1, 1 call;
* ``milstein``: 1 / 1, 1 call (equal to Euler-Maruyama here: g does not depend on x);
* ``srk``: 1.5 / 1.5, 4 calls (the diagonal-noise SRI scheme of Rossler 2010, one call per stage:
  drifts are memoised, see :class:`_GridSDE`); needs a path with ``levy_area_approximation='space-time'``;
* ``reversible_heun``: 1 / 1, 1 call plus 1 at the start (a Stratonovich scheme, valid because with
  additive noise the Ito and Stratonovich SDEs coincide). It is only conditionally stable: like
  leapfrog, its parasitic mode grows on strongly contracting drifts, and the reverse drift near t_min
  contracts at a rate ~ g^2 / sigma^2. Measured on VP with a Gaussian target (RMS error against a fine
  EM solution on the same path, uniform grid): 60, 14, 1.7, 0.21, 0.025 at N = 16, 32, 64, 128, 256
  (EM: 0.22 ... 0.013), i.e. useless below ~100 steps, then converging fast.

The declared ``order`` is the weak order.

Noise: the user's torchsde Brownian path when ``sample`` got ``brownian=`` (its dtype/device cast to
x's), otherwise a ``BrownianInterval`` on x's dtype and device seeded from the sampling generator.
"""
from __future__ import annotations

import math

import torch

from .base import BrownianNoise, Sampler, register

# method -> (sde_type the torchsde solver integrates, weak order, model calls per step)
METHODS = {"euler": ("ito", 1.0, 1), "milstein": ("ito", 1.0, 1), "srk": ("ito", 1.5, 4),
           "reversible_heun": ("stratonovich", 1.0, 1)}
_LEVY_AREA = {"srk": ("space-time", "davie", "foster")}


class _GridSDE(torch.nn.Module):
    """The reverse SDE (:class:`scoresde.sde.ReverseSDE`, in the flipped time ``u = t_start - t``) under
    the sde_type a method needs, with g in y's dtype, for one grid interval at a time.

    ``sdeint`` first calls ``f`` once to check shapes (torchsde's ``check_contract``); after
    ``new_interval()`` that probe is answered with zeros, so it costs no model call. Drifts are
    memoised within the interval by (time, state object): torchsde's SRK re-evaluates the drift of
    every earlier stage inside each later one (10 calls for its 4 stages); with the memo a step
    costs one model call per stage. The coefficients f, g^2, g are Python floats, looked up at the
    grid's flipped times ``us`` (where every solver evaluates first) and computed elsewhere.
    """

    noise_type = "diagonal"

    def __init__(self, model, shape, t_start: float, us: torch.Tensor, sde_type: str):
        super().__init__()
        self.model, self.sde = model, model.sde
        self.shape, self.t_start = tuple(shape), t_start
        self.sde_type = sde_type
        self._probe = False
        self._memo: list = []
        t = t_start - us
        f, g2 = self.sde.f(t).tolist(), self.sde.g2(t).tolist()
        self._table = {u: (t_u, f_u, g2_u, math.sqrt(g2_u))
                       for u, t_u, f_u, g2_u in zip(us.tolist(), t.tolist(), f, g2, strict=True)}

    def _coeffs(self, u) -> tuple[float, float, float, float]:
        key = float(u)
        c = self._table.get(key)
        if c is None:
            t = self.t_start - key
            t64 = torch.tensor(t, dtype=torch.float64)
            f, g2 = float(self.sde.f(t64)), float(self.sde.g2(t64))
            c = t, f, g2, math.sqrt(g2)
        return c

    def new_interval(self):
        self._probe = True
        self._memo = []

    def f(self, u, y):
        if self._probe:
            self._probe = False
            return torch.zeros_like(y)
        key = float(u)
        for u_m, y_m, out in self._memo:
            if y_m is y and u_m == key:
                return out
        t, f, g2, _ = self._coeffs(key)
        x = y.reshape(self.shape)
        # in u the drift -(f x - g^2 s) changes sign; the diffusion g does not
        out = x.mul(-f).add_(self.model.score(x, t), alpha=g2).reshape(y.shape)
        self._memo.append((key, y, out))
        return out

    def g(self, u, y):
        return torch.tensor(self._coeffs(u)[3], dtype=y.dtype, device=y.device).expand_as(y)


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
    # reversible Heun is left out of the registry-wide checks: it is only conditionally stable (below)
    # and 200 log-SNR steps on VP are not enough for it; its NFE and dtype are tested on their own
    conformance_options = [{"solver": s} for s in ("euler", "milstein", "srk")]

    def __init__(self, solver: str = "euler"):
        if solver not in METHODS:
            raise ValueError(f"solver: unknown torchsde method {solver!r}; known methods: {', '.join(METHODS)}")
        self.method = solver
        self.sde_type, self.convergence_order, self.calls_per_step = METHODS[solver]

    def expected_nfe(self, steps: int) -> int:
        # reversible Heun evaluates the drift once at the start to seed its extra state
        return self.calls_per_step * steps + (1 if self.method == "reversible_heun" else 0)

    def run(self, model, x, times, ctx):
        import torchsde

        shape = x.shape
        t_start = float(times[0])
        path = self._path(x, times, ctx)
        us = (t_start - times).to(torch.float64)  # flipped time, increasing from 0
        rsde = _GridSDE(model, shape, t_start, us, self.sde_type)
        u_list = us.tolist()
        y = x.reshape(shape[0], -1)
        extra = None
        # alpha, sigma for the model's conversions at the grid times as the drift computes them
        with model.grid(t_start - us):
            for i in range(len(times) - 1):
                rsde.new_interval()
                # dt above the interval: the solver's step is min(u0 + dt, u1) - u0, one step landing on u1
                ys, extra = torchsde.sdeint(rsde, y, us[i:i + 2], bm=path, method=self.method,
                                            dt=2 * (u_list[i + 1] - u_list[i]), adaptive=False, extra=True,
                                            extra_solver_state=extra)
                y = ys[-1]
                ctx.step(i, y.reshape(shape))
        return y.reshape(shape)

    def _path(self, x, times, ctx):
        import torchsde

        need = _LEVY_AREA.get(self.method)
        if isinstance(ctx.noise, BrownianNoise):
            path = ctx.noise.path
            if need and path.levy_area_approximation not in need:
                raise ValueError(f"brownian: method {self.method!r} needs a Brownian path with levy_area_approximation "
                                 f"in {need}, got {path.levy_area_approximation!r}; build it with "
                                 f"brownian_path(..., levy_area_approximation='space-time')")
            if path.dtype != x.dtype or path.device != x.device:
                path = _CastPath(path, x)
            return path
        gen = ctx.generator
        entropy = None
        if gen is not None:
            entropy = int(torch.randint(0, 2**62, (), generator=gen, device=gen.device))
        span = float(times[0] - times[-1])
        # dt: the mean step, torchsde's hint for building its search tree; without it, queries made in
        # order grow the tree into a chain and each one walks further (~2.5x the cost per step here)
        return torchsde.BrownianInterval(t0=0.0, t1=span, size=(x.shape[0], math.prod(x.shape[1:])),
                                         dtype=x.dtype, device=x.device, entropy=entropy, dt=span / (len(times) - 1),
                                         levy_area_approximation=need[0] if need else "none")
