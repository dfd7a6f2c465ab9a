"""Reconstruction from detector data alone: hits -> points (u, v, t_drift) -> DBSCAN clusters ->
robust (piecewise-)linear track fits -> ends, length, angle -> the published selection ->
through-going / stopping -> segments about a pitch long (dE/dx stays latent). See
docs/reconstruction.md.
"""

from __future__ import annotations

from .pipeline import (
    DataFile,
    RecoResult,
    cluster_hits,
    load_data,
    load_data_many,
    reconstruct,
    trigger_t0_ticks,
)
from .points import (
    Points,
    adc_charge,
    crossing_t0,
    drift_to_position,
    hits_to_points,
    nominal_drift_velocity,
)
from .tracks import (
    MIP_DEDX_PLACEHOLDER,
    LineFit,
    RecoConfig,
    RecoSegments,
    RecoTrack,
    apply_selection,
    fit_line,
    fit_track,
    local_to_card,
    tag_stopping,
    track_ends,
    tracks_to_segments,
)

__all__ = [
    "MIP_DEDX_PLACEHOLDER",
    "DataFile",
    "LineFit",
    "Points",
    "RecoConfig",
    "RecoResult",
    "RecoSegments",
    "RecoTrack",
    "adc_charge",
    "apply_selection",
    "cluster_hits",
    "crossing_t0",
    "drift_to_position",
    "fit_line",
    "fit_track",
    "hits_to_points",
    "load_data",
    "load_data_many",
    "local_to_card",
    "nominal_drift_velocity",
    "reconstruct",
    "tag_stopping",
    "track_ends",
    "tracks_to_segments",
    "trigger_t0_ticks",
]
