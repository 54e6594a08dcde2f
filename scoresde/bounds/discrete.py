r"""The discrete-time variational bound of a diffusion model (Sohl-Dickstein et al. 2015; Ho et al. 2020, eq. 5).

**The chain.** Any SDE of the family, ``x_t = alpha_t x_0 + sigma_t eps``, put on an N-point grid
``t_1 < ... < t_N = T`` (uniform in t from ``t_min``; a single point ``t_1 = T`` when N = 1),
defines a Markov chain x_0 -> x_1 -> ... -> x_N with Gaussian transitions (Kingma et al. 2021,
"Variational Diffusion Models", eqs. 3-4 and 26-29). For consecutive points s = t_{i-1} < t = t_i:

.. math::
    q(x_t | x_s) = N(\alpha_{t|s} x_s, \sigma_{t|s}^2 I), \qquad
    \alpha_{t|s} = \alpha_t / \alpha_s, \qquad
    \sigma_{t|s}^2 = \sigma_t^2 - \alpha_{t|s}^2 \sigma_s^2 = \sigma_t^2\,(1 - e^{2(\lambda_t - \lambda_s)}),

    q(x_s | x_t, x_0) = N(\tilde\mu(x_t, x_0), \tilde\sigma^2 I), \qquad
    \tilde\mu = \frac{\alpha_{t|s}\sigma_s^2}{\sigma_t^2} x_t + \frac{\alpha_s \sigma_{t|s}^2}{\sigma_t^2} x_0, \qquad
    \tilde\sigma^2 = \frac{\sigma_{t|s}^2 \sigma_s^2}{\sigma_t^2}.

For the VP family (alpha^2 + sigma^2 = 1) these are DDPM's: ``alpha_bar_i = alpha(t_i)^2``,
``beta_i = sigma_{t|s}^2 = 1 - alpha_bar_i / alpha_bar_{i-1}`` and ``beta-tilde_i = tilde sigma^2``;
a :class:`~scoresde.sde.DiscreteVPSDE` with its own N and t_min = 1/N has its knots as the grid, so
the chain is exactly the N-step DDPM chain. The general form covers VE, sub-VP and flow matching too.

**The model** ``p_theta(x_s | x_t) = N(tilde mu(x_t, x0_hat(x_t, t)), v I)`` with the model's data
prediction x0_hat (from any parameterisation) and ``v = sigma_{t|s}^2`` (``'beta'``, DDPM's
sigma_t^2 = beta_t) or ``v = tilde sigma^2`` (``'posterior'``, DDPM's beta-tilde_t); the prior is
the SDE's ``N(0, sigma_T^2 I)`` (N(0, I) up to ``alpha_T^2`` for the VP family).

**The bound** ``-log p_theta(x_0) <= L_N + sum_{i=1}^{N-1} L_i + L_0`` with

* ``L_N = KL(q(x_N | x_0) || p(x_N))`` in closed form;
* ``L_i = KL(q(x_i | x_{i+1}, x_0) || p_theta(x_i | x_{i+1}))`` between Gaussians at one draw of
  ``x_{i+1} ~ q(x_{i+1} | x_0)``; with ``'posterior'`` it is ``(SNR_s - SNR_t)/2 ||x_0 - x0_hat||^2``
  (VDM eq. 13);
* ``L_0 = -log p_theta(x_0 | x_1)``: the decoder ``N(x0_hat(x_1), s_1^2)``, discretised onto the
  bins of the data's ``levels`` (:func:`~scoresde.bounds.gaussian.discretized_gaussian_log_likelihood`)
  or continuous, with ``s_1 = sigma(t_1)`` under both reverse variances (DDPM's ``beta_1`` for the VP
  family; the scale of x0_hat's error ``sigma_1/alpha_1`` to first order). improved-diffusion clips the
  degenerate ``beta-tilde_1 = 0`` to ``beta-tilde_2`` instead; on a grid whose first step is longer than
  t_1 that is far narrower than the decoder's error and costs nats (measured: ~55 nats at N = 1000, VE).

**Estimators** of the sum over the N - 1 KL terms (L_N and L_0 are always computed): ``'exact'``
evaluates every term (N model calls in all); ``'uniform'`` draws ``n_t`` steps per sample
uniformly and rescales by N - 1; ``'importance'`` draws them from ``q_i ∝`` the term's expectation
for isotropic Gaussian data of the batch's variance under the exact denoiser, mixed with 10 %
uniform (defensive importance sampling, Hesterberg 1995) so no term has a vanishing
probability; each draw is weighted by ``1/q_i``. Both are unbiased; 1 + n_t model calls.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._tensor import append_dims, check_finite_number
from ..models import ScoreModel
from ..sde import SDE
from ._checks import check_choice, check_count, check_data, check_generator, check_model
from .gaussian import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl
from .result import BoundResult

__all__ = ["variational_bound", "chain_grid", "ChainCoefficients", "chain_coefficients", "kl_term",
           "decoder_nll", "prior_kl", "REVERSE_VARIANCES", "BOUND_ESTIMATORS", "DEFAULT_STEPS"]

REVERSE_VARIANCES = ("beta", "posterior")
BOUND_ESTIMATORS = ("exact", "uniform", "importance")
#: DDPM's number of steps, the default for SDEs that do not carry their own (DiscreteVPSDE does).
DEFAULT_STEPS = 1000
#: Share of the uniform distribution in the importance distribution over the KL terms.
DEFENSIVE_MIX = 0.1


class ChainCoefficients(NamedTuple):
    """Coefficients of one step s -> t of the chain (tensors that broadcast against the data)."""

    coef_x0: Tensor        # alpha_s sigma_{t|s}^2 / sigma_t^2: the weight of x_0 in tilde mu
    coef_xt: Tensor        # alpha_{t|s} sigma_s^2 / sigma_t^2: the weight of x_t in tilde mu
    posterior_var: Tensor  # tilde sigma^2 = sigma_{t|s}^2 sigma_s^2 / sigma_t^2  (DDPM's beta-tilde)
    forward_var: Tensor    # sigma_{t|s}^2 (DDPM's beta)


def chain_coefficients(alpha_s: Tensor, sigma_s: Tensor, lam_s: Tensor, alpha_t: Tensor, sigma_t: Tensor,
                       lam_t: Tensor) -> ChainCoefficients:
    r"""The step ``s -> t`` (s < t) of the chain from the marginals at both ends (see the module docstring).

    ``sigma_{t|s}^2 = sigma_t^2 (1 - e^{2 (lam_t - lam_s)})`` by ``expm1``: the two terms of
    ``sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` nearly cancel on a fine grid.
    """
    forward_var = -sigma_t**2 * torch.expm1(2 * (lam_t - lam_s))
    return ChainCoefficients(
        coef_x0=alpha_s * forward_var / sigma_t**2,
        coef_xt=(alpha_t / alpha_s) * sigma_s**2 / sigma_t**2,
        posterior_var=forward_var * sigma_s**2 / sigma_t**2,
        forward_var=forward_var,
    )


def chain_grid(sde: SDE, steps: int, t_min: float | None = None) -> Tensor:
    """The N-point grid ``t_1 < ... < t_N = T``, uniform in t from ``t_min`` (float64); ``[T]`` for N = 1."""
    lo = float(sde.t_min if t_min is None else t_min)
    if steps == 1:
        return torch.tensor([float(sde.T)], dtype=torch.float64)
    return torch.linspace(lo, float(sde.T), steps, dtype=torch.float64)


def kl_term(x0: Tensor, x0_hat: Tensor, x_t: Tensor, c: ChainCoefficients, reverse_variance: str = "beta") -> Tensor:
    """``KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t))`` summed over the event dimensions: ``(B,)``."""
    mean_q = c.coef_x0 * x0 + c.coef_xt * x_t
    mean_p = c.coef_x0 * x0_hat + c.coef_xt * x_t
    var_p = c.forward_var if reverse_variance == "beta" else c.posterior_var
    kl = normal_kl(mean_q, c.posterior_var, mean_p, var_p)
    return kl.expand(x0.shape).reshape(x0.shape[0], -1).sum(1)


def decoder_nll(x0: Tensor, x0_hat: Tensor, std: Tensor, levels: int | None = None) -> Tensor:
    """``-log p_theta(x_0 | x_1)`` summed over the event dimensions, ``(B,)``: discretised on ``levels``
    bins of [-1, 1], or the continuous Gaussian density when ``levels`` is None."""
    if levels is None:
        logp = gaussian_log_likelihood(x0, x0_hat, std)
    else:
        logp = discretized_gaussian_log_likelihood(x0, x0_hat, std, levels)
    return -logp.reshape(x0.shape[0], -1).sum(1)


def prior_kl(sde: SDE, x0: Tensor) -> Tensor:
    r"""``KL(N(alpha_T x_0, sigma_T^2 I) || N(0, p^2 I))`` with the SDE's prior std ``p``, summed: ``(B,)``."""
    T = torch.tensor(float(sde.T), dtype=torch.float64)
    alpha_T, sigma_T = (float(v) for v in sde.alpha_sigma(T))
    p2 = sde.prior_std() ** 2
    mean = alpha_T * x0
    kl = normal_kl(mean, x0.new_tensor(sigma_T**2), torch.zeros_like(mean), x0.new_tensor(p2))
    return kl.reshape(x0.shape[0], -1).sum(1)


def denoise(model: ScoreModel, x_t: Tensor, t: Tensor) -> Tensor:
    """The model's data prediction at (x_t, t), one call; a non-finite output is an error that names the model."""
    x0_hat = model.x0(x_t, t)
    if not torch.isfinite(x0_hat).all():
        raise ValueError(f"model: returned non-finite values at t in [{float(t.min()):.6g}, {float(t.max()):.6g}] "
                         f"({int((~torch.isfinite(x0_hat)).sum())} of {x0_hat.numel()} values of its x0 prediction)")
    return x0_hat


def _randn(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x0, drawn on the generator's device (reproducible there)."""
    device = generator.device if generator is not None else x0.device
    return torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)


class _Chain:
    """The grid with alpha, sigma, lam at each point (float64, CPU)."""

    def __init__(self, sde: SDE, times: Tensor):
        self.t = times
        self.alpha, self.sigma = sde.alpha_sigma(times)
        self.lam = sde.lam(times)

    def at(self, i: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(t, alpha, sigma, lam)`` at grid indices ``i`` ((B,) long), in like's dtype/device."""
        i = i.cpu()
        return tuple(v[i].to(device=like.device, dtype=like.dtype) for v in (self.t, self.alpha, self.sigma, self.lam))

    def step(self, k: Tensor, like: Tensor) -> tuple[Tensor, ChainCoefficients]:
        """Times and coefficients of the step from grid point k to k - 1, broadcast against ``like``."""
        t_s, a_s, s_s, l_s = self.at(k - 1, like)
        t_t, a_t, s_t, l_t = self.at(k, like)
        c = chain_coefficients(*(append_dims(v, like.ndim) for v in (a_s, s_s, l_s, a_t, s_t, l_t)))
        return t_t, c

    def expected_terms(self, dim: int, data_var: float, reverse_variance: str) -> Tensor:
        """E[L_i], i = 1..N-1, for N(m, data_var I) data and the exact denoiser (the importance proxy)."""
        k = torch.arange(1, self.t.numel())
        c = chain_coefficients(self.alpha[k - 1], self.sigma[k - 1], self.lam[k - 1],
                               self.alpha[k], self.sigma[k], self.lam[k])
        a_t, s_t = self.alpha[k], self.sigma[k]
        mmse = data_var * s_t**2 / (a_t**2 * data_var + s_t**2)  # E (x0 - E[x0 | x_t])^2 per dimension
        var_p = c.forward_var if reverse_variance == "beta" else c.posterior_var
        r = c.posterior_var / var_p
        return 0.5 * dim * ((r - 1 - torch.log(r)) + c.coef_x0**2 * mmse / var_p)


def _check_steps(sde: SDE, steps) -> int:
    if steps is None:
        return int(getattr(sde, "N", DEFAULT_STEPS))
    return check_count("steps", steps)


def variational_bound(model: ScoreModel, x0: Tensor, *, steps: int | None = None, t_min: float | None = None,
                      reverse_variance: str = "beta", levels: int | None = None, estimator: str = "exact",
                      n_t: int = 1, generator: torch.Generator | None = None,
                      differentiable: bool = False) -> BoundResult:
    """The discrete-time variational bound on ``-log p_theta(x0)`` per sample (see the module docstring).

    Args:
        model: a :class:`~scoresde.models.ScoreModel` (any parameterisation; only its x0 view is used).
        x0: data ``(B, *event_shape)``, float32/float64; with ``levels``, scaled to [-1, 1] on the
            ``levels``-point lattice ``-1 + 2k/(levels - 1)``.
        steps: N, the number of latent steps (an integer >= 1). Default: a DiscreteVPSDE's own N,
            else 1000.
        t_min: the first grid point t_1 (default the SDE's t_min; 1/N for a DiscreteVPSDE).
        reverse_variance: ``'beta'`` (sigma_{t|s}^2) or ``'posterior'`` (tilde sigma^2).
        levels: the number of values of discrete data (256 for 8-bit images, 17 for the digits):
            the discretised decoder; None: continuous data and the Gaussian density decoder.
        estimator: ``'exact'`` (every KL term), ``'uniform'`` or ``'importance'`` (``n_t`` sampled
            steps per sample, unbiased).
        generator: the source of the noise and of the sampled steps.
        differentiable: keep the autograd graph (to train on the bound); otherwise no graph is built.

    Returns:
        A :class:`~scoresde.bounds.result.BoundResult` (nats; ``.bits_per_dim()``); model calls:
        N (exact) or 1 + n_t (sampled) on the batch.
    """
    check_model(model)
    x0, levels = check_data(x0, levels)
    sde = model.sde
    N = _check_steps(sde, steps)
    if t_min is not None:
        t_min = check_finite_number("t_min", t_min, positive=True)
        if not t_min < sde.T:
            raise ValueError(f"t_min: expected a time in (0, T={sde.T}), got {t_min}")
    check_choice("reverse_variance", reverse_variance, REVERSE_VARIANCES)
    check_choice("estimator", estimator, BOUND_ESTIMATORS)
    n_t = check_count("n_t", n_t)
    check_generator(generator)
    chain = _Chain(sde, chain_grid(sde, N, t_min))
    if N > 1 and not (chain.lam[1:] < chain.lam[:-1]).all():
        raise ValueError(f"steps: the log-SNR of {sde!r} must strictly decrease along the {N}-point grid from "
                         f"t_min={float(chain.t[0]):g} to T={float(chain.t[-1]):g}; use fewer steps")

    B, dim = x0.shape[0], x0[0].numel()
    nfe0 = model.nfe
    with torch.set_grad_enabled(differentiable):
        prior = prior_kl(sde, x0)
        # L_0: the decoder at x_1
        first = torch.zeros(B, dtype=torch.long)
        t_1, alpha_1, sigma_1, _ = (append_dims(v, x0.ndim) for v in chain.at(first, x0))
        x_1 = alpha_1 * x0 + sigma_1 * _randn(x0, generator)
        recon = decoder_nll(x0, denoise(model, x_1, t_1.flatten()), sigma_1, levels)

        terms = terms_se = None
        if N == 1:
            diffusion = torch.zeros_like(prior)
        elif estimator == "exact":
            per_step = [_sampled_kl(model, chain, x0, torch.full((B,), k, dtype=torch.long), reverse_variance,
                                    generator) for k in range(1, N)]
            diffusion = torch.stack(per_step).sum(0)
            every = torch.stack([recon, *per_step, prior]).detach().double()
            terms = every.mean(1)
            terms_se = every.std(1) / B**0.5 if B > 1 else torch.full_like(terms, float("nan"))
        else:
            if estimator == "uniform":
                q = torch.full((N - 1,), 1.0 / (N - 1), dtype=torch.float64)
            else:
                q = _importance_distribution(chain, x0, reverse_variance)
            diffusion = torch.zeros_like(prior)
            q_device = q.to(generator.device if generator is not None else "cpu")
            for _ in range(n_t):
                k = torch.multinomial(q_device, B, replacement=True, generator=generator).cpu() + 1
                weight = (1.0 / q[k - 1]).to(device=x0.device, dtype=x0.dtype)
                diffusion = diffusion + weight * _sampled_kl(model, chain, x0, k, reverse_variance, generator)
            diffusion = diffusion / n_t
    nll = prior + diffusion + recon
    return BoundResult(nll=nll, prior=prior, diffusion=diffusion, reconstruction=recon, dim=dim, kind="discrete",
                       estimator=estimator if N > 1 else "exact", nfe=model.nfe - nfe0, times=chain.t,
                       levels=levels, steps=N, reverse_variance=reverse_variance,
                       n_t=n_t if estimator != "exact" and N > 1 else 0, terms=terms,
                       terms_se=terms_se)


def _sampled_kl(model: ScoreModel, chain: _Chain, x0: Tensor, k: Tensor, reverse_variance: str,
                generator: torch.Generator | None) -> Tensor:
    """L at step k -> k - 1 (per sample), at one draw x_t = alpha_t x0 + sigma_t eps: one model call."""
    t, c = chain.step(k, x0)
    _, alpha_t, sigma_t, _ = (append_dims(v, x0.ndim) for v in chain.at(k, x0))
    x_t = alpha_t * x0 + sigma_t * _randn(x0, generator)
    return kl_term(x0, denoise(model, x_t, t.flatten()), x_t, c, reverse_variance)


def _importance_distribution(chain: _Chain, x0: Tensor, reverse_variance: str) -> Tensor:
    """q over the N - 1 KL terms: the Gaussian-data proxy of each term's mean, mixed with uniform."""
    n = chain.t.numel() - 1
    data_var = float(x0.detach().double().var()) if x0.numel() > 1 else 1.0
    proxy = chain.expected_terms(x0[0].numel(), max(data_var, 1e-12), reverse_variance).clamp_min(0)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if not torch.isfinite(proxy).all() or float(proxy.sum()) <= 0:
        return uniform
    return (1 - DEFENSIVE_MIX) * proxy / proxy.sum() + DEFENSIVE_MIX * uniform
