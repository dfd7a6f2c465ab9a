"""The calorimeter card: toy-ECAL geometry, shower and response constants, priors and training.

The card is a YAML file (default ``models/calo_ecal.yaml``) parsed into frozen dataclasses, so it is
hashable and can be a static argument of jitted functions. Every key is required (the card is the
single place where a constant and its source live); unknown keys are rejected so a typo cannot fall
back silently to a default. Every error names the file and the dotted key.

Units: energies in GeV, depths in radiation lengths X0, the stochastic term ``a`` in GeV^(1/2), the
noise term ``b`` in GeV, the constant term ``c`` and gain spreads dimensionless.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: The shipped card, ``models/calo_ecal.yaml`` at the repository root.
DEFAULT_CARD_PATH = Path(__file__).resolve().parents[2] / "models" / "calo_ecal.yaml"

PARTICLES: tuple[str, ...] = ("photon", "electron", "pi0")
SPECTRA: tuple[str, ...] = ("log_uniform", "uniform")


class CaloCardError(ValueError):
    """The calorimeter card is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Geometry:
    """Longitudinal geometry: ``n_layers`` absorber layers of ``layer_thickness_x0`` behind
    ``dead_material_x0`` of inactive material; the absorber has atomic number ``absorber_z`` and
    critical energy ``critical_energy_gev``."""

    n_layers: int
    layer_thickness_x0: float
    dead_material_x0: float
    absorber_z: float
    critical_energy_gev: float

    @property
    def depth_x0(self) -> float:
        """Total depth from the front of the dead material to the back of the last layer [X0]."""
        return self.dead_material_x0 + self.n_layers * self.layer_thickness_x0


@dataclass(frozen=True)
class Shower:
    """GFlash longitudinal-profile constants (homogeneous parameterisation) and its clamps.

    ``<ln T> = ln max(ln y + t1, log_argument_min)``,
    ``<ln alpha> = ln max(a1 + (a2 + a3/Z) ln y, log_argument_min)``,
    ``sigma(ln T) = min(sigma_max, 1/(sigma_ln_t[0] + sigma_ln_t[1] ln y))`` (same for alpha),
    ``rho(ln T, ln alpha) = rho[0] + rho[1] ln y``, with ``y = E/E_c``; then ``T >= t_max_min`` and
    ``alpha >= alpha_min``.
    """

    t1: float
    a1: float
    a2: float
    a3: float
    sigma_ln_t: tuple[float, float]
    sigma_ln_alpha: tuple[float, float]
    rho: tuple[float, float]
    log_argument_min: float
    sigma_max: float
    t_max_min: float
    alpha_min: float
    photon_conversion_length_x0: float


@dataclass(frozen=True)
class Response:
    """Detector response: sampling term ``stochastic_a`` [GeV^1/2], total electronic noise
    ``noise_b`` [GeV] (``b/sqrt(n_layers)`` per layer), frozen per-layer gain spread, per-event
    gain spread ``event_gain_c`` (the irreducible constant term), seed freezing the layer gains."""

    stochastic_a: float
    noise_b: float
    layer_gain_spread: float
    event_gain_c: float
    detector_seed: int


@dataclass(frozen=True)
class Beam:
    """Incident particle and energy spectrum on ``[energy_min_gev, energy_max_gev]``."""

    particle: str
    spectrum: str
    energy_min_gev: float
    energy_max_gev: float


@dataclass(frozen=True)
class Calibration:
    """Priors and inference settings of the talk-004 baselines (NumPyro)."""

    alpha_prior: tuple[float, float]
    weight_prior: tuple[float, float]
    offset_prior_gev: float
    stochastic_prior: float
    noise_prior_gev: float
    constant_prior: float
    outlier_fraction_prior: tuple[float, float]
    outlier_width_prior: float
    absolute_sigma_prior_gev: float
    relative_sigma_prior: float
    nuts_events: int
    nuts_warmup: int
    nuts_samples: int
    nuts_chains: int
    laplace_draws: int


@dataclass(frozen=True)
class Mdn:
    """The talk-003 Gaussian-mixture network and its training schedule."""

    hidden_layers: int
    hidden_units: int
    components: int
    sigma_floor: float
    learning_rate: float
    lr_milestones: tuple[int, ...]
    lr_gamma: float
    batch_size: int
    epochs: int
    validation_fraction: float
    ensemble_members: int
    ensemble_epochs: int
    mode_iterations: int
    seed: int


@dataclass(frozen=True)
class Metrics:
    """Binning of the metrics in true energy (log-spaced over the beam range) and bootstrap size."""

    energy_bins: int
    bootstrap: int


@dataclass(frozen=True)
class CaloCard:
    """A parsed calorimeter card. ``source`` is the file it came from (for messages)."""

    name: str
    description: str
    geometry: Geometry
    shower: Shower
    response: Response
    beam: Beam
    calibration: Calibration
    mdn: Mdn
    metrics: Metrics
    source: str = "<dict>"

    def replace(self, **sections: dict[str, Any]) -> CaloCard:
        """A copy with fields of sections replaced, e.g. ``replace(response={"noise_b": 0})``."""
        changes = {}
        for section, fields in sections.items():
            current = getattr(self, section)
            changes[section] = dataclasses.replace(current, **fields)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The card as plain YAML-serialisable data (tuples become lists)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = {
                    k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(value).items()
                }
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_SECTIONS: dict[str, type] = {
    "geometry": Geometry,
    "shower": Shower,
    "response": Response,
    "beam": Beam,
    "calibration": Calibration,
    "mdn": Mdn,
    "metrics": Metrics,
}

# (predicate, description) per dotted key; checked after type conversion.
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_RULES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "geometry.n_layers": _POSITIVE,
    "geometry.layer_thickness_x0": _POSITIVE,
    "geometry.dead_material_x0": _NON_NEGATIVE,
    "geometry.absorber_z": _POSITIVE,
    "geometry.critical_energy_gev": _POSITIVE,
    "shower.log_argument_min": _POSITIVE,
    "shower.sigma_max": _POSITIVE,
    "shower.t_max_min": _POSITIVE,
    "shower.alpha_min": (lambda v: v > 1.0, "> 1 (beta = (alpha - 1)/T must be positive)"),
    "shower.photon_conversion_length_x0": _POSITIVE,
    "response.stochastic_a": _NON_NEGATIVE,
    "response.noise_b": _NON_NEGATIVE,
    "response.layer_gain_spread": _NON_NEGATIVE,
    "response.event_gain_c": _NON_NEGATIVE,
    "beam.particle": (lambda v: v in PARTICLES, f"one of {PARTICLES}"),
    "beam.spectrum": (lambda v: v in SPECTRA, f"one of {SPECTRA}"),
    "beam.energy_min_gev": _POSITIVE,
    "calibration.offset_prior_gev": _POSITIVE,
    "calibration.stochastic_prior": _POSITIVE,
    "calibration.noise_prior_gev": _POSITIVE,
    "calibration.constant_prior": _POSITIVE,
    "calibration.outlier_fraction_prior": _POSITIVE,
    "calibration.outlier_width_prior": _POSITIVE,
    "calibration.absolute_sigma_prior_gev": _POSITIVE,
    "calibration.relative_sigma_prior": _POSITIVE,
    "calibration.nuts_events": _POSITIVE,
    "calibration.nuts_warmup": _POSITIVE,
    "calibration.nuts_samples": _POSITIVE,
    "calibration.nuts_chains": _POSITIVE,
    "calibration.laplace_draws": _POSITIVE,
    "mdn.hidden_layers": _POSITIVE,
    "mdn.hidden_units": _POSITIVE,
    "mdn.components": _POSITIVE,
    "mdn.sigma_floor": _POSITIVE,
    "mdn.learning_rate": _POSITIVE,
    "mdn.lr_gamma": _POSITIVE,
    "mdn.batch_size": _POSITIVE,
    "mdn.epochs": _POSITIVE,
    "mdn.validation_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "mdn.ensemble_members": _NON_NEGATIVE,
    "mdn.ensemble_epochs": _POSITIVE,
    "mdn.mode_iterations": _POSITIVE,
    "metrics.energy_bins": _POSITIVE,
    "metrics.bootstrap": _NON_NEGATIVE,
}


def _convert(value: Any, annotation: Any, key: str, fname: str) -> Any:
    """Convert a YAML value to the dataclass field type ``annotation`` or raise naming the key."""
    origin = typing.get_origin(annotation)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CaloCardError(f"{fname}: key '{key}' must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise CaloCardError(f"{fname}: key '{key}' must be finite, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CaloCardError(f"{fname}: key '{key}' must be an integer, got {value!r}")
        return int(value)
    if annotation is str:
        if not isinstance(value, str):
            raise CaloCardError(f"{fname}: key '{key}' must be a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, list | tuple):
            raise CaloCardError(f"{fname}: key '{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]", fname) for i, v in enumerate(value))
        if len(value) != len(args):
            raise CaloCardError(
                f"{fname}: key '{key}' must have {len(args)} entries, got {len(value)}"
            )
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_convert(v, a, f"{key}[{i}]", fname) for i, (v, a) in pairs)
    raise TypeError(f"unsupported card field type {annotation!r} for {key}")  # programming error


def _parse_section(cls: type, data: Any, section: str, fname: str) -> Any:
    if not isinstance(data, dict):
        raise CaloCardError(f"{fname}: section '{section}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise CaloCardError(f"{fname}: unknown key '{section}.{unknown[0]}' (allowed: {names})")
    values = {}
    for name in names:
        key = f"{section}.{name}"
        if name not in data:
            raise CaloCardError(f"{fname}: missing key '{key}'")
        values[name] = _convert(data[name], hints[name], key, fname)
        rule = _RULES.get(key)
        if rule is not None:
            items = values[name] if isinstance(values[name], tuple) else (values[name],)
            if not all(rule[0](v) for v in items):
                raise CaloCardError(f"{fname}: key '{key}' must be {rule[1]}, got {data[name]!r}")
    return cls(**values)


def _check_consistency(card: CaloCard, fname: str) -> None:
    b, m = card.beam, card.mdn
    if b.energy_max_gev <= b.energy_min_gev:
        raise CaloCardError(
            f"{fname}: key 'beam.energy_max_gev' ({b.energy_max_gev}) must exceed "
            f"'beam.energy_min_gev' ({b.energy_min_gev})"
        )
    if list(m.lr_milestones) != sorted(m.lr_milestones) or any(e < 1 for e in m.lr_milestones):
        raise CaloCardError(
            f"{fname}: key 'mdn.lr_milestones' must be increasing epochs >= 1, "
            f"got {list(m.lr_milestones)}"
        )
    if not -1.0 < card.shower.rho[0] < 1.0:
        raise CaloCardError(
            f"{fname}: key 'shower.rho[0]' must be in (-1, 1), got {card.shower.rho[0]}"
        )
    if card.calibration.alpha_prior[1] <= 0 or card.calibration.weight_prior[1] <= 0:
        raise CaloCardError(
            f"{fname}: keys 'calibration.alpha_prior[1]' and 'calibration.weight_prior[1]' "
            "(prior scales) must be > 0"
        )


def card_from_dict(data: Any, source: str = "<dict>") -> CaloCard:
    """Parse and validate a card given as nested dicts (``source`` names it in error messages)."""
    if not isinstance(data, dict):
        raise CaloCardError(f"{source}: the card must be a YAML mapping, got {type(data).__name__}")
    allowed = {"name", "description", *_SECTIONS}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CaloCardError(f"{source}: unknown key '{unknown[0]}' (allowed: {sorted(allowed)})")
    for key in ("name", "description"):
        if key not in data:
            raise CaloCardError(f"{source}: missing key '{key}'")
        if not isinstance(data[key], str):
            raise CaloCardError(f"{source}: key '{key}' must be a string, got {data[key]!r}")
    sections = {}
    for section, cls in _SECTIONS.items():
        if section not in data:
            raise CaloCardError(f"{source}: missing section '{section}'")
        sections[section] = _parse_section(cls, data[section], section, source)
    card = CaloCard(name=data["name"], description=data["description"], source=source, **sections)
    _check_consistency(card, source)
    return card


def load_card(path: str | Path | None = None) -> CaloCard:
    """Load and validate a calorimeter card; ``None`` loads ``models/calo_ecal.yaml``."""
    p = Path(path) if path is not None else DEFAULT_CARD_PATH
    if not p.is_file():
        raise CaloCardError(f"{p}: calorimeter card not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise CaloCardError(f"{p}: not valid YAML: {exc}") from exc
    return card_from_dict(data, source=str(p))


def card_from_yaml(text: str, source: str = "<yaml>") -> CaloCard:
    """Parse a card from YAML text (as stored in the HDF5 attributes of data and model files)."""
    return card_from_dict(yaml.safe_load(text), source=source)


__all__ = [
    "DEFAULT_CARD_PATH",
    "PARTICLES",
    "SPECTRA",
    "Beam",
    "Calibration",
    "CaloCard",
    "CaloCardError",
    "Geometry",
    "Mdn",
    "Metrics",
    "Response",
    "Shower",
    "card_from_dict",
    "card_from_yaml",
    "load_card",
]
