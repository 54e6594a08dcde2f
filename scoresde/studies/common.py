"""Re-exports of the helpers the studies share, for code that imports them from ``scoresde.studies.common``.

Each lives in the module of its job:
:mod:`.method_specs`, :mod:`.references`, :mod:`.distances`, :mod:`.orders`, :mod:`.output`.
"""
from .distances import distribution_error, endpoint_error, sliced_w2, w2_exact
from .method_specs import Method, check_grids, check_steps, parse_method, parse_methods
from .orders import OrderFit, fit_order
from .output import check_writable_dir, sde_name, staged_output, write_csv
from .references import Reference, quiet_brownian, reference_pf_ode, reference_reverse_sde

__all__ = ["Method", "parse_method", "parse_methods", "check_steps", "check_grids", "reference_pf_ode",
           "reference_reverse_sde", "Reference", "endpoint_error", "w2_exact", "sliced_w2",
           "distribution_error", "fit_order", "OrderFit", "write_csv", "check_writable_dir", "staged_output",
           "quiet_brownian", "sde_name"]
