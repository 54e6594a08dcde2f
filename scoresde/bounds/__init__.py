"""Variational bounds on -log p_theta(x_0) of a diffusion model, one job per module.

* :mod:`~scoresde.bounds.gaussian`: Gaussian KL, the continuous and the discretised Gaussian decoders;
* :mod:`~scoresde.bounds.discrete`: the N-step bound ``L_T + sum L_t + L_0`` (DDPM, for every SDE of the family);
* :mod:`~scoresde.bounds.continuous`: its continuous-time limit, the likelihood-weighted DSM bound;
* :mod:`~scoresde.bounds.result`: :class:`BoundResult`.
"""
from .continuous import continuous_bound
from .discrete import BOUND_ESTIMATORS, REVERSE_VARIANCES, chain_coefficients, variational_bound
from .gaussian import (
    check_levels,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
from .result import BoundResult

__all__ = ["variational_bound", "continuous_bound", "BoundResult", "normal_kl", "gaussian_log_likelihood",
           "discretized_gaussian_log_likelihood", "check_levels", "chain_coefficients", "REVERSE_VARIANCES",
           "BOUND_ESTIMATORS"]
