"""Reading user files and writing run files safely: named errors instead of pickle's, NumPy's or the OS's.

* :func:`load_tensor_file` reads a ``.pt`` (``torch.load(weights_only=True)``) or ``.npy``
  (``numpy.load(allow_pickle=False)``) file; a missing, corrupt, text, pickled-object or
  non-numeric file is a ValueError that names the argument and the file.
* :func:`clean_stale_temporaries` removes the ``.NAME.tmp-PID`` files an atomic write leaves when
  its process is killed between creating the temporary file and renaming it into place.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_tensor_file", "as_tensor_data", "clean_stale_temporaries", "temporary_name"]

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_tensor_file(path: str | Path, name: str = "data"):
    """The object stored in a ``.pt``/``.pth`` or ``.npy`` file (a tensor, or a dict/tuple of tensors).

    ``.npy`` arrays come back as tensors; object arrays are refused (loading them would unpickle).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}: {str(path)!r} is a folder; expected a .pt or .npy file")
    if not path.is_file():
        raise ValueError(f"{name}: file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise ValueError(f"{name}: {str(path)!r} holds an object array (pickled Python objects), which is "
                                 "not loaded; save a numeric array (np.save(path, x.astype(np.float32)))") from None
            raise ValueError(f"{name}: {str(path)!r} is not a valid .npy file ({_first_line(err)})") from None
        except (OSError, EOFError) as err:
            raise ValueError(f"{name}: cannot read {str(path)!r} as a .npy file ({_first_line(err)})") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
            raise ValueError(f"{name}: {str(path)!r} holds an array of dtype {getattr(array, 'dtype', '?')}; "
                             "expected real numbers")
        return torch.from_numpy(array)
    if path.suffix not in (".pt", ".pth"):
        raise ValueError(f"{name}: expected a .pt, .pth or .npy file, got {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, a text file, an unsafe pickle: all mean "not a tensor file"
        raise ValueError(f"{name}: {str(path)!r} is corrupt or not a file written by torch.save with tensors only "
                         f"({_first_line(err)})") from None


def temporary_name(path: Path) -> Path:
    """The temporary file an atomic write of ``path`` by this process uses: ``.NAME.tmp-PID`` beside it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's live process, or not a pid of this system
        return True
    return True


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` files in ``folder`` whose process no longer runs; return them.

    A process killed mid-write (SIGKILL, out of memory) leaves its temporary file behind; the
    target itself is intact because the rename never happened. A live writer's file is kept, so
    two processes writing in one folder never remove each other's work (on one machine: a PID on
    another host of a shared file system cannot be checked, and such runs should not share a folder).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file() or _alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(entry)
    return removed


def as_tensor_data(obj, path: str | Path, name: str = "data") -> tuple[Tensor, Tensor | None]:
    """Split a loaded object into ``(x, y)``: a tensor, ``{'x': ..., 'y': ...}`` or a pair ``(x, y)``."""
    if isinstance(obj, Tensor):
        return obj, None
    if isinstance(obj, dict) and "x" in obj:
        return obj["x"], obj.get("y")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj[0], obj[1]
    raise ValueError(f"{name}: {str(path)!r} must hold a tensor, a dict with 'x' (and 'y'), or a pair (x, y); "
                     f"got {type(obj).__name__}")
