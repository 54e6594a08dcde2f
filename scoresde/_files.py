"""Reading user files and writing run files safely: named errors instead of pickle's, NumPy's or the OS's.

* :func:`load_tensor_file` reads a ``.pt`` (``torch.load(weights_only=True)``) or ``.npy``
  (``numpy.load(allow_pickle=False)``) file; a missing, corrupt, text, pickled-object or
  non-numeric file is a ValueError that names the argument and the file.
* :func:`atomic_write` writes every output of the package (checkpoints, samples, image grids, CSVs,
  figures): into ``.NAME.tmp-PID`` in the target's folder, flushed and fsynced, then renamed over the
  target with ``os.replace`` (atomic on POSIX and Windows). The target is therefore always the old
  file or the complete new one: a SIGKILL mid-write leaves the old file and a stale temporary, a full
  disk leaves the old file and an :class:`OSError` that names the target. The savers
  :func:`save_tensor`, :func:`save_npy`, :func:`save_png`, :func:`save_text`, :func:`save_csv` and
  :func:`save_figure` are ``atomic_write`` with the usual writer.
* :func:`clean_stale_temporaries` removes the ``.NAME.tmp-PID`` files an atomic write leaves when
  its process is killed between creating the temporary file and renaming it into place.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = ["load_tensor_file", "as_tensor_data", "clean_stale_temporaries", "temporary_name", "atomic_write",
           "save_tensor", "save_npy", "save_png", "save_text", "save_csv", "save_figure"]

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


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], *, clean: bool = True) -> Path:
    """Write ``path`` with ``write(fh)`` (``fh`` a binary file) so that ``path`` is always the old file or the new one.

    ``write`` fills the temporary ``.NAME.tmp-PID`` beside ``path``; once it returns, the file is
    flushed, fsynced and renamed over ``path``. If anything fails the temporary is removed and
    ``path`` is untouched: an :class:`OSError` (a full disk, a vanished folder, no permission) comes
    back as an OSError whose ``filename`` is ``path`` and whose message says the previous file is
    intact; any other exception of ``write`` propagates as it is. ``clean``: first remove the
    temporaries that killed processes left in the folder (:func:`clean_stale_temporaries`).
    Returns ``path`` as a :class:`Path`.
    """
    path = Path(path)
    if clean:
        clean_stale_temporaries(path.parent)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        before = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise OSError(err.errno, f"cannot write it ({err.strerror or err}); {before}", str(path)) from err
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _buffered(serialise: Callable[[IO[bytes]], Any]) -> Callable[[IO[bytes]], Any]:
    """A writer that serialises into memory first, then writes the bytes: a library that turns a failed
    ``write`` into its own exception (torch's zip writer raises RuntimeError on a full disk) never sees
    the file, so a full disk is always an OSError of :func:`atomic_write`."""
    def write(fh: IO[bytes]) -> None:
        buffer = io.BytesIO()
        serialise(buffer)
        fh.write(buffer.getbuffer())
    return write


def save_tensor(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`)."""
    return atomic_write(path, _buffered(lambda fh: torch.save(obj, fh)))


def save_npy(array, path: str | os.PathLike) -> Path:
    """``numpy.save(path, array)`` (no pickles), atomically; a tensor is saved as its NumPy array."""
    import numpy as np

    array = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    return atomic_write(path, _buffered(lambda fh: np.save(fh, array, allow_pickle=False)))


def save_png(image, path: str | os.PathLike) -> Path:
    """A PIL image or a ``uint8`` array ``(H, W)`` / ``(H, W, 3)`` as a PNG file, atomically."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    return atomic_write(path, _buffered(lambda fh: image.save(fh, format="PNG")))


def save_text(text: str, path: str | os.PathLike) -> Path:
    """``text`` as a UTF-8 file, atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def save_csv(rows: Iterable[Sequence], path: str | os.PathLike, header: Sequence[str] | None = None) -> Path:
    """Rows (and a header) as a CSV file, atomically; floats are written with ``repr`` (all their digits)."""
    text = io.StringIO(newline="")
    out = csv.writer(text, lineterminator="\n")
    if header is not None:
        out.writerow(header)
    out.writerows(rows)
    return save_text(text.getvalue(), path)


def save_figure(fig, path: str | os.PathLike, **savefig_options) -> Path:
    """``fig.savefig(path, **savefig_options)`` (a matplotlib Figure), atomically; the format is the suffix's."""
    path = Path(path)
    fmt = savefig_options.pop("format", None) or path.suffix.lstrip(".").lower() or None
    return atomic_write(path, _buffered(lambda fh: fig.savefig(fh, format=fmt, **savefig_options)))
