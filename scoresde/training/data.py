"""Training data sources: ``draw(n, generator, device) -> (x, labels or None)``, ``std()``, ``event_shape``.

Drawing with replacement keeps no epoch state, so the run's generator alone determines the stream and an
exact resume needs nothing else. :class:`ToyData` draws fresh samples of a 2D toy set each step,
:class:`TensorData` indexes a fixed tensor (image sets, ``.pt``/``.npy`` files, image folders), and
:func:`make_data` picks one from a name.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .. import toy
from ..images.datasets import IMAGE_DATASETS, check_labels, load_images

__all__ = ["ToyData", "TensorData", "make_data"]


class ToyData:
    """Fresh samples of a 2D toy set each step (labels: the mixture component, for the mixtures)."""

    def __init__(self, name: str, labels: bool = False):
        if name not in toy.DATASETS:
            raise ValueError(f"data: unknown toy set {name!r}; known: {', '.join(toy.available())}, or a .pt/.npy file")
        if labels and name not in toy.MIXTURES:
            raise ValueError(f"conditional: the toy set {name!r} has no labels; use a mixture "
                             f"({', '.join(sorted(toy.MIXTURES))}) or a file with labels")
        self.name, self.labels = name, labels
        self.mixture = toy.mixture(name) if name in toy.MIXTURES else None
        self.event_shape = (2,)
        self.levels = None
        self.num_classes = self.mixture.n_components if labels else None

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor | None]:
        if self.mixture is not None:
            x, k = self.mixture.sample(n, generator=generator, device=generator.device, return_labels=True)
            return x.to(device), (k.to(device) if self.labels else None)
        return toy.sample(self.name, n, generator).to(device), None

    def std(self) -> float:
        """Data standard deviation (pooled over dimensions) from a fixed-seed sample."""
        x = toy.sample(self.name, 20000, torch.Generator().manual_seed(12345))
        return float(x.double().std())


class TensorData:
    """A fixed tensor ``x`` of shape ``(N, *event)`` (with optional integer labels ``y``), drawn with replacement.

    ``levels``: the number of integer grey levels the data was quantised to (None: continuous data).
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, labels: bool = False, levels: int | None = None,
                 name: str = "data"):
        x = torch.as_tensor(x)
        if x.ndim < 2 or x.shape[0] < 1 or not x.is_floating_point():
            raise ValueError(f"data: expected a floating tensor of shape (N, *event_shape), got "
                             f"{tuple(x.shape)} of {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError("data: contains non-finite values")
        if labels and y is None:
            raise ValueError(f"conditional: {name} has no labels; give a .pt file with {{'x': ..., 'y': ...}} or "
                             "(x, y), a folder of class sub-folders, or a labelled set (digits)")
        y = check_labels(y, x.shape[0], name)
        self.x = x.float()
        self.y = y if labels else None
        self.labels, self.levels, self.name = labels, levels, name
        self.event_shape = tuple(x.shape[1:])
        self.num_classes = int(self.y.max()) + 1 if self.y is not None else None
        self._on: dict = {}

    def _tensors(self, device):
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.x.to(device), None if self.y is None else self.y.to(device))
        return self._on[key]

    def draw(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor | None]:
        x, y = self._tensors(generator.device)
        idx = torch.randint(0, x.shape[0], (n,), generator=generator, device=generator.device)
        return x[idx].to(device), (None if y is None else y[idx].to(device))

    def std(self) -> float:
        return float(self.x.double().std())


def make_data(name: str, labels: bool = False, image_size: int | None = None):
    """A data source from a toy set name, an image set name (``digits``), a ``.pt``/``.npy`` file or an
    image folder (see :mod:`scoresde.images.datasets`)."""
    if name in toy.DATASETS:
        if image_size is not None:
            raise ValueError(f"image_size: {image_size} given for the toy set {name!r}; it applies to image folders")
        return ToyData(name, labels)
    path = Path(name)
    if name not in IMAGE_DATASETS and not path.is_dir() and path.suffix not in (".pt", ".pth", ".npy"):
        raise ValueError(f"data: {name!r} is neither a toy set ({', '.join(toy.available())}), an image set "
                         f"({', '.join(IMAGE_DATASETS)}), a folder of images nor a .pt/.npy file")
    images = load_images(name, image_size)
    return TensorData(images.x, images.y, labels, images.levels, images.name)
