"""Light readout (DESIGN.md section 13, issue 15): scintillation yield, a photon library built from
geometry, its SIREN surrogate, the light likelihood and the joint charge + light model.

Data flow: segments -> photons (:mod:`.scintillation`, the charge model's recombination) ->
visibility per channel (:mod:`.library` geometry/LUT or :mod:`.siren`) -> expected pe ->
Poisson light site beside the charge site (:mod:`.model`).
"""

from __future__ import annotations

from .card import LightCard, LightTPC, Tile, load_light_card, parse_light_card
from .io import read_light, write_light
from .library import (
    PhotonLibrary,
    build_library,
    load_library,
    nearest_tpc,
    on_axis_solid_angle,
    rectangle_solid_angle,
    save_library,
    visibility,
)
from .likelihood import (
    LightData,
    LightPlan,
    expected_pe,
    plan_light,
    poisson_gaussian_log_likelihood,
    poisson_log_likelihood,
    segment_points,
    simulate_light,
)
from .model import GAIN_SITE, fit_joint, joint_model, segment_dEdx, traced_params
from .scintillation import (
    EXCITATION_RATIO,
    W_PH_MEV,
    check_quanta_consistency,
    photon_yield,
    photons_per_MeV,
    quanta,
)
from .siren import (
    W0,
    MuonLight,
    Siren,
    channel_mask,
    compare,
    event_nll,
    library_loss,
    muon_points,
    n_params,
    predict,
    relative_error,
    simulate_muon_light,
    train_on_events,
    train_on_library,
    weighted_quantile,
)

__all__ = [
    "EXCITATION_RATIO",
    "GAIN_SITE",
    "W0",
    "W_PH_MEV",
    "LightCard",
    "LightData",
    "LightPlan",
    "LightTPC",
    "MuonLight",
    "PhotonLibrary",
    "Siren",
    "Tile",
    "build_library",
    "channel_mask",
    "check_quanta_consistency",
    "compare",
    "event_nll",
    "expected_pe",
    "fit_joint",
    "joint_model",
    "library_loss",
    "load_library",
    "load_light_card",
    "muon_points",
    "n_params",
    "nearest_tpc",
    "on_axis_solid_angle",
    "parse_light_card",
    "photon_yield",
    "photons_per_MeV",
    "plan_light",
    "poisson_gaussian_log_likelihood",
    "poisson_log_likelihood",
    "predict",
    "quanta",
    "read_light",
    "rectangle_solid_angle",
    "relative_error",
    "save_library",
    "segment_dEdx",
    "segment_points",
    "simulate_light",
    "simulate_muon_light",
    "traced_params",
    "train_on_events",
    "train_on_library",
    "visibility",
    "weighted_quantile",
    "write_light",
]
