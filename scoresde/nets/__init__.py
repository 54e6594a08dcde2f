"""Score networks sharing one interface, ``net(x, t_input, y=None) -> tensor shaped like x``.

:func:`build_net` builds one by name from keyword arguments (what a config file stores); a new
architecture is one new module and one entry in :data:`NETS`:

* ``mlp``: :class:`ScoreMLP`, a residual MLP for low-dimensional data ``(B, dim)``;
* ``unet``: :class:`UNet`, the DDPM / ADM U-Net for images ``(B, C, I, I)``;
* ``dit``: :class:`DiT`, the diffusion transformer with adaLN-Zero for images ``(B, C, I, I)``.

The arguments a network takes from the data's event shape are given by :func:`shape_kwargs`.
Every network has ``null_label`` (``num_classes``, the classifier-free "no label" class, or None).
"""
from __future__ import annotations

import inspect
import math

from torch import nn

from .dit import DiT
from .embedding import EMBEDDINGS, LEGACY_EMBEDDING, LEGACY_OPTIONS, GaussianFourierEmbedding, SinusoidalEmbedding, SmoothEmbedding
from .mlp import TIME_INPUTS, ScoreMLP
from .unet import UNet

NETS: dict[str, type[nn.Module]] = {"mlp": ScoreMLP, "unet": UNet, "dit": DiT}


def build_net(name: str, **kwargs) -> nn.Module:
    """Build the network ``name`` (see :data:`NETS`) with its constructor's keyword arguments."""
    if name not in NETS:
        raise ValueError(f"net: unknown architecture {name!r}; known: {', '.join(NETS)}")
    params = inspect.signature(NETS[name]).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            raise ValueError(f"build_net: the net {name!r} takes no option {', '.join(map(repr, unknown))}; "
                             f"its options: {', '.join(params)}")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise ValueError(f"build_net: the net {name!r} needs {', '.join(map(repr, missing))}; "
                         f"its options: {', '.join(params)}")
    return NETS[name](**kwargs)


def shape_kwargs(name: str, event_shape: tuple[int, ...]) -> dict[str, int]:
    """The constructor arguments of net ``name`` fixed by the data's event shape (one sample's shape).

    ``mlp``: ``{'dim': prod(event_shape)}``; ``unet`` and ``dit``: ``{'in_channels': C, 'image_size': I}``
    for an event shape ``(C, I, I)``.
    """
    if name not in NETS:
        raise ValueError(f"net: unknown architecture {name!r}; known: {', '.join(NETS)}")
    event_shape = tuple(int(n) for n in event_shape)
    if name == "mlp":
        return {"dim": math.prod(event_shape)}
    if len(event_shape) != 3 or event_shape[1] != event_shape[2]:
        raise ValueError(f"event_shape: net {name!r} takes square images (C, I, I), got {event_shape}")
    return {"in_channels": event_shape[0], "image_size": event_shape[1]}


__all__ = ["NETS", "build_net", "shape_kwargs", "ScoreMLP", "UNet", "DiT", "GaussianFourierEmbedding",
           "SinusoidalEmbedding", "SmoothEmbedding", "EMBEDDINGS", "LEGACY_EMBEDDING", "LEGACY_OPTIONS", "TIME_INPUTS"]
