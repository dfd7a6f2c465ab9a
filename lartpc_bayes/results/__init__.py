"""Posterior -> results: ArviZ DataTree conversion and persistence (datatree), posterior-predictive
checks (ppc), the text report and check_file (report); figures in results.plots (imported on
demand: matplotlib).
"""

from __future__ import annotations

from .datatree import (
    FIELDS,
    FORMAT,
    FORMAT_VERSION,
    HIT_DIMS,
    card_from_datatree,
    correlation_matrix,
    divergences,
    hessian_at_optimum,
    hessian_correlation,
    json_attr,
    latent_truth,
    load_datatree,
    param_names,
    save_datatree,
    to_datatree,
    truth_values,
)
from .ppc import (
    format_ppc,
    ppc_checks,
    real_channels,
)
from .report import (
    BFMI_MIN,
    ESS_MIN,
    RHAT_MAX,
    check_file,
    diagnostics,
    format_report,
    latent_summary,
    make_plots,
    summary_table,
)

__all__ = [
    "BFMI_MIN",
    "ESS_MIN",
    "FIELDS",
    "FORMAT",
    "FORMAT_VERSION",
    "HIT_DIMS",
    "RHAT_MAX",
    "card_from_datatree",
    "check_file",
    "correlation_matrix",
    "diagnostics",
    "divergences",
    "format_ppc",
    "format_report",
    "hessian_at_optimum",
    "hessian_correlation",
    "json_attr",
    "latent_summary",
    "latent_truth",
    "load_datatree",
    "make_plots",
    "param_names",
    "ppc_checks",
    "real_channels",
    "save_datatree",
    "summary_table",
    "to_datatree",
    "truth_values",
]
