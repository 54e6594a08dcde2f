"""The ``scoresde`` command line: thin. It parses, builds library objects and calls the library.

Each subcommand lives in its own module under :mod:`scoresde.commands` and defines
``register(subparsers)`` (adding its parser, with ``set_defaults(run=...)``); modules are found
automatically, so adding a command is one new file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scoresde",
        description="Continuous-time score-based diffusion: SDEs, exact oracles, samplers, training, studies.",
    )
    parser.add_argument("--version", action="version", version=f"scoresde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        if not mod.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{mod}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except ValueError as err:  # bad input: a clear message, no traceback
        print(f"scoresde {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
