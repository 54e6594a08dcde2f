"""Studies: error against steps, DDIM as the ODE limit, trajectories on 2D data, step-grid comparison.

Each study is a function that samples and measures, returning a small result object with rows
(lists of dicts, written as CSV) ready for :mod:`scoresde.plotting`. The helpers they share live one
job per module: :mod:`.method_specs` (which samplers, steps and grids), :mod:`.references` (the
reference solutions), :mod:`.distances`, :mod:`.orders` (the log-log slope fitter) and :mod:`.output`.
"""
from .error_vs_steps import ErrorVsSteps, error_vs_steps
from .method_specs import Method, parse_method, parse_methods
from .orders import OrderFit, empirical_order, fit_order, loglog_fit, median_order
from .output import write_csv
from .references import Reference, reference_pf_ode, reference_reverse_sde

__all__ = ["Method", "OrderFit", "Reference", "fit_order", "loglog_fit", "empirical_order", "median_order",
           "parse_method", "parse_methods", "write_csv", "reference_pf_ode", "reference_reverse_sde",
           "ErrorVsSteps", "error_vs_steps"]
