r"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. 7) for every SDE of the family.

With ``x_t = alpha_t x_0 + sigma_t eps`` the conditional score is ``grad log p(x_t | x_0) = -eps / sigma_t``,
and the per-sample loss is

.. math::  \ell(x_0, t, \varepsilon) = \lambda(t)\, \| s_\theta(x_t, t) + \varepsilon / \sigma_t \|^2
           = \frac{\lambda(t)}{\sigma_t^2}\, \| \hat\varepsilon_\theta(x_t, t) - \varepsilon \|^2,

summed over the data dimensions, with ``t ~ U(t_min, T)``. Whatever the network predicts (eps,
score, x0, v, velocity), :class:`~scoresde.models.ScoreModel` converts its output to
``eps_hat = -sigma_t s_theta``, so one loss serves every parameterisation.

Weightings ``lambda(t)``:

* ``'sigma2'``: ``lambda = sigma_t^2``, the plain eps-MSE (the score-SDE and DDPM default);
* ``'likelihood'``: ``lambda = g(t)^2``; then the loss integrated over t bounds the negative
  log-likelihood (Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood Training of Score-Based
  Diffusion Models", thm. 1);
* ``'min_snr'`` (alias ``'snr'``): ``lambda = sigma_t^2 min(SNR_t, gamma) / SNR_t`` with
  ``SNR = alpha^2 / sigma^2``: the eps-MSE clipped at high SNR, equivalently ``min(SNR, gamma)``
  times the x0-MSE (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting");
* a callable ``lambda(t)``.

Importance sampling of t. For every SDE of the family ``g^2 / sigma^2 = -2 d lam / dt``
(differentiate ``log sigma^2 - 2 log alpha``), so sampling t with density ``q(t) ∝ g^2 / sigma^2``
is sampling the half log-SNR ``lam`` uniformly on ``[lam(T), lam(t_min)]``. The estimator is
reweighted by ``u(t) / q(t) = Z / ((T - t_min) g^2 / sigma^2)`` with ``Z = 2 (lam(t_min) - lam(T))``,
which keeps its mean; under the likelihood weighting the time weight becomes the constant
``Z / (T - t_min)`` and the variance due to t disappears (Song et al. 2021, sec. 5; Kingma et al.
2021, "Variational Diffusion Models", sec. 5.2).

Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023,
"Flow Straight and Fast", rectified flow): on :class:`~scoresde.sde.FlowMatchingSDE`
(``alpha = 1 - t``, ``sigma = t``) the conditional velocity of ``x_t = (1 - t) x_0 + t eps`` is
``d x_t / dt = eps - x_0``, and :func:`flow_matching_loss` regresses the network's velocity on it,

.. math::  \ell(x_0, t, \varepsilon) = \| u_\theta(x_t, t) - (\varepsilon - x_0) \|^2 .

Its minimiser is the conditional mean ``u*(x, t) = E[eps - x_0 | x_t = x]``, the marginal velocity
field, which is the probability-flow drift ``f x - g^2 s / 2`` of the exact score (the velocity view
of :class:`~scoresde.models.ScoreModel`); so a flow-matching network runs on every sampler. For a
general SDE of the family the target is ``alpha'(t) x_0 + sigma'(t) eps``. In eps terms the loss is
the DSM loss with ``lambda(t) / sigma_t^2 = (sigma_t lam'(t))^2`` (``= 1 / (1 - t)^2`` for the
flow path), which is why it is its own function rather than a weighting.

Time sampling across the batch: ``'uniform'`` (i.i.d.), ``'stratified'`` (one draw in each of B
equal strata of the unit interval), ``'antithetic'`` (pairs ``u, 1 - u``). The unit draw is mapped
to t (or to lam, with importance sampling) by the same monotone map, so each scheme keeps the
marginal of t.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._tensor import append_dims, check_finite_number
from .checks import FiniteWatch
from .models import FROM_PAIR, ScoreModel
from .sde import SDE

__all__ = ["WEIGHTINGS", "TIME_SAMPLINGS", "LOSSES", "dsm_loss", "flow_matching_loss", "sample_times", "loss_weight"]

LOSSES = ("dsm", "flow_matching")

WEIGHTINGS = ("sigma2", "likelihood", "min_snr", "snr")
TIME_SAMPLINGS = ("uniform", "stratified", "antithetic")

Weighting = str | Callable[[Tensor], Tensor]

#: the losses read no model output on the host: a non-finite output makes the loss non-finite, which the
#: trainer's one read of the step's statistics reports
_UNCHECKED = FiniteWatch("off")


def _check_weighting(weighting: Weighting) -> None:
    if not callable(weighting) and weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: unknown {weighting!r}; allowed: {', '.join(WEIGHTINGS)} or a callable lambda(t)")


def _ends(sde: SDE, t_min: float | None, T: float | None) -> tuple[float, float]:
    lo = sde.t_min if t_min is None else check_finite_number("t_min", t_min, positive=True)
    hi = sde.T if T is None else check_finite_number("T", T, positive=True)
    if not 0 < lo < hi <= sde.T:
        raise ValueError(f"t_min, T: need 0 < t_min < T <= sde.T={sde.T}, got t_min={lo}, T={hi}")
    return lo, hi


def _unit_draws(n: int, scheme: str, generator, device) -> Tensor:
    """n draws in [0, 1) whose marginal is uniform, coupled across the batch by ``scheme`` (float64)."""
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if scheme == "uniform":
        return u
    if scheme == "stratified":
        return (torch.arange(n, device=device, dtype=torch.float64) + u) / n
    # antithetic: u and 1 - u; an odd batch keeps one independent draw at the end
    half = n // 2
    return torch.cat([u[:half], 1 - u[:half], u[2 * half:]])


def sample_times(sde: SDE, n: int, *, scheme: str = "uniform", importance: bool = False,
                 t_min: float | None = None, T: float | None = None, generator: torch.Generator | None = None,
                 device=None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Draw ``n`` diffusion times and their importance ratios ``u(t) / q(t)``.

    Without importance sampling ``t ~ U(t_min, T)`` and the ratios are ones; with it, ``lam`` is
    uniform on ``[lam(T), lam(t_min)]`` (density ``q(t) ∝ g^2/sigma^2``, see the module docstring).
    Returns ``(t, ratio)``, both ``(n,)`` of ``dtype`` on ``device`` (default: the generator's).
    """
    if scheme not in TIME_SAMPLINGS:
        raise ValueError(f"scheme: unknown time sampling {scheme!r}; allowed: {', '.join(TIME_SAMPLINGS)}")
    if int(n) < 1:
        raise ValueError(f"n: expected a positive number of times, got {n}")
    lo, hi = _ends(sde, t_min, T)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    u = _unit_draws(int(n), scheme, generator, device)
    if not importance:
        t = lo + (hi - lo) * u
        return t.to(dtype), torch.ones_like(t, dtype=dtype)
    # the ends were checked above, so the SDE's unchecked evaluators serve (no host read of device tensors)
    ends = sde._lam(torch.tensor([hi, lo], dtype=torch.float64, device=device))
    lam = ends[0] + (ends[1] - ends[0]) * u
    # the inverse is accurate to rounding only: keep t inside the interval it was drawn on
    t = sde._t_of_lam(lam).clamp(lo, hi)
    Z = 2 * (ends[1] - ends[0])
    ratio = Z / ((hi - lo) * (sde.g2(t) / sde._sigma(t) ** 2))
    return t.to(dtype), ratio.to(dtype)


def loss_weight(sde: SDE, t: Tensor, weighting: Weighting = "sigma2", *, min_snr_gamma: float = 5.0) -> Tensor:
    r"""``lambda(t) / sigma_t^2``: the factor in front of ``||eps_hat - eps||^2``, shape of ``t`` (times in [0, T],
    not checked here: the losses draw or check them)."""
    _check_weighting(weighting)
    if callable(weighting):
        return weighting(t) / sde._sigma(t) ** 2
    if weighting == "sigma2":
        return torch.ones_like(t)
    if weighting == "likelihood":
        return sde.g2(t) / sde._sigma(t) ** 2
    gamma = check_finite_number("min_snr_gamma", min_snr_gamma, positive=True)
    snr = torch.exp(2 * sde._lam(t))
    return torch.clamp(snr, max=gamma) / snr


def _perturb(model: ScoreModel, x0: Tensor, *, time_sampling: str, importance: bool, t, noise, generator,
             t_min, T) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """Validate, draw (or take) t and eps, and form ``x_t = alpha_t x_0 + sigma_t eps``: ``(t, ratio, eps, x_t)``."""
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if not isinstance(x0, Tensor) or x0.ndim < 2 or not x0.is_floating_point():
        raise ValueError(f"x0: expected a floating tensor of shape (batch, *event_shape), got "
                         f"{tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__}")
    sde, B = model.sde, x0.shape[0]
    if t is None:
        t, ratio = sample_times(sde, B, scheme=time_sampling, importance=importance, t_min=t_min, T=T,
                                generator=generator, device=x0.device, dtype=x0.dtype)
    else:
        if importance:
            raise ValueError("importance: cannot reweight given times t; leave t=None to draw them")
        t = torch.as_tensor(t, device=x0.device, dtype=x0.dtype)
        if t.shape != (B,):
            raise ValueError(f"t: expected shape ({B},) to match the batch of x0, got {tuple(t.shape)}")
        sde.validate_time(t)
        ratio = None
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise: expected shape {tuple(x0.shape)} like x0, got {tuple(noise.shape)}")
    c = sde._coefficients(append_dims(t, x0.ndim))
    x_t = c.alpha * x0 + c.sigma * noise
    return t, ratio, noise, x_t


def dsm_loss(model: ScoreModel, x0: Tensor, *, weighting: Weighting = "sigma2", time_sampling: str = "uniform",
             importance: bool = False, min_snr_gamma: float = 5.0, t: Tensor | None = None,
             noise: Tensor | None = None, generator: torch.Generator | None = None, t_min: float | None = None,
             T: float | None = None, return_times: bool = False):
    r"""Per-sample denoising score-matching loss ``ratio(t) lambda(t)/sigma_t^2 ||eps_hat - eps||^2``.

    Args:
        model: a :class:`ScoreModel`; one counted call on the whole batch.
        x0: data, ``(B, *event_shape)``.
        weighting: ``'sigma2'``, ``'likelihood'``, ``'min_snr'``/``'snr'`` or a callable ``lambda(t)``.
        time_sampling, importance, t_min, T: how t is drawn (see :func:`sample_times`); ignored
            when ``t`` is given (then ``importance`` must be False).
        t, noise: fixed times ``(B,)`` and noise (shape of ``x0``) instead of drawing them.
        generator: the source of t and noise.
        return_times: also return the times used.

    Returns:
        ``(B,)`` losses (sum over data dimensions); their mean estimates the weighted DSM objective
        ``E_{t ~ U(t_min, T)} E_{x_0, eps}[lambda(t) ||s_theta + eps/sigma_t||^2]``. With
        ``return_times``, ``(losses, t)``.
    """
    _check_weighting(weighting)
    t, ratio, noise, x_t = _perturb(model, x0, time_sampling=time_sampling, importance=importance, t=t,
                                    noise=noise, generator=generator, t_min=t_min, T=T)
    with model.watching(_UNCHECKED):
        eps_hat = model.to_eps(model.predict(x_t, t), x_t, t)
    sq = (eps_hat - noise).pow(2).reshape(x0.shape[0], -1).sum(1)
    w = loss_weight(model.sde, t, weighting, min_snr_gamma=min_snr_gamma)
    if ratio is not None:
        w = w * ratio
    loss = w * sq
    return (loss, t) if return_times else loss


def flow_matching_loss(model: ScoreModel, x0: Tensor, *, time_sampling: str = "uniform", t: Tensor | None = None,
                       noise: Tensor | None = None, generator: torch.Generator | None = None,
                       t_min: float | None = None, T: float | None = None, return_times: bool = False):
    r"""Per-sample conditional flow-matching loss ``||u_theta(x_t, t) - (alpha' x_0 + sigma' eps)||^2``.

    On :class:`~scoresde.sde.FlowMatchingSDE` the target is ``eps - x_0`` (Lipman et al. 2023, eq. 23
    with sigma_min = 0; Liu et al. 2023, eq. 1). A ``'velocity'`` model's raw output is ``u_theta``;
    any other parameterisation is converted (``u = alpha' x0_hat + sigma' eps_hat``). One counted
    model call on the batch; t and eps are drawn as in :func:`dsm_loss` (uniform t, no weighting).

    Returns:
        ``(B,)`` losses (sum over data dimensions), and the times with ``return_times``.
    """
    t, _, noise, x_t = _perturb(model, x0, time_sampling=time_sampling, importance=False, t=t, noise=noise,
                                generator=generator, t_min=t_min, T=T)
    target = FROM_PAIR["velocity"](x0, noise, model.coefficients(x_t, t))
    with model.watching(_UNCHECKED):
        u_hat = model.convert(model.predict(x_t, t), x_t, t, "velocity")
    loss = (u_hat - target).pow(2).reshape(x0.shape[0], -1).sum(1)
    return (loss, t) if return_times else loss
