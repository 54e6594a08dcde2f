"""scoresde: continuous-time score-based diffusion with exact oracles and interchangeable samplers."""
from . import grids, toy
from .models import PARAMETERIZATIONS, ScoreModel
from .samplers import SampleResult, sample
from .sde import (
    SDE,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteVPSDE,
    FlowMatchingSDE,
    ProbabilityFlowODE,
    ReverseSDE,
    SubVPSDE,
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


def make_sde(name: str, **kwargs) -> SDE:
    """Build an SDE by its short name (see :data:`SDES`)."""
    if name not in SDES:
        raise ValueError(f"sde: unknown name {name!r}; known SDEs: {', '.join(SDES)}")
    return SDES[name](**kwargs)


__all__ = [
    "SDE", "VPSDE", "SubVPSDE", "VESDE", "CosineVPSDE", "DiscreteVPSDE", "FlowMatchingSDE",
    "ProbabilityFlowODE", "ReverseSDE", "ScoreModel", "PARAMETERIZATIONS", "SampleResult", "sample",
    "grids", "toy", "SDES", "make_sde", "__version__",
]
