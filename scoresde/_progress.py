"""One progress helper for every long stage: a tqdm bar on a terminal, plain occasional lines in a log.

tqdm redraws its bar with carriage returns, and nested bars move the cursor with escape codes; in a
file or a pipe that is noise. :func:`progress` gives a tqdm bar when stderr is a terminal and, when
it is not, a :class:`LineProgress` that prints one plain line at most every ``interval`` seconds and
one when it closes. ``enabled=False`` (the commands' ``--quiet``) silences both.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable

__all__ = ["progress", "LineProgress", "stage"]

#: seconds between two plain lines when stderr is not a terminal
LINE_INTERVAL = 15.0


class LineProgress:
    """The tqdm methods the package uses (``update``, ``set_postfix_str``, ``set_postfix``, ``close``,
    iteration), printing ``desc: k/total (p%) 12 s [postfix]`` lines instead of redrawing a bar.

    ``leave=False`` (tqdm's bar that vanishes when done, e.g. one sampling call among many) prints its
    closing line only when it has printed before: a short inner stage leaves nothing in the log.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, interval: float = LINE_INTERVAL, file=None, leave: bool = True):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.interval = total, desc, interval
        self.file = file
        self.n, self.postfix = initial, ""
        self.start = self.last = time.monotonic()
        self.closed = False
        self.printed = ""
        self.leave = leave

    def _line(self) -> str:
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        post = f" [{self.postfix}]" if self.postfix else ""
        return f"{self.desc}: {done} {time.monotonic() - self.start:.0f} s{post}"

    def _print(self) -> None:
        line = self._line()
        if line != self.printed:  # closing right after an update would repeat it
            print(line, file=self.file or sys.stderr, flush=True)
            self.printed = line
        self.last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        if time.monotonic() - self.last >= self.interval:
            self._print()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave or self.printed:
                self._print()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(file) -> bool:
    isatty = getattr(file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
             leave: bool = True, initial: int = 0, interval: float = LINE_INTERVAL):
    """A progress bar over ``iterable`` (or ``total`` steps from ``initial``, advanced with ``.update()``).

    A tqdm bar when stderr is a terminal; plain lines (:class:`LineProgress`) when it is not; a
    disabled tqdm (which prints nothing) when ``enabled`` is False.
    """
    from tqdm.auto import tqdm

    if not enabled:
        return tqdm(iterable, total=total, desc=desc, disable=True)
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, leave=leave, initial=initial, dynamic_ncols=True)
    return LineProgress(iterable, total=total, desc=desc, initial=initial, interval=interval, leave=leave)


def stage(k: int, n: int, what: str, *, enabled: bool = True) -> None:
    """Announce stage ``k`` of ``n`` on its own line (between bars, never nested in one)."""
    if enabled:
        print(f"[{k}/{n}] {what}", file=sys.stderr, flush=True)
