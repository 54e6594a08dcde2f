"""Small tensor helpers shared across the package."""
from __future__ import annotations

import torch
from torch import Tensor

# the argument checks live in .checks (one policy); these names stay importable from here
from .checks import check_bool, check_count, check_finite_number, check_generator  # noqa: F401


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


def broadcast_time(t: Tensor, x: Tensor, name: str = "t") -> Tensor:
    """``t`` (0-d, ``(B,)`` or with trailing singleton dims) made to broadcast against ``x`` without enlarging it.

    Raises a ValueError naming ``t``, its shape and the shapes allowed, instead of torch's broadcasting error.
    """
    ok = t.ndim == 0 or (t.ndim <= x.ndim and t.shape[0] == x.shape[0]
                         and all(d == 1 or d == xd for d, xd in zip(t.shape[1:], x.shape[1:], strict=False)))
    if not ok:
        raise ValueError(f"{name}: expected a scalar or a per-sample time of shape ({x.shape[0]},) to match "
                         f"x of shape {tuple(x.shape)}, got shape {tuple(t.shape)}")
    return append_dims(t, x.ndim)
