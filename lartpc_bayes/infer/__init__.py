"""Model -> posterior: the one MAP + Laplace fitter (laplace: compiled once per problem shape, used
by fit, demo and the campaigns), SVI and NumPyro / BlackJAX NUTS (samplers), what they share
(common), and the persistent compilation cache (cache).
"""

from __future__ import annotations

from .cache import (
    CACHE_ENV,
    cache_dir,
    enable_compilation_cache,
)
from .common import (
    FitResult,
    cov_to_corr,
    hessian_pseudo_correlation,
    nominal_init,
    param_array,
    potential_and_transforms,
    predictive_hits,
    prior_samples,
    pseudo_correlation_from_hessian,
    set_host_devices,
)
from .laplace import (
    STALL_TOL,
    STALL_WINDOW,
    LaplaceFitter,
    drift_field_scan,
    importance_resample,
    run_laplace,
    run_laplace_block,
    run_nuts_block,
)
from .samplers import (
    GUIDES,
    run_blackjax,
    run_map,
    run_nuts,
    run_svi,
)

__all__ = [
    "CACHE_ENV",
    "GUIDES",
    "STALL_TOL",
    "STALL_WINDOW",
    "FitResult",
    "LaplaceFitter",
    "cache_dir",
    "cov_to_corr",
    "drift_field_scan",
    "enable_compilation_cache",
    "hessian_pseudo_correlation",
    "importance_resample",
    "nominal_init",
    "param_array",
    "potential_and_transforms",
    "predictive_hits",
    "prior_samples",
    "pseudo_correlation_from_hessian",
    "run_blackjax",
    "run_laplace",
    "run_laplace_block",
    "run_map",
    "run_nuts",
    "run_nuts_block",
    "run_svi",
    "set_host_devices",
]
