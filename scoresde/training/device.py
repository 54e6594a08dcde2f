"""The device a run or a loaded model is placed on, from a name (``'auto'``, ``'cpu'``, ``'cuda:1'``)."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with ``'auto'`` the GPU when there is one; a named ValueError otherwise."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: unknown device {name!r}; use 'cpu', 'cuda', 'cuda:<index>' or 'auto'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but CUDA is not available; use --device cpu")
    return device
