r"""Controllable generation: every guided model is again a :class:`~scoresde.models.ScoreModel`.

Conditioning changes the score, so a conditional sampler is an unconditional sampler run on a
modified score (Song et al. 2021, sec. 5 and app. I):

* **Classifier guidance** (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021, "guidance scale")

  .. math::  \tilde s(x, t) = s(x, t) + w\, \nabla_x \log p_t(y \mid x).

  With the exact score and the exact classifier, ``w = 1`` is the exact conditional score
  ``grad log p_t(x | y)``; ``w = 0`` is the unconditional model. For a Gaussian mixture the
  component posterior p_t(k | x) is the exact classifier (:func:`mixture_classifier`).
* **Classifier-free guidance** (Ho & Salimans 2022) for a network ``fn(x, t, y)`` trained with label
  dropout to a null label:

  .. math::  \tilde\epsilon = \epsilon(x, t, \varnothing) + w\, (\epsilon(x, t, y) - \epsilon(x, t, \varnothing)),

  the same convention as above (``w = 0``: unconditional, ``w = 1``: conditional; their ``1 + w``
  is our ``w``). Every parameterisation (score, eps, x0, v, velocity) is affine in the score at
  fixed (x, t) and the weights sum to 1, so the combination is done on the raw outputs.
* **Imputation** of the coordinates outside a mask given observed values ``y`` on it. In every
  variant the observed coordinates follow the exact score of the noised observation,
  ``-(x_o - alpha_t y) / sigma_t^2`` (the state's observed part is distributed as
  ``alpha_t y + sigma_t z`` at every t), and :meth:`ImputationModel.fill` writes ``y`` back at the
  end. The unobserved coordinates get

  - ``replacement`` (Song et al. 2021, app. I.2): the unconditional score at the state whose
    observed part is replaced by a fresh noised observation ``alpha_t y + sigma_t z``. An
    approximation: it samples p_t(x_u | y_t) for a random y_t, not p_t(x_u | y);
  - ``reconstruction guidance`` (Ho et al. 2022, "Video Diffusion Models", eq. 7): the score plus
    ``w grad_{x_u} log N(y; x0_hat_o(x_t), r_t^2 I)`` with Tweedie's denoiser ``x0_hat`` and
    ``r_t^2 = sigma_t^2 / alpha_t^2`` (Ho et al.'s weighting), or
    ``r_t^2 = v sigma_t^2 / (sigma_t^2 + alpha_t^2 v)`` given a data variance ``v`` (Song et al.
    2023, "Pseudoinverse-guided diffusion"; exact for N(0, v I) data). Also an approximation;
  - ``exact`` (:func:`mixture_imputation`): for a Gaussian mixture the conditional p(x_u | x_o = y)
    is again a Gaussian mixture (:func:`conditional_mixture`), so its score is exact: the ground
    truth the approximations are measured against.

Guided models evaluate the base model inside ``torch.enable_grad`` where they need gradients, so
samplers may run them under ``torch.no_grad``. Each guided model counts its own calls in ``nfe``,
and each costs one call of the network underneath (counted again by a base :class:`ScoreModel`):
classifier-free guidance batches its conditional and unconditional predictions into one call of
``fn`` on 2B points; classifier guidance adds one classifier forward and backward pass; the
gradient-based variants add one backward pass through the network.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._tensor import append_dims, batch_time, check_finite_number
from .checks import check_generator
from .models import PARAMETERIZATIONS, ScoreModel
from .sde import SDE
from .toy.mixture import GaussianMixture

__all__ = ["classifier_guidance", "mixture_classifier", "classifier_free_guidance", "mixture_conditional_fn",
           "ImputationModel", "replacement_imputation", "reconstruction_guidance", "mixture_imputation",
           "conditional_mixture", "IMPUTATION_METHODS"]

IMPUTATION_METHODS = ("replacement", "reconstruction", "exact")


# ---------------------------------------------------------------------------------------------
# Labels and masks: validated at the public boundary.
# ---------------------------------------------------------------------------------------------
def _check_labels(y, n_classes: int | None, name: str = "y") -> Tensor:
    """Labels as a 0-d or 1-d int64 tensor, within [0, n_classes) when n_classes is known."""
    if isinstance(y, bool):
        raise ValueError(f"{name}: expected an integer class label or a 1-D tensor of them, got {y!r}")
    if isinstance(y, int):
        labels = torch.tensor(y)
    elif isinstance(y, Tensor) and not y.is_floating_point() and not y.is_complex() and y.ndim <= 1 \
            and y.dtype != torch.bool:
        labels = y.long()
    else:
        raise ValueError(f"{name}: expected an integer class label or a 1-D integer tensor of labels, got {y!r}")
    if n_classes is not None and labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)].flatten()[0]
        raise ValueError(f"{name}: class label {int(bad)} out of range; allowed labels are 0..{n_classes - 1}")
    return labels


def _labels_for(labels: Tensor, x: Tensor, name: str = "y") -> Tensor:
    if labels.ndim == 1 and labels.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: {labels.shape[0]} labels for a batch of {x.shape[0]} points")
    return labels.to(x.device).expand(x.shape[0])


def _check_n_classes(n_classes) -> int | None:
    if n_classes is None:
        return None
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes: expected a positive integer, got {n_classes!r}")
    return n_classes


def _check_scale(scale) -> float:
    return check_finite_number("scale", scale)


# ---------------------------------------------------------------------------------------------
# Classifier guidance
# ---------------------------------------------------------------------------------------------
def classifier_guidance(model: ScoreModel, classifier: Callable[[Tensor, Tensor], Tensor], y, scale: float = 1.0,
                        *, n_classes: int | None = None) -> ScoreModel:
    """``s(x, t) + scale * grad_x log p_t(y | x)`` as a score-parameterised :class:`ScoreModel`.

    Args:
        model: the unconditional model.
        classifier: ``classifier(x, t) -> (B, K)`` logits of the noisy-data classifier p_t(k | x)
            (normalised by ``log_softmax`` here); ``t`` is a ``(B,)`` tensor.
        y: the class label (an int, for every sample) or a ``(B,)`` tensor of labels.
        scale: the guidance scale w (0: unconditional; 1: the conditional score with an exact classifier).
        n_classes: K, to check labels before sampling (they are also checked against the logits).
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    if not callable(classifier):
        raise ValueError(f"classifier: expected a callable classifier(x, t) -> logits, got {type(classifier).__name__}")
    labels = _check_labels(y, _check_n_classes(n_classes))
    scale = _check_scale(scale)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        score = model.score(x, t)
        if scale == 0:
            return score
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier: expected logits of shape ({x.shape[0]}, K), got {tuple(logits.shape)}")
            lab = _labels_for(_check_labels(labels, logits.shape[1]), x)
            log_py = torch.log_softmax(logits, dim=1).gather(1, lab[:, None]).sum()
            (grad,) = torch.autograd.grad(log_py, x_in)
        return score + scale * grad

    return ScoreModel(guided, model.sde, "score")


def mixture_classifier(mix: GaussianMixture, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact classifier of a mixture's components: logits ``log w_k + log N(x; alpha mu_k, C_k(t))``.

    Their softmax is the posterior p_t(k | x) (:meth:`GaussianMixture.posterior`); in log form it has
    no underflow far from a component, so its gradient stays finite.
    """
    components = [mix.component(k) for k in range(mix.n_components)]
    log_w = mix.weights.log()

    def logits(x: Tensor, t: Tensor) -> Tensor:
        return torch.stack([c.log_prob_t(x, t, sde) for c in components], 1) + log_w.to(x)

    return logits


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------
def classifier_free_guidance(fn: Callable[[Tensor, Tensor, Tensor], Tensor], sde: SDE, y, scale: float = 1.0, *,
                             null_label: int, parameterization: str = "eps", n_classes: int | None = None,
                             time_input: str = "continuous") -> ScoreModel:
    """``out(x, t, null) + scale * (out(x, t, y) - out(x, t, null))`` as a :class:`ScoreModel`.

    Args:
        fn: ``fn(x, t, labels) -> prediction`` (shape of x) of a network trained with label dropout;
            ``labels`` is a ``(B,)`` int64 tensor where ``null_label`` means "no label".
        y: the class label (an int) or a ``(B,)`` tensor of labels; each in [0, n_classes) and not the null label.
        scale: w (0: unconditional, 1: conditional, > 1: sharper).
        parameterization, time_input: what ``fn`` predicts and how it takes time (see ScoreModel).
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(x, t, y), got {type(fn).__name__}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization: unknown {parameterization!r}; allowed: {', '.join(PARAMETERIZATIONS)}")
    if isinstance(null_label, bool) or not isinstance(null_label, int):
        raise ValueError(f"null_label: expected an integer label, got {null_label!r}")
    labels = _check_labels(y, _check_n_classes(n_classes))
    if (labels == null_label).any():
        raise ValueError(f"y: the null label {null_label} means 'unconditional'; use scale=0 for that")
    scale = _check_scale(scale)

    on_device: dict[torch.device, Tensor] = {}  # the labels copied once per device, not at every call

    def guided(x: Tensor, t: Tensor) -> Tensor:
        if x.device not in on_device:
            on_device[x.device] = labels.to(x.device)
        lab = _labels_for(on_device[x.device], x)
        null = torch.full_like(lab, null_label)
        if scale == 1:
            return fn(x, t, lab)
        if scale == 0:
            return fn(x, t, null)
        out = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lab, null]))
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return ScoreModel(guided, sde, parameterization, time_input=time_input)


def mixture_conditional_fn(mix: GaussianMixture, sde: SDE) -> tuple[Callable[[Tensor, Tensor, Tensor], Tensor], int]:
    """The exact conditional/unconditional score of a mixture as a labelled ``fn(x, t, labels)``.

    Label k < K gives component k's score; the null label K gives the mixture's score. Returns
    ``(fn, null_label)``; a stand-in for a network trained with label dropout.
    """
    K = mix.n_components

    def fn(x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        labels = _labels_for(_check_labels(labels, K + 1, "labels"), x, "labels")
        out = torch.empty_like(x)
        for k in labels.unique().tolist():
            rows = labels == k
            tk = t[rows] if t.ndim else t
            out[rows] = mix.score(x[rows], tk, sde) if k == K else mix.component_score(x[rows], tk, sde, k)
        return out

    return fn, K


# ---------------------------------------------------------------------------------------------
# Imputation
# ---------------------------------------------------------------------------------------------
class ImputationModel(ScoreModel):
    """A score model for x given the observed values ``y`` where ``mask`` is True.

    ``mask`` and ``y`` have the per-sample shape (one observation for all samples) or the batch
    shape. :meth:`fill` writes the observations into a sample.
    """

    def __init__(self, fn, sde: SDE, y: Tensor, mask: Tensor, method: str):
        super().__init__(fn, sde, "score")
        self.y, self.mask, self.method = y, mask, method

    def fill(self, x: Tensor) -> Tensor:
        """``x`` with its observed coordinates set to ``y``."""
        y, mask = _observation_for(self.y, self.mask, x)
        return torch.where(mask, y, x)


def _check_observation(y, mask) -> tuple[Tensor, Tensor]:
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise ValueError(f"y: expected a floating-point tensor of observed values, got {type(y).__name__}")
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask: expected a boolean tensor (True where observed), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or ((mask != 0) & (mask != 1)).any():
            raise ValueError(f"mask: expected a boolean (or 0/1 integer) tensor, got dtype {mask.dtype}")
        mask = mask.bool()
    if mask.shape != y.shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} differs from y's shape {tuple(y.shape)}")
    if not torch.isfinite(torch.where(mask, y, torch.zeros_like(y))).all():
        raise ValueError("y: observed values must be finite")
    if not mask.any():
        raise ValueError("mask: no coordinate is observed (an all-False mask); sample unconditionally instead")
    return y, mask


def _observation_for(y: Tensor, mask: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """y and mask broadcast to x's shape; a ValueError if they do not fit."""
    if mask.shape != x.shape and mask.shape != x.shape[1:]:
        raise ValueError(f"mask: shape {tuple(mask.shape)} fits neither the points' shape {tuple(x.shape)} "
                         f"nor their per-sample shape {tuple(x.shape[1:])}")
    return y.to(x).expand_as(x), mask.to(x.device).expand_as(x)


def _observed_score(x: Tensor, y: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Exact score of the noised observation alpha_t y + sigma_t z: -(x - alpha y) / sigma^2."""
    return -(x - alpha * y) / sigma**2


def _coeffs(sde: SDE, x: Tensor, t) -> tuple[Tensor, Tensor]:
    alpha, sigma = sde._alpha_sigma(batch_time(t, x))  # unchecked: t comes from a checked run
    return append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)


def replacement_imputation(model: ScoreModel, y: Tensor, mask: Tensor, *,
                           generator: torch.Generator | None = None) -> ImputationModel:
    """The replacement method (Song et al. 2021, app. I.2) as a score model.

    Unobserved coordinates: ``s(x~, t)`` with ``x~ = x`` off the mask and ``alpha_t y + sigma_t z``
    on it, ``z`` fresh from ``generator`` at every call. Observed coordinates: the exact score of
    the noised observation. With a predictor-corrector sampler this is Song et al.'s method
    (replacement before every predictor and corrector step); with any other sampler, the same idea.
    """
    y, mask = _check_observation(y, mask)
    generator = check_generator("generator", generator)  # an integer seed is refused here, not at the first call
    sde = model.sde

    def fn(x: Tensor, t: Tensor) -> Tensor:
        y_, m = _observation_for(y, mask, x)
        alpha, sigma = _coeffs(sde, x, t)
        device = generator.device if generator is not None else x.device
        z = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
        x_rep = torch.where(m, alpha * y_ + sigma * z, x)
        return torch.where(m, _observed_score(x, y_, alpha, sigma), model.score(x_rep, t))

    return ImputationModel(fn, sde, y, mask, "replacement")


def reconstruction_guidance(model: ScoreModel, y: Tensor, mask: Tensor, scale: float = 1.0, *,
                            data_var: float | None = None) -> ImputationModel:
    """Reconstruction guidance (Ho et al. 2022) as a score model.

    Unobserved coordinates: ``s(x, t) + scale * grad_{x} log N(y; x0_hat_o(x, t), r_t^2 I)`` with
    Tweedie's ``x0_hat`` (one model call, differentiated by autograd) and ``r_t^2 = sigma^2/alpha^2``,
    or ``v sigma^2 / (sigma^2 + alpha^2 v)`` when ``data_var = v`` is given. Observed coordinates: the
    exact score of the noised observation.
    """
    y, mask = _check_observation(y, mask)
    scale = _check_scale(scale)
    if data_var is not None:
        data_var = check_finite_number("data_var", data_var, positive=True)
    sde = model.sde

    def fn(x: Tensor, t: Tensor) -> Tensor:
        y_, m = _observation_for(y, mask, x)
        alpha, sigma = _coeffs(sde, x, t)
        r2 = sigma**2 / alpha**2 if data_var is None else data_var * sigma**2 / (sigma**2 + alpha**2 * data_var)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = model.predict(x_in, t)
            score = -model.to_eps(out, x_in, t) / sigma
            x0 = model.to_x0(out, x_in, t)
            log_lik = -0.5 * (torch.where(m, y_ - x0, torch.zeros_like(x0)) ** 2 / r2).sum()
            (grad,) = torch.autograd.grad(log_lik, x_in)
        return torch.where(m, _observed_score(x, y_, alpha, sigma), score.detach() + scale * grad)

    return ImputationModel(fn, sde, y, mask, "reconstruction")


def conditional_mixture(mix: GaussianMixture, y: Tensor, mask: Tensor) -> GaussianMixture:
    """The exact p(x_u | x_o = y) of a Gaussian mixture, over the unobserved coordinates (in order).

    Per component: ``mu_u + S_uo S_oo^{-1} (y_o - mu_o)``, covariance ``S_uu - S_uo S_oo^{-1} S_ou``,
    weight proportional to ``w_k N(y_o; mu_o, S_oo)`` (Bishop 2006, sec. 2.3.1 and 9.2).
    """
    y, mask = _check_observation(y, mask)
    if mask.shape != (mix.dim,):
        raise ValueError(f"mask: expected shape ({mix.dim},) for this mixture, got {tuple(mask.shape)}")
    if mask.all():
        raise ValueError("mask: every coordinate is observed; nothing to impute")
    o, u = mask.cpu(), ~mask.cpu()
    y_o = y.detach().cpu().double()[o]
    means, covs = mix.means, mix.covs
    s_oo = covs[:, o][:, :, o]
    s_uo = covs[:, u][:, :, o]
    chol = torch.linalg.cholesky(s_oo)
    diff = (y_o - means[:, o])[..., None]                                    # (K, n_o, 1)
    gain = torch.cholesky_solve(s_uo.transpose(1, 2), chol).transpose(1, 2)  # S_uo S_oo^{-1}
    cond_means = means[:, u] + (gain @ diff)[..., 0]
    cond_covs = covs[:, u][:, :, u] - gain @ s_uo.transpose(1, 2)
    white = torch.linalg.solve_triangular(chol, diff, upper=False)[..., 0]
    log_n = -0.5 * (white**2).sum(1) - torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1) \
        - 0.5 * int(o.sum()) * math.log(2 * math.pi)
    weights = torch.softmax(mix.weights.log() + log_n, 0)
    return GaussianMixture(weights, cond_means, 0.5 * (cond_covs + cond_covs.transpose(1, 2)))


def mixture_imputation(mix: GaussianMixture, sde: SDE, y: Tensor, mask: Tensor) -> ImputationModel:
    """The exact conditional score of a mixture given x_o = y: the ground truth for imputation.

    p_t(x_t | y) = N(x_o; alpha y, sigma^2 I) x p_t^{cond}(x_u) with the mixture of
    :func:`conditional_mixture` pushed through the SDE, so both parts of the score are closed forms.
    """
    cond = conditional_mixture(mix, y, mask)
    y, mask = _check_observation(y, mask)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        y_, m = _observation_for(y, mask, x)
        alpha, sigma = _coeffs(sde, x, t)
        out = _observed_score(x, y_, alpha, sigma)
        out[:, ~mask.to(x.device)] = cond.score(x[:, ~mask.to(x.device)], t, sde)
        return out

    model = ImputationModel(fn, sde, y, mask, "exact")
    model.conditional = cond
    return model
