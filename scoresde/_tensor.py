"""Small tensor helpers shared across the package."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a per-sample ``(B,)`` tensor broadcasts against ``ndim`` dims.

    A 0-d tensor stays 0-d (it already broadcasts).
    """
    if v.ndim == 0:
        return v
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"cannot append dims: tensor has {v.ndim} dims, target has {ndim}")
    return v.reshape(v.shape + (1,) * missing)


def as_time(t, like: Tensor | None = None) -> Tensor:
    """Turn ``t`` (number or tensor) into a tensor on the device/dtype of ``like`` when given.

    Numbers become float64 tensors when no reference tensor is given, so closed forms are exact.
    """
    if isinstance(t, Tensor):
        if like is not None and (t.device != like.device or not t.is_floating_point()):
            return t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float64)
        return t if t.is_floating_point() else t.to(torch.float64)
    if like is not None:
        dtype = like.dtype if like.is_floating_point() else torch.float64
        return torch.tensor(float(t), device=like.device, dtype=dtype)
    return torch.tensor(float(t), dtype=torch.float64)


def batch_time(t, x: Tensor) -> Tensor:
    """Broadcast ``t`` (scalar or ``(B,)``) to a ``(B,)`` tensor with ``x``'s device and dtype."""
    t = as_time(t, like=x).to(dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t: expected a scalar or shape ({x.shape[0]},) to match the batch of x, got {tuple(t.shape)}")
    return t


def check_finite_number(name: str, value, *, positive: bool = False, allowed: str | None = None) -> float:
    """Validate a scalar hyper-parameter; raise a ValueError naming it otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a real number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        what = allowed or ("a finite positive number" if positive else "a finite number")
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v
