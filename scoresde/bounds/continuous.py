r"""The continuous-time variational bound (Song, Durkan, Murray & Ermon 2021; Kingma et al. 2021, VDM eq. 17).

Letting the number of steps of the discrete bound (:mod:`scoresde.bounds.discrete`, posterior
reverse variance) go to infinity on [t_min, T] turns the KL sum into an integral:

.. math::
    -\log p_\theta(x_0) \le \underbrace{KL(q(x_T|x_0)\,\|\,p(x_T))}_{\text{prior}}
    + \underbrace{\tfrac12 \int_{t_{min}}^{T} \frac{g(t)^2}{\sigma_t^2}\,
        E_\varepsilon \|\hat\varepsilon_\theta(x_t, t) - \varepsilon\|^2\, dt}_{\text{diffusion}}
    + \underbrace{E\,[-\log p_\theta(x_0 | x_{t_{min}})]}_{\text{reconstruction}},

because ``(SNR_s - SNR_t)/2 ||x_0 - x0_hat||^2 = (SNR_s/SNR_t - 1)/2 ||eps - eps_hat||^2`` and
``g^2/sigma^2 = -d log SNR/dt``. The middle term is the likelihood-weighted denoising score-matching
loss (weighting ``'likelihood'`` of :func:`scoresde.losses.dsm_loss`, Song et al. 2021, thm. 1 in
its denoising form). The model is the reverse-time hierarchy in its continuous limit, started from
the SDE's prior ``N(0, sigma_T^2 I)`` and ended by the decoder ``N(x0_hat(x_{t_min}), sigma(t_min)^2)``
(discretised on ``levels`` bins for discrete data, as in the discrete bound).

The integral is estimated by drawing t: with importance sampling (default) the half log-SNR is
uniform on [lam(T), lam(t_min)] (the trainer's :func:`scoresde.losses.sample_times`), under which the
likelihood weight times the importance ratio is the constant ``2 (lam(t_min) - lam(T))`` and the
variance due to t is only that of ``||eps - eps_hat||^2`` across noise levels. ``n_t`` draws per
sample, one model call each, plus one for the decoder.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._tensor import append_dims, check_finite_number
from ..losses import TIME_SAMPLINGS, dsm_loss, sample_times
from ..models import ScoreModel
from ._checks import check_choice, check_count, check_data, check_generator, check_model
from .discrete import _randn, decoder_nll, denoise, prior_kl
from .result import BoundResult

__all__ = ["continuous_bound"]


def continuous_bound(model: ScoreModel, x0: Tensor, *, t_min: float | None = None, levels: int | None = None,
                     n_t: int = 1, importance: bool = True, time_sampling: str = "uniform",
                     generator: torch.Generator | None = None, differentiable: bool = False) -> BoundResult:
    """The continuous-time bound on ``-log p_theta(x0)`` per sample, its diffusion term by Monte Carlo in t.

    Args:
        model: a :class:`~scoresde.models.ScoreModel` (any parameterisation).
        x0: data ``(B, *event_shape)``; with ``levels``, on the lattice of [-1, 1] (see
            :func:`~scoresde.bounds.discrete.variational_bound`).
        t_min: the reconstruction time (default the SDE's t_min); the integral runs over [t_min, T].
        levels: the number of values of discrete data (the discretised decoder), or None.
        n_t: draws of t per sample (each one model call on the batch).
        importance: draw t uniform in log-SNR (True) or uniform in t.
        time_sampling: how the batch's draws are coupled: ``'uniform'``, ``'stratified'``, ``'antithetic'``.
            The result's ``se`` assumes independent points, which only ``'uniform'`` gives.
        generator: the source of t and of the noise.
        differentiable: keep the autograd graph (e.g. to train on the bound).
    """
    check_model(model)
    x0, levels = check_data(x0, levels)
    n_t = check_count("n_t", n_t)
    check_generator(generator)
    if not isinstance(importance, bool):
        raise TypeError(f"importance: expected a bool, got {importance!r}")
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    sde = model.sde
    lo = float(sde.t_min) if t_min is None else check_finite_number("t_min", t_min, positive=True)
    T = float(sde.T)
    if not lo < T:
        raise ValueError(f"t_min: expected a time in (0, T={T}), got {lo}")

    B, dim = x0.shape[0], x0[0].numel()
    nfe0 = model.nfe
    with torch.set_grad_enabled(differentiable):
        prior = prior_kl(sde, x0)
        t0 = torch.full((B,), lo, dtype=x0.dtype, device=x0.device)
        alpha, sigma = (append_dims(v, x0.ndim) for v in sde.alpha_sigma(t0))
        x_t = alpha * x0 + sigma * _randn(x0, generator)
        recon = decoder_nll(x0, denoise(model, x_t, t0), sigma, levels)

        diffusion = torch.zeros_like(prior)
        for _ in range(n_t):
            t, ratio = sample_times(sde, B, scheme=time_sampling, importance=importance, t_min=lo, T=T,
                                    generator=generator, dtype=torch.float64)
            t = t.to(device=x0.device, dtype=x0.dtype)
            loss = dsm_loss(model, x0, weighting="likelihood", t=t, noise=_randn(x0, generator))
            if not torch.isfinite(loss).all():
                raise ValueError(f"model: returned non-finite values at t in [{float(t.min()):.6g}, "
                                 f"{float(t.max()):.6g}] (the denoising loss of {int((~torch.isfinite(loss)).sum())} "
                                 "points is not finite)")
            diffusion = diffusion + 0.5 * (T - lo) * ratio.to(device=x0.device, dtype=x0.dtype) * loss
        diffusion = diffusion / n_t
    return BoundResult(nll=prior + diffusion + recon, prior=prior, diffusion=diffusion, reconstruction=recon,
                       dim=dim, kind="continuous", estimator="importance" if importance else "uniform",
                       nfe=model.nfe - nfe0, times=torch.tensor([lo, T], dtype=torch.float64), levels=levels,
                       n_t=n_t)
