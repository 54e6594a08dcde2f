"""Bridges to models trained elsewhere: diffusers pipelines and schedulers, k-diffusion / EDM
denoisers, and score_sde's time conventions.

diffusers is an optional dependency (``pip install scoresde[diffusers]``); it is imported inside the
functions that need it, so ``scoresde.interop`` imports without it.
"""
from .denoiser import Denoiser, from_denoiser, to_denoiser
from .diffusers import (
    DiffusersGrid,
    diffusers_alphas_cumprod,
    diffusers_equivalent,
    diffusers_grid,
    diffusers_sde,
    from_diffusers,
)
from .score_sde import score_sde_model, score_sde_time_input

__all__ = ["from_diffusers", "diffusers_grid", "diffusers_equivalent", "diffusers_sde", "diffusers_alphas_cumprod",
           "DiffusersGrid", "ScoresdeScheduler", "from_denoiser", "to_denoiser", "Denoiser", "score_sde_model",
           "score_sde_time_input"]


def __getattr__(name):
    # the scheduler subclasses diffusers' classes: defined on first use, so that diffusers stays optional
    if name == "ScoresdeScheduler":
        from .scheduler import ScoresdeScheduler
        return ScoresdeScheduler
    raise AttributeError(f"module 'scoresde.interop' has no attribute {name!r}")
