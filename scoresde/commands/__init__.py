"""Subcommands of the ``scoresde`` CLI, one module each (see :mod:`scoresde.cli`)."""
