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
Model calls per step: 1 (predictor) + ``n_corrector_steps`` (0 when ``corrector='none'``); as a
:class:`~.base.SteppedSampler` each call is one stage of the step (``state.stage`` counts the
corrector steps done), the predictor's the last.
Order: weak order 1 without a corrector; none with one (the Langevin steps have a step size fixed
by the snr, whose bias does not vanish as the grid is refined).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._tensor import check_finite_number
from .base import SamplerState, SteppedSampler, register

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral", "none")
CORRECTORS = ("langevin", "annealed_langevin", "none")


@register
class PredictorCorrector(SteppedSampler):
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
            raise TypeError(f"denoise_last_step: expected True or False, got {denoise_last_step!r}")
        n_corr = 0 if corrector == "none" else n_corrector_steps
        if predictor == "none" and n_corr == 0:
            raise ValueError(f"predictor, corrector: predictor='none' needs a corrector and n_corrector_steps >= 1, "
                             f"got corrector={corrector!r}, n_corrector_steps={n_corrector_steps}")
        self.predictor, self.corrector = predictor, corrector
        self.n_corrector_steps = n_corrector_steps
        self.denoise_last_step = denoise_last_step
        self._n_corr = n_corr

    @property
    def calls_per_step(self) -> int:
        return (self.predictor != "none") + self._n_corr

    @property
    def convergence_order(self) -> int | None:
        return 1 if self._n_corr == 0 else None

    def _eval_time(self, schedule, i: int, stage: int) -> Tensor:
        """Where call ``stage`` of step ``i`` evaluates the model (module docstring: order of operations)."""
        if stage < self._n_corr and self.predictor == "none":
            return schedule.t[i + 1]
        return schedule.t[i]

    def init(self, schedule, x, start=0):
        return SamplerState(x=x, i=start, x_eval=x, t_eval=self._eval_time(schedule, start, 0))

    def call_times(self, schedule, start=0):
        return torch.stack([self._eval_time(schedule, i, stage) for i in range(start, schedule.steps)
                            for stage in range(self.calls_per_step)])

    def step(self, model, schedule, state, output, ctx):
        i, x, stage = state.i, state.x, state.stage
        score = model.to_score(output, x, state.t_eval)
        if stage < self._n_corr:
            j = i + 1 if self.predictor == "none" else i
            a_i = (schedule.alpha[i] / schedule.alpha[i + 1]) ** 2
            x_new = self._correct(score, x, schedule.sigma[j], a_i, ctx)
            if stage + 1 < self.calls_per_step:
                return SamplerState(x=x_new, i=i, x_eval=x_new, t_eval=self._eval_time(schedule, i, stage + 1),
                                    stage=stage + 1)
            return self._next(schedule, i, x_new)
        return self._next(schedule, i, self._predict(score, x, schedule, i, ctx))

    def _next(self, schedule, i: int, x: Tensor) -> SamplerState:
        t_eval = self._eval_time(schedule, i + 1, 0) if i + 1 < schedule.steps else schedule.t[i + 1]
        return SamplerState(x=x, i=i + 1, x_eval=x, t_eval=t_eval)

    def _predict(self, score: Tensor, x: Tensor, schedule, i: int, ctx) -> Tensor:
        """One predictor step from ``t = t_i`` to ``s = t_{i+1}`` (module docstring)."""
        sde, t = schedule.sde, schedule.t[i]
        last = self.denoise_last_step and i == schedule.steps - 1
        if self.predictor == "euler_maruyama":
            dt = schedule.t[i + 1] - t
            mean = x + sde.reverse_drift(x, t, score) * dt
            return mean if last else mean + sde.g(t) * torch.sqrt(-dt) * ctx.normal(i, x)  # Delta w = sqrt|dt| z
        a = schedule.alpha[i] / schedule.alpha[i + 1]
        G2 = schedule.sigma[i] ** 2 * -torch.expm1(-2 * schedule.h[i])
        if self.predictor == "reverse_diffusion":
            mean = x - (a - 1) * x + G2 * score
        else:
            mean = (x + G2 * score) / a
        return mean if last else mean + torch.sqrt(G2) * ctx.normal(i, x)

    def _correct(self, score: Tensor, x: Tensor, sigma_t: Tensor, a_i: Tensor, ctx) -> Tensor:
        """One Langevin step ``x + e s + sqrt(2 e) z`` with the corrector's step size ``e``."""
        z = ctx.randn_like(x)
        if self.corrector == "langevin":
            # batch-averaged norms, as score_sde: a per-sample ||s|| vanishes at a mode of p_t and
            # would give that sample an unbounded step
            z_norm, s_norm = _mean_norm(z), _mean_norm(score)
            e = 2 * a_i * (self.snr * z_norm / s_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
        else:
            e = 2 * a_i * (self.snr * sigma_t) ** 2
        return x + e * score + torch.sqrt(2 * e) * z


def _mean_norm(v: Tensor) -> Tensor:
    """The mean over the batch of the per-sample Euclidean norms of ``v`` (a 0-d tensor)."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1).mean()
