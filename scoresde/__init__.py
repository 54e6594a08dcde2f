"""scoresde: continuous-time score-based diffusion with exact oracles and interchangeable samplers."""
from . import grids, toy
from .dynamics import ProbabilityFlowODE, ReverseSDE
from .models import PARAMETERIZATIONS, ScoreModel
from .samplers import SampleResult, sample
from .sde import (
    SDE,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteVPSDE,
    FlowMatchingSDE,
    SubVPSDE,
    check_sde_kwargs,
)

__version__ = "0.1.0"

SDES = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine": CosineVPSDE,
    "discrete": DiscreteVPSDE,
    "flow": FlowMatchingSDE,
}


# Heavier parts load on first use: `scoresde.training`, `scoresde.likelihood`, ... (PEP 562).
_LAZY_MODULES = ("config", "guidance", "likelihood", "losses", "metrics", "nets", "plotting", "studies", "training")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by its short name (see :data:`SDES`)."""
    if name not in SDES:
        raise ValueError(f"sde: unknown name {name!r}; known SDEs: {', '.join(SDES)}")
    return SDES[name](**check_sde_kwargs(SDES[name], kwargs))


__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "FlowMatchingSDE",
    "ProbabilityFlowODE", "ReverseSDE", "ScoreModel", "PARAMETERIZATIONS", "SampleResult", "sample",
    "grids", "toy", "SDES", "make_sde", "__version__", *_LAZY_MODULES,
]
