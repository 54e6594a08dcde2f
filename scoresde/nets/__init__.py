"""Score networks sharing one interface, ``net(x, t, y=None) -> tensor shaped like x``.

:func:`build_net` builds one by name from keyword arguments (what a config file stores); a new
architecture (a U-Net for images) is one new module and one entry in :data:`NETS`.
"""
from __future__ import annotations

from torch import nn

from .embedding import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import TIME_INPUTS, ScoreMLP

NETS: dict[str, type[nn.Module]] = {"mlp": ScoreMLP}


def build_net(name: str, **kwargs) -> nn.Module:
    """Build the network ``name`` (see :data:`NETS`) with its constructor's keyword arguments."""
    if name not in NETS:
        raise ValueError(f"net: unknown architecture {name!r}; known: {', '.join(NETS)}")
    return NETS[name](**kwargs)


__all__ = ["NETS", "build_net", "ScoreMLP", "GaussianFourierEmbedding", "SinusoidalEmbedding", "EMBEDDINGS",
           "TIME_INPUTS"]
