r"""The exact oracle: a Gaussian mixture and its score under every SDE of the family.

If ``x_0 ~ sum_k w_k N(mu_k, Sigma_k)`` and ``x_t = alpha x_0 + sigma eps``, then

.. math::  p_t(x) = \sum_k w_k\, N\big(x;\ \alpha \mu_k,\ \alpha^2 \Sigma_k + \sigma^2 I\big),

so log p_t, the score and the component posteriors p(k | x_t) are closed forms. We diagonalise
each covariance once, ``Sigma_k = U_k diag(l_k) U_k^T``; then ``C_k(t) = U_k diag(alpha^2 l_k + sigma^2) U_k^T``
for every t at once, and a per-sample t costs no extra factorisation.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._tensor import append_dims, batch_time, check_bool, check_count, check_generator
from ..models import ScoreModel
from ..sde import SDE

__all__ = ["GaussianMixture"]


def _as_float64(name: str, values) -> Tensor:
    """A float64 CPU tensor of real numbers; a TypeError naming ``name`` for strings, None, booleans, ..."""
    if values is None or isinstance(values, (str, bytes, dict)) or (
            isinstance(values, Tensor) and (values.dtype == torch.bool or values.is_complex())):
        raise TypeError(f"{name}: expected real numbers (a tensor, array or nested list), got {type(values).__name__}")
    try:
        return torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected real numbers (a tensor, array or nested list), got {values!r:.80}") from None


class GaussianMixture:
    """``sum_k weights[k] N(means[k], covs[k])`` in any dimension, with exact marginals under an SDE.

    Args:
        weights: ``(K,)``, positive, summing to 1.
        means: ``(K, D)``.
        covs: ``(K, D, D)`` symmetric positive definite, or ``(K, D)`` diagonals, or ``(K,)`` /
            a number for isotropic components.
    """

    def __init__(self, weights, means, covs):
        means = _as_float64("means", means)
        if means.ndim != 2 or means.numel() == 0:
            raise ValueError(f"means: expected shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError(f"means: must be finite, got non-finite entries {means[~torch.isfinite(means)][:4].tolist()}")
        K, D = means.shape
        weights = _as_float64("weights", weights).flatten()
        if weights.shape != (K,):
            raise ValueError(f"weights: expected shape ({K},) to match means, got {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError(f"weights: must be finite and positive, got {weights.tolist()}")
        if abs(float(weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights: must sum to 1 (within 1e-6), got sum {float(weights.sum())}")
        covs = _as_float64("covs", covs)
        if covs.ndim == 0:
            covs = covs.expand(K)
        if covs.ndim == 1:
            if covs.shape != (K,):
                raise ValueError(f"covs: isotropic variances need shape ({K},), got {tuple(covs.shape)}")
            covs = covs[:, None, None] * torch.eye(D, dtype=torch.float64)
        elif covs.ndim == 2:
            if covs.shape != (K, D):
                raise ValueError(f"covs: diagonal covariances need shape ({K}, {D}), got {tuple(covs.shape)}")
            covs = torch.diag_embed(covs)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs: expected shape ({K}, {D}, {D}), got {tuple(covs.shape)}")
        if not torch.isfinite(covs).all() or not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
            raise ValueError("covs: must be finite and symmetric")
        evals, evecs = torch.linalg.eigh(covs)
        if (evals <= 0).any():
            k = int(torch.nonzero((evals <= 0).any(1))[0])
            raise ValueError(f"covs: component {k} is not positive definite (smallest eigenvalue {float(evals[k].min()):.3g})")
        self.weights, self.means, self.covs = weights / weights.sum(), means, covs
        self._evals, self._evecs = evals, evecs
        self._cache: dict = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    def _params(self, like: Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(p.to(device=like.device, dtype=like.dtype) for p in
                                     (self.weights.log(), self.means, self._evals, self._evecs))
        return self._cache[key]

    # ----- data distribution -----------------------------------------------------------------
    def mean(self) -> Tensor:
        """Mixture mean sum_k w_k mu_k (float64)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Mixture covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T (float64)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32,
               device=None, return_labels: bool = False):
        """Draw ``n`` samples (``(n, D)``); with ``return_labels`` also the component of each."""
        n = check_count("n", n)
        check_generator("generator", generator)
        check_bool("return_labels", return_labels)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating torch.dtype such as torch.float32, got {dtype!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gen_device)
        evals, evecs = self._evals.to(gen_device), self._evecs.to(gen_device)
        # x = mu_k + U_k diag(sqrt(l_k)) z
        x = self.means.to(gen_device)[k] + torch.einsum("nij,nj->ni", evecs[k], evals[k].sqrt() * z)
        x = x.to(device=device or gen_device, dtype=dtype)
        return (x, k.to(x.device)) if return_labels else x

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact data log-density log p_0(x), shape ``(B,)``."""
        return self._component_log_probs(x, torch.ones(x.shape[0], dtype=x.dtype, device=x.device),
                                         torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)).logsumexp(-1)

    # ----- marginals under an SDE ------------------------------------------------------------
    def _component_log_probs(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) for every k: ``(B, K)``."""
        self._check_points(x)
        log_w, means, evals, evecs = self._params(x)
        a, s = alpha[:, None, None], sigma[:, None, None]
        var = a**2 * evals[None] + s**2                                   # (B, K, D)
        z = torch.einsum("kdj,bkd->bkj", evecs, x[:, None, :] - a * means[None])  # rotate into eigenbasis
        maha = (z**2 / var).sum(-1)
        logdet = torch.log(var).sum(-1)
        return log_w[None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def _check_points(self, x: Tensor):
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point torch.Tensor of shape (B, {self.dim}), got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (B, {self.dim}) for this mixture, got {tuple(x.shape)}")

    def _alpha_sigma(self, sde: SDE, x: Tensor, t) -> tuple[Tensor, Tensor]:
        t = batch_time(t, x)
        return sde.alpha_sigma(t)

    def log_prob_t(self, x: Tensor, t, sde: SDE) -> Tensor:
        """Exact log p_t(x) under ``sde``, shape ``(B,)``."""
        return self._component_log_probs(x, *self._alpha_sigma(sde, x, t)).logsumexp(-1)

    def posterior(self, x: Tensor, t, sde: SDE) -> Tensor:
        """Component posteriors p(k | x_t = x), shape ``(B, K)``, rows summing to 1."""
        return torch.softmax(self._component_log_probs(x, *self._alpha_sigma(sde, x, t)), dim=-1)

    def score(self, x: Tensor, t, sde: SDE) -> Tensor:
        """Exact score grad_x log p_t(x) = -sum_k p(k|x) C_k^{-1} (x - alpha mu_k), shape ``(B, D)``."""
        self._check_points(x)
        alpha, sigma = self._alpha_sigma(sde, x, t)
        log_w, means, evals, evecs = self._params(x)
        a, s = alpha[:, None, None], sigma[:, None, None]
        var = a**2 * evals[None] + s**2
        z = torch.einsum("kdj,bkd->bkj", evecs, x[:, None, :] - a * means[None])
        logits = log_w[None] - 0.5 * ((z**2 / var).sum(-1) + torch.log(var).sum(-1))
        post = torch.softmax(logits, dim=-1)                               # (B, K)
        comp_scores = -torch.einsum("kdj,bkj->bkd", evecs, z / var)       # back from the eigenbasis
        return (post[..., None] * comp_scores).sum(1)

    def component_score(self, x: Tensor, t, sde: SDE, k: int) -> Tensor:
        """Score of component ``k``'s marginal alone (the exact class-conditional score)."""
        self._check_points(x)
        if not 0 <= int(k) < self.n_components:
            raise ValueError(f"k: component index must lie in [0, {self.n_components}), got {k}")
        alpha, sigma = self._alpha_sigma(sde, x, t)
        _, means, evals, evecs = self._params(x)
        a, s = append_dims(alpha, 2), append_dims(sigma, 2)
        var = a**2 * evals[k] + s**2
        z = (x - a * means[k]) @ evecs[k]
        return -(z / var) @ evecs[k].T

    def marginal_moments(self, t, sde: SDE) -> tuple[Tensor, Tensor]:
        """Mean and covariance of p_t (float64): alpha m and alpha^2 Cov + sigma^2 I."""
        alpha, sigma = (float(v) for v in sde.alpha_sigma(torch.as_tensor(float(t), dtype=torch.float64)))
        return alpha * self.mean(), alpha**2 * self.covariance() + sigma**2 * torch.eye(self.dim, dtype=torch.float64)

    def component(self, k: int) -> GaussianMixture:
        """Component ``k`` as a one-component mixture."""
        return GaussianMixture([1.0], self.means[k:k + 1], self.covs[k:k + 1])

    def model(self, sde: SDE) -> ScoreModel:
        """A :class:`ScoreModel` backed by the exact score of this mixture under ``sde``."""
        model = ScoreModel(lambda x, t: self.score(x, t, sde), sde, "score")
        model.event_shape = (self.dim,)  # one sample's shape, as load_model's models carry it
        return model
