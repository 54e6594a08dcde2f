"""The ``scoresde`` command line: thin. It parses, builds library objects and calls the library.

Each subcommand lives in its own module under :mod:`scoresde.commands` and defines
``register(subparsers)`` (adding its parser, with ``set_defaults(run=...)``); modules are found
automatically, so adding a command is one new file.

Errors: a user error (a bad flag value, an unreadable or malformed file, an unwritable output, a
model or schedule that produces NaN) ends the command with exit status 2 and one line on stderr,
``scoresde <command>: <message>``, naming the flag or file, the value and what is allowed. Anything
else is a bug: exit status 1 and one line that says so. ``--debug`` (or ``SCORESDE_DEBUG=1``) shows
the traceback instead.

Threads: every command takes ``--threads N`` (``torch.set_num_threads(N)``). Without it torch's own
default stands, which honours ``OMP_NUM_THREADS``. On a machine shared with other jobs, one thread is
usually much faster than torch's default of one thread per core (``--threads 1`` or
``OMP_NUM_THREADS=1``): the small batches of the toy problems gain little from more threads and lose
a lot when the threads wait for busy cores.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from . import __version__, commands

#: what a user can cause: bad values and types, files and the OS, a diverging run
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, FloatingPointError)


def _user_errors() -> tuple[type[BaseException], ...]:
    try:
        import yaml
    except ImportError:
        return USER_ERRORS
    return (*USER_ERRORS, yaml.YAMLError)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scoresde",
        description="Continuous-time score-based diffusion: SDEs, exact oracles, samplers, training, studies.",
    )
    parser.add_argument("--version", action="version", version=f"scoresde {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: environment SCORESDE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    for command in sub.choices.values():  # one spelling for every command
        command.add_argument("--threads", type=_threads, default=None, metavar="N",
                             help="CPU threads for torch (default: torch's, which honours OMP_NUM_THREADS; "
                                  "on a shared machine use 1)")
    return parser


def _threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given; otherwise leave torch's (or the user's) setting."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("SCORESDE_DEBUG", "") not in ("", "0")
    name = f"scoresde {args.command}"
    set_threads(getattr(args, "threads", None))
    try:
        return int(args.run(args) or 0)
    except _user_errors() as err:  # bad input: a clear message, no traceback
        if debug:
            raise
        message = str(err) if not isinstance(err, OSError) or not err.filename else \
            f"{err.filename}: {err.strerror or err}"
        print(f"{name}: error: {_one_line(message) or type(err).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: still one line; --debug shows where
        if debug:
            raise
        print(f"{name}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
