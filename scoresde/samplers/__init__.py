"""Samplers: one registry, one entry point (:func:`sample`), one file per algorithm.

Every module in this package is imported here, so a new sampler file registers itself.
"""
import importlib
import pkgutil

from .base import (
    SAMPLERS,
    BrownianNoise,
    GeneratorNoise,
    Sampler,
    SampleResult,
    SamplingContext,
    available,
    brownian_path,
    get_sampler,
    register,
    sample,
)

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base" and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["SAMPLERS", "Sampler", "SampleResult", "SamplingContext", "available", "brownian_path",
           "get_sampler", "register", "sample", "GeneratorNoise", "BrownianNoise"]
