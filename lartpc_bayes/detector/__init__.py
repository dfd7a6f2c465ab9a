"""Detector description: validated cards (card; loading by name or path, larnd-sim's YAML files
included, in load and larndsim), pixel geometry (geometry), and the
drift/recombination/diffusion microphysics (physics).
"""

from __future__ import annotations

from .card import (
    MODELS_DIR,
    PARAM_NAMES,
    TPC,
    CardError,
    DetectorCard,
    Electronics,
    Geometry,
    ParamSpec,
    Physics,
    card_to_dict,
    parse_card,
    resolve_card_path,
)
from .geometry import (
    drift_distance,
    length_inside,
    pixel_center,
    pixel_from_id,
    pixel_id,
    pixel_in_range,
    pixel_indices,
    tpc_id_offsets,
    tpc_of_points,
    tpc_pixel_counts,
)
from .larndsim import (
    LARNDSIM_DEFAULTS,
    PRIOR_RANGES,
    card_from_larndsim,
    is_larndsim_detector_properties,
    is_larndsim_pixel_layout,
    load_larndsim_card,
)
from .load import (
    load_card,
)
from .physics import (
    MOBILITY_A,
    MOBILITY_T0_K,
    DetectorParams,
    birks_recombination,
    box_recombination,
    diffusion_sigma,
    drift_velocity,
    electron_mobility,
    ionization_electrons,
    lifetime_factor,
    nominal_params,
    pad_fraction,
    recombination,
)

__all__ = [
    "LARNDSIM_DEFAULTS",
    "MOBILITY_A",
    "MOBILITY_T0_K",
    "MODELS_DIR",
    "PARAM_NAMES",
    "PRIOR_RANGES",
    "TPC",
    "CardError",
    "DetectorCard",
    "DetectorParams",
    "Electronics",
    "Geometry",
    "ParamSpec",
    "Physics",
    "birks_recombination",
    "box_recombination",
    "card_from_larndsim",
    "card_to_dict",
    "diffusion_sigma",
    "drift_distance",
    "drift_velocity",
    "electron_mobility",
    "ionization_electrons",
    "is_larndsim_detector_properties",
    "is_larndsim_pixel_layout",
    "length_inside",
    "lifetime_factor",
    "load_card",
    "load_larndsim_card",
    "nominal_params",
    "pad_fraction",
    "parse_card",
    "pixel_center",
    "pixel_from_id",
    "pixel_id",
    "pixel_in_range",
    "pixel_indices",
    "recombination",
    "resolve_card_path",
    "tpc_id_offsets",
    "tpc_of_points",
    "tpc_pixel_counts",
]
