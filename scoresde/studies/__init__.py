"""Studies: error against steps, DDIM as the ODE limit, trajectories on 2D data, step-grid comparison.

Each study is a function that samples and measures, returning a small result object with rows
(lists of dicts, written as CSV) ready for :mod:`scoresde.plotting`.
"""
from .common import Method, OrderFit, Reference, fit_order, parse_method, parse_methods, write_csv
from .error_vs_steps import ErrorVsSteps, error_vs_steps

__all__ = ["Method", "OrderFit", "Reference", "fit_order", "parse_method", "parse_methods", "write_csv",
           "ErrorVsSteps", "error_vs_steps"]
