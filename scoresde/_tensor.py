"""Small tensor helpers shared across the package."""
from __future__ import annotations

import math
import numbers

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


def _is_real_scalar(value) -> bool:
    """A real number that is not a boolean: int, float, a NumPy real scalar, or a one-element real tensor."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def check_finite_number(name: str, value, *, positive: bool = False, allowed: str | None = None) -> float:
    """Validate a scalar hyper-parameter and return it as a float.

    A value that is not a real number (a string, a boolean, None, a list) is a TypeError; a real number
    that is NaN, infinite or (with ``positive``) not above 0 is a ValueError. Both messages name the argument.
    """
    what = allowed or ("a finite positive number" if positive else "a finite number")
    if not _is_real_scalar(value):
        raise TypeError(f"{name}: expected {what}, got {value!r} of type {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def check_count(name: str, value, *, minimum: int = 1) -> int:
    """Validate a count (a number of samples, steps, ...) and return it as an int.

    Only integers are counts: ``2.5`` (or ``2.0``, or ``True``) is a TypeError rather than a
    silently truncated 2; an integer below ``minimum`` is a ValueError. Both messages name the argument.
    """
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point()
        and not value.is_complex())
    if not integral or isinstance(value, bool) or type(value).__name__ == "bool_" or (
            isinstance(value, Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {v}")
    return v


def check_bool(name: str, value) -> bool:
    """A flag is ``True`` or ``False``: the string ``'false'`` (which is truthy) or ``0`` is a TypeError."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise TypeError(f"{name}: expected True or False, got {value!r} of type {type(value).__name__}")
    return bool(value)


def check_generator(name: str, generator) -> torch.Generator | None:
    """``None`` or a ``torch.Generator``; a NumPy generator or an integer seed is a TypeError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__} "
                        "(seed one with torch.Generator().manual_seed(seed))")
    return generator


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
