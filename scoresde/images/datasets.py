r"""Image data, real and shipped: scikit-learn's 8x8 digits, arrays in ``.pt``/``.npy`` files, folders of PNG/JPEG.

Every source ends as an :class:`ImageData`: ``x`` of shape ``(N, C, H, W)`` (or ``(N, D)`` for plain
vectors from a file), float32, images scaled from their ``levels`` integer grey levels to [-1, 1] by

.. math::  x = 2 k / (L - 1) - 1, \qquad k \in \{0, \dots, L - 1\},

with labels ``y`` (or None). ``levels`` is what dequantisation and discrete likelihoods need
(bin width ``2 / (L - 1)`` in x); :func:`to_levels` maps samples back to integer levels.

* ``digits`` (Alpaydin & Kaynak 1998, the UCI optical-digits test set, bundled with scikit-learn as
  ``sklearn.datasets.load_digits``): 1797 grey images of 8x8 with ``L = 17`` levels (0..16) and labels
  0..9. The split is fixed and needs no random state: image ``i`` is in the test split when
  ``i % 5 == 0`` (360 images) and in the training split otherwise (1437 images).
* arrays: ``(N, C, H, W)`` or ``(N, H, W)`` (one channel added); ``uint8`` means ``L = 256`` and is
  scaled as above; a float image array is taken as it is (``levels=None``) and must already lie in
  [-1, 1]: float pixels in [0, 255] (or any value outside [-1, 1]) are refused with a message saying
  how to scale them, never clipped or guessed; ``(N, D)`` stays a set of vectors, of any range.
  A ``.pt`` may hold a tensor, ``{'x': ..., 'y': ...}`` or ``(x, y)``.
* a folder of ``.png``/``.jpg``/``.jpeg`` files read with Pillow: 8-bit images (``L = 256``) grey when
  every image is grey, RGB otherwise; 16-bit grey images (PNG, Pillow's mode ``I;16``) with
  ``L = 65536`` (a folder must not mix 16-bit and 8-bit images); resized to ``image_size`` x
  ``image_size`` when given (all images must share one size otherwise). Either every image sits
  directly in the folder (no labels), or every image sits in a class sub-folder, labelled by the
  sorted sub-folder names: a folder with both is refused, naming the stray top-level files.

Bad input (a corrupt or object file, labels that are not integers in range, non-finite pixels, a
folder with no readable image, mixed sizes or bit depths) raises a ValueError naming the argument,
the value and what is allowed, before any training starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._files import as_tensor_data, load_tensor_file

__all__ = ["ImageData", "DIGITS_LEVELS", "IMAGE_DATASETS", "digits", "from_levels", "to_levels", "load_array",
           "load_folder", "IMAGE_SUFFIXES"]

DIGITS_LEVELS = 17
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: the named image sets (``--data NAME``); ``digits`` is the training split, ``digits_test`` the test split
IMAGE_DATASETS = ("digits", "digits_test")


@dataclass(frozen=True)
class ImageData:
    """Images ``x`` ``(N, C, H, W)`` in [-1, 1] (float32), labels ``y`` ``(N,)`` or None, grey ``levels`` or None."""

    x: Tensor
    y: Tensor | None
    levels: int | None
    name: str

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _check_levels(levels) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels: expected an integer >= 2, got {levels!r}")
    return levels


def _as_numbers(values, name: str) -> Tensor:
    if isinstance(values, (str, bytes)) or (isinstance(values, Tensor) and values.is_complex()):
        raise TypeError(f"{name}: expected real numbers (a tensor, array or sequence), got {type(values).__name__}")
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name}: expected real numbers (a tensor, array or sequence), got {values!r:.80}") from None


def from_levels(k: Tensor, levels: int) -> Tensor:
    """Integer grey levels ``k in {0..L-1}`` to ``x = 2 k / (L - 1) - 1`` in [-1, 1] (float32).

    A level outside ``{0..L-1}`` (or a fractional one) is a ValueError naming it: it has no pixel value."""
    L = _check_levels(levels)
    k = _as_numbers(k, "k")
    if k.dtype == torch.bool or (k.is_floating_point() and not bool((k == torch.round(k)).all())):
        raise ValueError(f"k: expected integer grey levels in 0..{L - 1}, got dtype {k.dtype} with "
                         f"{'booleans' if k.dtype == torch.bool else 'fractional or non-finite values'}")
    if k.numel() and (bool((k < 0).any()) or bool((k > L - 1).any())):
        raise ValueError(f"k: grey levels must lie in 0..{L - 1} for levels={L}, got values in "
                         f"[{k.min().item():g}, {k.max().item():g}]")
    return k.float() * (2.0 / (L - 1)) - 1.0


def to_levels(x: Tensor, levels: int) -> Tensor:
    """The nearest integer level ``round((x + 1) (L - 1) / 2)``, clipped to ``{0..L-1}`` (int64): the inverse
    of :func:`from_levels` on its range, and the quantisation of a sample. NaN has no level: a ValueError."""
    L = _check_levels(levels)
    x = _as_numbers(x, "x").double()
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()[0].tolist()
        raise ValueError(f"x: {int((~torch.isfinite(x)).sum())} non-finite value(s) (first {x[tuple(bad)].item()} at "
                         f"index {tuple(bad)}) have no grey level; allowed: finite numbers")
    return torch.round((x + 1) * ((L - 1) / 2)).clamp(0, L - 1).long()


def digits(split: str = "train") -> ImageData:
    """scikit-learn's 8x8 digits as ``(N, 1, 8, 8)`` in [-1, 1] with labels; ``split`` 'train', 'test' or 'all'."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split: unknown {split!r}; allowed: 'train', 'test', 'all'")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    k = torch.from_numpy(np.asarray(bunch.images, dtype=np.int64)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    idx = torch.arange(k.shape[0])
    keep = {"train": idx % 5 != 0, "test": idx % 5 == 0, "all": torch.ones_like(idx, dtype=torch.bool)}[split]
    return ImageData(from_levels(k[keep], DIGITS_LEVELS), y[keep], DIGITS_LEVELS, f"digits[{split}]")


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _read_array_file(path: Path):
    # named errors for corrupt, pickled or non-numeric files, and for objects that hold no (x, y)
    return as_tensor_data(load_tensor_file(path, "data"), path, "data")


def check_labels(y, n: int, where: str) -> Tensor | None:
    """Labels as int64 ``(n,)``, non-negative; None stays None."""
    if y is None:
        return None
    y = torch.as_tensor(y)
    if y.shape != (n,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels: {where} has labels of shape {tuple(y.shape)} and dtype {y.dtype}; allowed: "
                         f"integers of shape ({n},)")
    if n and int(y.min()) < 0:
        raise ValueError(f"labels: {where} has a label {int(y.min())}; allowed: integers >= 0")
    return y.long()


def first_non_finite(x: Tensor) -> str | None:
    """None when every value of ``x`` ``(N, ...)`` is finite, else "N of the M items, first item i (NaN)"."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1) if x.ndim else ~torch.isfinite(x.reshape(1))
    if not bool(bad.any()):
        return None
    i = int(bad.nonzero()[0])
    kind = "NaN" if bool(torch.isnan(x[i]).any()) else "inf"
    return f"{int(bad.sum())} of the {bad.numel()} items hold non-finite values (first: item {i}, {kind})"


def _as_images(x: Tensor, where: str) -> tuple[Tensor, int | None]:
    """Scale and shape a raw array: uint8 -> 256 levels in [-1, 1]; (N, H, W) -> (N, 1, H, W)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"data: {where} holds x of type {type(x).__name__}; allowed: a tensor or array")
    if x.ndim not in (2, 3, 4) or x.shape[0] < 1 or min(x.shape) < 1:
        raise ValueError(f"data: {where} holds an array of shape {tuple(x.shape)}; allowed: (N, C, H, W), "
                         "(N, H, W) images or (N, D) vectors with N >= 1")
    if x.dtype == torch.uint8:
        x, levels = from_levels(x, 256), 256
    elif x.is_floating_point():
        x, levels = x.float(), None
    else:
        raise ValueError(f"data: {where} holds an array of dtype {x.dtype}; allowed: a floating array (taken "
                         "as it is) or uint8 (256 levels, scaled to [-1, 1])")
    bad = first_non_finite(x)
    if bad is not None:
        raise ValueError(f"data: {where}: {bad}; allowed: finite numbers (the data, not the model, are at fault)")
    if levels is None and x.ndim >= 3:
        _check_float_range(x, where)
    if x.ndim == 3:
        x = x[:, None]
    return x.contiguous(), levels


def _check_float_range(x: Tensor, where: str) -> None:
    """Float images must be in [-1, 1] already: values beyond are refused, with the scaling that would fix them."""
    lo, hi = float(x.min()), float(x.max())
    if lo >= -1.0 and hi <= 1.0:
        return
    if lo >= 0.0 and hi <= 255.0:
        hint = ("they look like 8-bit pixels in [0, 255]: save them as uint8 (read as 256 levels) or scale "
                "them with x / 127.5 - 1")
    else:
        hint = "scale them to [-1, 1] first (for L integer levels k: 2 k / (L - 1) - 1), or save integer levels as uint8"
    raise ValueError(f"data: {where} holds float images with values in [{lo:g}, {hi:g}]; allowed: float images in "
                     f"[-1, 1]; {hint}")


def load_array(path: str | Path) -> ImageData:
    """An array file (``.pt``/``.pth``/``.npy``) as :class:`ImageData`; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: file {str(path)!r} does not exist")
    x, y = _read_array_file(path)
    x, levels = _as_images(torch.as_tensor(x) if isinstance(x, np.ndarray) else x, repr(str(path)))
    return ImageData(x, check_labels(y, x.shape[0], repr(str(path))), levels, str(path))


def _image_files(folder: Path) -> tuple[list[Path], list[int] | None]:
    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    top = images_in(folder)
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and images_in(d))
    if top and classes:
        stray = ", ".join(repr(p.name) for p in top[:3]) + (f" and {len(top) - 3} more" if len(top) > 3 else "")
        raise ValueError(f"data: folder {str(folder)!r} has class sub-folders ({', '.join(d.name for d in classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}) and images outside them ({stray}); allowed: "
                         "every image in a class sub-folder (labelled), or every image directly in the folder "
                         "(unlabelled); move or remove the stray files")
    if top:
        return top, None
    files = [(p, k) for k, d in enumerate(classes) for p in images_in(d)]
    return [p for p, _ in files], ([k for _, k in files] if files else None)


def load_folder(path: str | Path, image_size: int | None = None) -> ImageData:
    """A folder of PNG/JPEG images (or of class sub-folders of them) read with Pillow; see the module docstring."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"data: folder {str(folder)!r} does not exist")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size: expected a positive integer or None (keep the files' size), got {image_size!r}")
    files, labels = _image_files(folder)
    if not files:
        raise ValueError(f"data: folder {str(folder)!r} has no readable images; allowed: {', '.join(IMAGE_SUFFIXES)} "
                         "files in it or in class sub-folders")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"data: {str(f)!r} is not a readable image ({type(err).__name__}: {err})") from None
    deep = [im.mode in _SIXTEEN_BIT for im in images]
    if any(deep) and not all(deep):
        f16, f8 = files[deep.index(True)], files[deep.index(False)]
        raise ValueError(f"data: folder {str(folder)!r} mixes 16-bit grey images ({str(f16)!r}, mode "
                         f"{images[deep.index(True)].mode}) with 8-bit ones ({str(f8)!r}, mode "
                         f"{images[deep.index(False)].mode}); allowed: one bit depth per data set")
    if all(deep):
        return _sixteen_bit(folder, files, images, labels, image_size)
    grey = all(im.mode in ("1", "L", "LA") for im in images)
    arrays = []
    for f, im in zip(files, images, strict=True):
        im = im.convert("L" if grey else "RGB")
        im = _sized(im, f, images[0], files[0], image_size)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if grey else a.transpose(2, 0, 1))
    x = from_levels(torch.from_numpy(np.stack(arrays)), 256)
    y = None if labels is None else torch.tensor(labels, dtype=torch.long)
    return ImageData(x, y, 256, str(folder))


# Pillow's modes of a 16-bit grey PNG ("I" when an older Pillow widens it to 32-bit integers)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _sized(im, f: Path, first, first_file: Path, image_size: int | None):
    from PIL import Image

    if image_size is not None:
        return im.resize((image_size, image_size), Image.BILINEAR)
    if im.size != first.size:
        raise ValueError(f"data: {str(f)!r} is {im.size[0]}x{im.size[1]} but {str(first_file)!r} is "
                         f"{first.size[0]}x{first.size[1]}; give image_size (--image-size) to resize "
                         "them all to one size")
    return im


def _sixteen_bit(folder: Path, files: list[Path], images: list, labels, image_size: int | None) -> ImageData:
    """16-bit grey images: 65536 levels, read as integers (Pillow's 8-bit conversion would clip them)."""
    arrays = []
    for f, im in zip(files, images, strict=True):
        im = _sized(im.convert("I"), f, images[0], files[0], image_size)  # "I": int32, which resize handles
        a = np.asarray(im, dtype=np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(f"data: {str(f)!r} (mode {images[files.index(f)].mode}) has values in "
                             f"[{a.min()}, {a.max()}]; allowed: 16-bit grey levels 0..65535")
        arrays.append(a[None])
    x = from_levels(torch.from_numpy(np.stack(arrays)), 65536)
    y = None if labels is None else torch.tensor(labels, dtype=torch.long)
    return ImageData(x, y, 65536, str(folder))


def load_images(name: str, image_size: int | None = None) -> ImageData:
    """A named set (:data:`IMAGE_DATASETS`), an array file or an image folder, by what ``name`` is."""
    if name in IMAGE_DATASETS:
        data = digits("test" if name == "digits_test" else "train")
    elif Path(name).is_dir():
        return load_folder(name, image_size)
    elif Path(name).suffix in (".pt", ".pth", ".npy"):
        data = load_array(name)
    else:
        raise ValueError(f"data: {name!r} is neither an image set ({', '.join(IMAGE_DATASETS)}), a folder of "
                         "images nor a .pt/.npy file")
    if image_size is not None and data.x.ndim == 4 and data.x.shape[-2:] != (image_size, image_size):
        raise ValueError(f"image_size: {image_size} given, but {data.name} is {data.x.shape[-2]}x{data.x.shape[-1]}; "
                         "image_size resizes image folders only (leave it unset for arrays)")
    return data
