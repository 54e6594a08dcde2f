r"""A grid of images as one picture, written as PNG with Pillow (no torchvision).

``N`` images ``(C, H, W)`` (``C`` 1 or 3) are tiled row by row into ``ceil(N / ncol)`` rows of ``ncol``
(default ``ceil(sqrt N)``) with ``padding`` pixels of ``pad_value`` between and around them. Values
are mapped from ``value_range = (lo, hi)`` (default [-1, 1], the data range of :mod:`.datasets`) to
bytes by ``round(255 (clip(x, lo, hi) - lo) / (hi - lo))``. A NaN has no grey value (it would come out
black, like -1): images holding NaN are refused with a ValueError that counts them and names the first.

:func:`save_grid` checks the size of the picture before it allocates it (at most :data:`MAX_GRID_PIXELS`
pixels), and writes the PNG atomically (:func:`scoresde._files.save_png`).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._files import save_png

__all__ = ["image_grid", "save_grid", "grid_pixels", "MAX_GRID_PIXELS", "DEFAULT_SCALE"]

#: pixel repetition of :func:`save_grid` (and ``scoresde sample --grid-scale``): an 8x8 digit drawn 32x32
DEFAULT_SCALE = 4
#: the largest grid :func:`save_grid` writes: 2^28 pixels (a 16384 x 16384 picture, 768 MiB as RGB bytes)
MAX_GRID_PIXELS = 2**28


def grid_pixels(n: int, height: int, width: int, *, ncol: int | None = None, padding: int = 1,
                scale: int = 1) -> tuple[int, int]:
    """``(rows, cols)`` in pixels of the grid of ``n`` images of ``height`` x ``width`` (before any allocation)."""
    ncol = min(math.ceil(math.sqrt(n)) if ncol is None else ncol, n)
    nrow = math.ceil(n / ncol)
    return (padding + nrow * (height + padding)) * scale, (padding + ncol * (width + padding)) * scale


def image_grid(x: Tensor, *, ncol: int | None = None, padding: int = 1, pad_value: int = 255,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """The tiled grid as a ``uint8`` array ``(rows, cols)`` (grey) or ``(rows, cols, 3)`` (RGB)."""
    if not isinstance(x, Tensor) or x.ndim not in (3, 4) or x.shape[0] < 1:
        raise ValueError(f"x: expected images of shape (N, C, H, W) or (N, H, W) with N >= 1, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if x.ndim == 3:
        x = x[:, None]
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"x: expected 1 (grey) or 3 (RGB) channels, got {c} in shape {tuple(x.shape)}")
    if ncol is None:
        ncol = math.ceil(math.sqrt(n))
    if isinstance(ncol, bool) or not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"ncol: expected a positive integer or None, got {ncol!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding: expected an integer >= 0, got {padding!r}")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range: expected (lo, hi) with hi > lo, got {value_range!r}")
    nan = torch.isnan(x.detach().reshape(n, -1)).any(1)
    if bool(nan.any()):
        raise ValueError(f"x: {int(nan.sum())} of the {n} images hold NaN (first: image {int(nan.nonzero()[0])}); a "
                         "grid cannot show NaN (it would be drawn black): the samples diverged or the model returned NaN")
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    pixels = torch.round(255 * (x.detach().double().cpu().clamp(lo, hi) - lo) / (hi - lo)).to(torch.uint8).numpy()
    grid = np.full((c, padding + nrow * (h + padding), padding + ncol * (w + padding)), pad_value, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = pixels[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_grid(x: Tensor, path: str | Path, *, scale: int = DEFAULT_SCALE, **options) -> Path:
    """Write :func:`image_grid` of ``x`` as a PNG (each pixel repeated ``scale`` x ``scale`` times, default
    :data:`DEFAULT_SCALE`, as ``scoresde sample --image-grid`` does); return the path."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path: expected a .png file, got {str(path)!r}")
    if not path.parent.is_dir():
        raise ValueError(f"path: folder {str(path.parent)!r} of {str(path)!r} does not exist; create it first")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale: expected a positive integer, got {scale!r}")
    ncol, padding = options.get("ncol"), options.get("padding", 1)
    valid = (ncol is None or (type(ncol) is int and ncol >= 1)) and type(padding) is int and padding >= 0
    if valid and isinstance(x, Tensor) and x.ndim in (3, 4) and x.shape[0] >= 1:  # else image_grid names the error
        rows, cols = grid_pixels(x.shape[0], x.shape[-2], x.shape[-1], ncol=ncol, padding=padding,
                                 scale=scale)
        if rows * cols > MAX_GRID_PIXELS:
            raise ValueError(f"scale: the grid of {x.shape[0]} images of {x.shape[-2]}x{x.shape[-1]} at scale {scale} "
                             f"would be {cols}x{rows} pixels; allowed: at most {MAX_GRID_PIXELS} pixels (lower the "
                             "scale or the number of images)")
    grid = image_grid(x, **options)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return save_png(Image.fromarray(grid), path)
