"""2D toy data and the exact Gaussian-mixture oracle."""
from .datasets import (
    DATASETS,
    MIXTURES,
    anisotropic_mixture,
    available,
    checkerboard,
    eight_gaussians_mixture,
    gaussian_mixture_2d,
    mixture,
    pinwheel,
    rings,
    sample,
    spirals,
    swiss_roll,
    twenty_five_gaussians_mixture,
    two_moons,
)
from .mixture import GaussianMixture

eight_gaussians = DATASETS["eight_gaussians"]
twenty_five_gaussians = DATASETS["twenty_five_gaussians"]

__all__ = [
    "GaussianMixture", "DATASETS", "MIXTURES", "available", "sample", "mixture", "anisotropic_mixture",
    "eight_gaussians", "twenty_five_gaussians", "gaussian_mixture_2d", "eight_gaussians_mixture",
    "twenty_five_gaussians_mixture", "checkerboard", "two_moons", "swiss_roll", "rings", "pinwheel", "spirals",
]
