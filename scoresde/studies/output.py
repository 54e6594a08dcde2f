"""Study output: a writable folder checked before the work, staged writes, CSV rows.

Every study job writes ``<name>.png`` with ``<name>.csv`` beside it. :func:`check_writable_dir` runs
before any work; :func:`staged_output` writes into a temporary folder and moves the files in only
when the whole job has succeeded, so a failure leaves no half-written set.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..sde import SDE

__all__ = ["check_writable_dir", "staged_output", "write_csv", "sde_name"]


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Check that ``path`` is (or can be created as) a writable folder, before any work starts."""
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ValueError(f"--out: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out: cannot write to {path} ({probe} is not writable)")
    return path


@contextlib.contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[tuple[Path, list[Path]]]:
    """Yield a temporary folder inside ``out``; on success move its files into ``out``, on failure
    remove it (and ``out`` itself if this call created it), so no half-written files remain.

    The list yielded second collects the final paths once the block has finished.
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    written: list[Path] = []
    try:
        yield tmp, written
        for f in sorted(tmp.iterdir()):
            f.replace(out / f.name)
            written.append(out / f.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def write_csv(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write a list of flat dicts as CSV (columns in first-seen order)."""
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
    return path


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def sde_name(sde: SDE) -> str:
    """The SDE's class name, as tables label it."""
    return type(sde).__name__
