"""Input checks shared by the bounds: each raises before any work, naming the argument and what is allowed."""
from __future__ import annotations

import operator

import torch
from torch import Tensor

from ..models import ScoreModel
from .gaussian import check_levels, check_on_lattice

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_model(model) -> ScoreModel:
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model: expected a scoresde.ScoreModel, got {type(model).__name__}")
    return model


def check_generator(generator) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_count(name: str, value, *, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (a bool or a float such as 2.5 or 10.0 is refused)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {n}")
    return n


def check_choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")
    return value


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
