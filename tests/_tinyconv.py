"""A tiny stand-in image network with the registry's interface (``net(x, t, y=None)``), for tests only."""
import pytest
import torch
from torch import nn

from scoresde.nets import NETS


class TinyConv(nn.Module):
    """conv -> + embedding(t, y) -> SiLU -> conv (zero-initialised), for (B, C, H, H) images."""

    def __init__(self, sde, parameterization="eps", in_channels=1, image_size=8, num_classes=None, channels=8):
        super().__init__()
        self.sde, self.parameterization, self.num_classes = sde, parameterization, num_classes
        self.shape = (in_channels, image_size, image_size)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.time = nn.Linear(1, channels)
        self.label = nn.Embedding(num_classes + 1, channels) if num_classes is not None else None
        self.out = nn.Conv2d(channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def null_label(self):
        return self.num_classes

    def forward(self, x, t, y=None):
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x: expected images of shape (B, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        e = self.time(self.sde.lam(t.to(x.dtype))[:, None])
        if self.label is not None:
            e = e + self.label(torch.full_like(t, self.num_classes, dtype=torch.long) if y is None else y)
        h = nn.functional.silu(self.inp(x) + e[:, :, None, None])
        return self.out(h)


@pytest.fixture(name="tinyconv")
def tinyconv_fixture():
    """Register ``TinyConv`` as ``'tinyconv'`` for one test."""
    NETS["tinyconv"] = TinyConv
    yield "tinyconv"
    del NETS["tinyconv"]
