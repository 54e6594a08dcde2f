"""Input checks shared by the bounds (built on :mod:`scoresde.checks`): each raises before any work, naming the
argument, the value and what is allowed."""
from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_choice, check_count, check_instance  # noqa: F401  (the one policy, re-exported)
from ..checks import check_generator as _check_generator
from ..models import ScoreModel
from .gaussian import check_levels, check_on_lattice

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_model(model) -> ScoreModel:
    return check_instance("model", model, ScoreModel, "a scoresde.ScoreModel")


def check_generator(generator) -> torch.Generator | None:
    return _check_generator("generator", generator)


def check_data(x0, levels) -> tuple[Tensor, int | None]:
    """Finite float32/float64 data ``(B, *event)``; with ``levels``, on the lattice of [-1, 1]."""
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0: expected a tensor of data (B, *event_shape), got {type(x0).__name__}")
    if levels is not None:
        levels = check_levels(levels)
    if not x0.is_floating_point():
        scale = f"levels={levels}" if levels is not None else "levels (256 for 8-bit data)"
        raise ValueError(f"x0: integer data ({x0.dtype}) are discrete: scale them to [-1, 1] as floats, "
                         f"x0 = x0.double() / (L - 1) * 2 - 1 for L levels, and give {scale}")
    if x0.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x0: expected float32 or float64 data, got {x0.dtype} (too few digits for the bound)")
    if x0.ndim < 2 or x0.shape[0] < 1 or x0[0].numel() < 1:
        raise ValueError(f"x0: expected shape (B, *event_shape) with B >= 1, got {tuple(x0.shape)}")
    if not torch.isfinite(x0).all():
        raise ValueError(f"x0: contains {int((~torch.isfinite(x0)).sum())} non-finite values")
    if levels is not None:
        check_on_lattice(x0, levels, name="x0")
    return x0, levels
