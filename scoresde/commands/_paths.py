"""Output paths of the commands, checked before any work starts.

Every command that writes calls :func:`check_output` on each output flag while validating its
arguments, so that an unwritable output fails in a second with one line naming the flag, instead of
after minutes of work.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

__all__ = ["check_output"]


def _probe(folder: Path) -> OSError | None:
    """Create and remove a file in ``folder``: the one test that sees permissions, read-only mounts and ACLs."""
    try:
        fd, name = tempfile.mkstemp(prefix=".scoresde-probe-", dir=folder)
    except OSError as err:
        return err
    os.close(fd)
    os.unlink(name)
    return None


def seed_type(text: str) -> int:
    """argparse ``type`` of ``--seed``: an integer in ``[0, SEED_MAX]``, refused by argparse (exit 2) otherwise."""
    from ..checks import SEED_MAX

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {value}")
    return value


def check_output(path: str | os.PathLike, flag: str, *, kind: str = "file", suffixes: tuple[str, ...] = ()) -> Path:
    """Check that ``path`` can be written as a file (``kind='file'``) or a folder (``kind='dir'``).

    A file: ``path`` is not an existing folder, its suffix is one of ``suffixes`` (when given), and its
    parent folder exists and is writable. A folder: ``path`` is a writable folder, or can be created
    under its nearest existing ancestor, which must be a writable folder (not a file). Raises a
    ValueError naming ``flag``, the path and what is allowed; returns ``path`` as a :class:`Path`.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind: expected 'file' or 'dir', got {kind!r}")
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{flag}: expected a path, got {path!r}")
    path = Path(path)
    if kind == "file":
        if path.is_dir():
            raise ValueError(f"{flag}: {str(path)!r} is a folder; expected a file path")
        if suffixes and path.suffix not in suffixes:
            raise ValueError(f"{flag}: expected a {' or '.join(suffixes)} file, got {str(path)!r}")
        folder = path.parent
        if not folder.exists():
            raise ValueError(f"{flag}: folder {str(folder)!r} of {str(path)!r} does not exist; create it first")
        if not folder.is_dir():
            raise ValueError(f"{flag}: {str(folder)!r} is a file, not a folder, so {str(path)!r} cannot be written "
                             "under it")
        if path.exists() and not os.access(path, os.W_OK):
            raise ValueError(f"{flag}: {str(path)!r} exists and is not writable")
    else:
        folder = path
        while not folder.exists():
            if folder.parent == folder:
                break
            folder = folder.parent
        if not folder.is_dir():
            under = "" if folder == path else f", so {str(path)!r} cannot be created under it"
            raise ValueError(f"{flag}: {str(folder)!r} is a file, not a folder{under}")
    err = _probe(folder)
    if err is not None:
        raise ValueError(f"{flag}: cannot write to {str(path)!r} ({str(folder)!r}: {err.strerror or err})")
    return path
