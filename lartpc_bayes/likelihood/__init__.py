"""Hits -> log-likelihood: the probabilistic LArPix readout (readout_prob) and the PPP / sequential
likelihoods with the hit Distribution (point_process).
"""

from __future__ import annotations

from .point_process import (
    LArPixReadout,
    LikelihoodConfig,
    bucket_offsets,
    hit_list_sizes,
    hits_to_table,
    log_likelihood,
    table_to_hits,
)
from .readout_prob import (
    EDGE_TICKS,
    LOG_ZERO,
    N_NODES,
    TINY,
    Z_CLIP,
    ReadoutTensors,
    hermite_nodes,
    hit_log_intensity,
    lag_geometry,
    log_adc_prob,
    log_diff_ndtr,
    log_stay_fire,
    readout_tensors,
    safe_log,
    sequential_log_prob,
)

__all__ = [
    "EDGE_TICKS",
    "LOG_ZERO",
    "N_NODES",
    "TINY",
    "Z_CLIP",
    "LArPixReadout",
    "LikelihoodConfig",
    "ReadoutTensors",
    "bucket_offsets",
    "hermite_nodes",
    "hit_list_sizes",
    "hit_log_intensity",
    "hits_to_table",
    "lag_geometry",
    "log_adc_prob",
    "log_diff_ndtr",
    "log_likelihood",
    "log_stay_fire",
    "readout_tensors",
    "safe_log",
    "sequential_log_prob",
    "table_to_hits",
]
