r"""Predictor-corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
Alg. 1-3 and app. G), for any SDE of the family through alpha and sigma.

Order of operations, as in the score_sde code: at each grid step i, first ``n_corrector_steps``
corrector (Langevin MCMC) steps at ``t_i``, then one predictor step from ``t_i`` to ``t_{i+1}``.
With ``predictor='none'`` the correctors of step i run at ``t_{i+1}`` instead, so that, as in
annealed Langevin dynamics (Song & Ermon 2019), every level down to t_min is visited and the state
after step i targets p at ``t_{i+1}``.

With ``a = alpha_t / alpha_s`` and ``G^2 = sigma_t^2 - a^2 sigma_s^2 = sigma_t^2 (1 - e^{-2h})`` the
variance of the forward transition from s = t_{i+1} to t = t_i (h = lambda_s - lambda_t), the predictors are

* ``'euler_maruyama'``: ``x + [f x - g^2 s(x, t)] dt + g dw`` (dt < 0), the reverse SDE's Euler step;
* ``'reverse_diffusion'`` (eq. 46): ``x_s = x_t - (a - 1) x_t + G^2 s(x_t, t) + G z``, the reverse of the
  discretised forward chain ``x_t = x_s + (a - 1) x_s + G z`` (score_sde's VP/VE discretisations are
  the cases a = sqrt(1 - beta_i) and a = 1);
* ``'ancestral'`` (eq. 47, the VP form for every SDE): ``x_s = (x_t + G^2 s(x_t, t)) / a + G z``.
  Its mean is DDPM's posterior mean with Tweedie's x0; its variance G^2 is DDPM's "sigma^2 = beta"
  choice (``'ddpm'`` uses the posterior variance instead);
* ``'none'``: corrector-only sampling.

The correctors (z fresh N(0, I) noise, off the Brownian path; ``r`` = ``snr``):

* ``'langevin'`` (Alg. 4): ``x <- x + e s(x, t) + sqrt(2 e) z`` with score_sde's step-size rule
  ``e = 2 a_i (r ||z|| / ||s(x, t)||)^2``, ``a_i = (alpha_{t_i} / alpha_{t_{i+1}})^2`` (score_sde's
  ``alpha_i = 1 - beta_i`` for VP, 1 for VE). The norms are averaged over the batch, as in score_sde
  (a per-sample ||s|| vanishes at a mode and gives an unbounded step), so a sample's step depends on
  the rest of its batch;
* ``'annealed_langevin'`` (Song & Ermon 2019, Alg. 1 as in score_sde): the same move with the step
  ``e = 2 a_i (r sigma_t)^2``.

``denoise_last_step=True`` returns the mean of the last predictor step (score_sde's ``denoise``).
Model calls per step: 1 (predictor) + ``n_corrector_steps`` (0 when ``corrector='none'``).
Order: weak order 1 without a corrector; none with one (the Langevin steps have a step size fixed
by the snr, whose bias does not vanish as the grid is refined).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._tensor import check_finite_number
from ..schedule import Schedule
from .base import Sampler, register

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "annealed_langevin", "none")


@register
class PredictorCorrector(Sampler):
    name = "pc"
    stochastic = True
    # corrector-only sampling is left out: one Langevin step per level at snr 0.16 does not relax to
    # p_t in the registry's 200 steps (annealed Langevin needs many steps per level); it has its own tests
    conformance_options = ([{"predictor": p, "corrector": c} for p in PREDICTORS[:3] for c in CORRECTORS]
                           + [{"denoise_last_step": True}])

    def __init__(self, predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
                 n_corrector_steps: int = 1, denoise_last_step: bool = False):
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor: unknown {predictor!r}; known predictors: {', '.join(PREDICTORS)}")
        if corrector not in CORRECTORS:
            raise ValueError(f"corrector: unknown {corrector!r}; known correctors: {', '.join(CORRECTORS)}")
        if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
            raise ValueError(f"n_corrector_steps: expected an integer >= 0, got {n_corrector_steps!r}")
        self.snr = check_finite_number("snr", snr, positive=True)
        if not isinstance(denoise_last_step, bool):
            raise ValueError(f"denoise_last_step: expected True or False, got {denoise_last_step!r}")
        n_corr = 0 if corrector == "none" else n_corrector_steps
        if predictor == "none" and n_corr == 0:
            raise ValueError(f"predictor, corrector: predictor='none' needs a corrector and n_corrector_steps >= 1, "
                             f"got corrector={corrector!r}, n_corrector_steps={n_corrector_steps}")
        self.predictor, self.corrector = predictor, corrector
        self.n_corrector_steps = n_corrector_steps
        self.denoise_last_step = denoise_last_step
        self._n_corr = n_corr
        self.calls_per_step = (predictor != "none") + n_corr
        self.convergence_order = 1 if n_corr == 0 else None

    def run(self, model, x, times, ctx):
        times = times.t if isinstance(times, Schedule) else times  # sample() hands every sampler its Schedule
        sde = model.sde
        n = len(times) - 1
        t_grid = times.tolist()
        lam = sde.lam(times)
        alpha, sigma = sde.alpha_sigma(times)
        a_ratios = (alpha[:-1] / alpha[1:]).tolist()  # a = alpha_t / alpha_s of the transition s -> t
        # G^2 = sigma_t^2 (1 - e^{-2h}) of each transition
        G2s = (sigma[:-1] ** 2 * -torch.expm1(-2 * (lam[1:] - lam[:-1]))).tolist()
        sigma, f, g2 = sigma.tolist(), sde.f(times).tolist(), sde.g2(times).tolist()
        for i in range(n):
            a_ratio = a_ratios[i]
            j = i + 1 if self.predictor == "none" else i
            for _ in range(self._n_corr):
                x = self._correct(model, x, t_grid[j], sigma[j], a_ratio**2, ctx)
            if self.predictor != "none":
                t, dt = t_grid[i], t_grid[i + 1] - t_grid[i]
                score = model.score(x, t)
                # the mean as multiply-adds on one fresh tensor, then the noise added to it in place
                if self.predictor == "euler_maruyama":
                    x = x.mul(1 + f[i] * dt).add_(score, alpha=-g2[i] * dt)
                    noise, scale = ctx.brownian_increment(i, x), math.sqrt(g2[i])
                else:
                    G2 = G2s[i]
                    if self.predictor == "reverse_diffusion":
                        x = x.mul(2 - a_ratio).add_(score, alpha=G2)
                    else:
                        x = torch.add(x, score, alpha=G2).div_(a_ratio)
                    noise, scale = ctx.normal(i, x), math.sqrt(G2)
                if not (self.denoise_last_step and i == n - 1):
                    x.add_(noise, alpha=scale)
            ctx.step(i, x)
        return x

    def _correct(self, model, x, t, sigma_t, a_i, ctx):
        score = model.score(x, t)
        z = ctx.randn_like(x)
        if self.corrector == "langevin":
            # batch-averaged norms, as score_sde: a per-sample ||s|| vanishes at a mode of p_t and
            # would give that sample an unbounded step
            z_norm, s_norm = _mean_norms(z, score)
            eps = 2 * a_i * (self.snr * z_norm / max(s_norm, torch.finfo(x.dtype).tiny)) ** 2
        else:
            eps = 2 * a_i * (self.snr * sigma_t) ** 2
        return torch.add(x, score, alpha=eps).add_(z, alpha=math.sqrt(2 * eps))


def _mean_norms(a: Tensor, b: Tensor) -> list[float]:
    """Means over the batch of the per-sample Euclidean norms of ``a`` and ``b`` (one sync)."""
    v = torch.stack([a.flatten(1), b.flatten(1)])
    if v.dtype in (torch.float32, torch.float64):
        # sums of squares as a matrix-vector product: a norm over a short last dimension (2-D data)
        # is a slow reduction on a CPU, the product is not
        return v.square_().matmul(v.new_ones(v.shape[-1])).sqrt_().mean(1).tolist()
    return v.norm(dim=2).mean(1).tolist()  # half precision: no squares that overflow
