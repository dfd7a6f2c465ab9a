"""Model -> posterior: the MAP + Laplace fitter, SVI, NumPyro and BlackJAX NUTS, importance
sampling.
"""

from __future__ import annotations

from .inference import (
    GUIDES,
    FitResult,
    cov_to_corr,
    drift_field_scan,
    hessian_pseudo_correlation,
    importance_resample,
    nominal_init,
    param_array,
    potential_and_transforms,
    predictive_hits,
    prior_samples,
    run_blackjax,
    run_laplace,
    run_map,
    run_nuts,
    run_svi,
    set_host_devices,
)

__all__ = [
    "GUIDES",
    "FitResult",
    "cov_to_corr",
    "drift_field_scan",
    "hessian_pseudo_correlation",
    "importance_resample",
    "nominal_init",
    "param_array",
    "potential_and_transforms",
    "predictive_hits",
    "prior_samples",
    "run_blackjax",
    "run_laplace",
    "run_map",
    "run_nuts",
    "run_svi",
    "set_host_devices",
]
