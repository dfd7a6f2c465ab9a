"""Detector and prior cards: geometry, electronics, physics constants and calibration priors.

A card is a YAML file in ``models/`` (``module0``, ``2x2``, ``ndlar``) or any path. It is parsed
into frozen dataclasses that are hashable, so a card can be a static argument of a jitted function;
the six calibration parameters are *not* part of the static card but a separate pytree
(:class:`lartpc_bayes.detector.physics.DetectorParams`), so a new parameter value never recompiles.

Every error names the file and the offending key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The six calibration parameters, in the order used everywhere (arrays, tables, plots).
PARAM_NAMES: tuple[str, ...] = ("A_B", "k_B", "E", "tau", "D_L", "D_T")

#: Directory of the shipped cards (the repository's ``models/`` folder).
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

_AXES = {"x": 0, "y": 1, "z": 2}


class CardError(ValueError):
    """A detector card is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TPC:
    """One drift volume.

    ``anode_cm`` and ``cathode_cm`` are positions on the drift axis; electrons drift from the
    cathode side towards the anode. ``plane_min_cm``/``plane_max_cm`` bound the two in-plane
    coordinates (the non-drift axes in increasing order, e.g. (x, y) when the drift axis is z).
    """

    anode_cm: float
    cathode_cm: float
    plane_min_cm: tuple[float, float]
    plane_max_cm: tuple[float, float]

    @property
    def drift_length_cm(self) -> float:
        return abs(self.anode_cm - self.cathode_cm)

    @property
    def drift_sign(self) -> float:
        """+1 if the anode sits at larger drift coordinate than the cathode, else -1."""
        return 1.0 if self.anode_cm > self.cathode_cm else -1.0


@dataclass(frozen=True)
class Geometry:
    drift_axis: int  # 0, 1, 2 for x, y, z
    pixel_pitch_cm: float
    tpcs: tuple[TPC, ...]
    #: optional key ``geometry.drift_offset_sd_cm`` (default 0.3 cm): prior sd of the optional
    #: per-TPC drift-coordinate offset latent (lartpc_bayes.reco.geometry; issue 12 item 4)
    drift_offset_sd_cm: float = 0.3

    @property
    def plane_axes(self) -> tuple[int, int]:
        """The two in-plane axes (ascending)."""
        a = [i for i in range(3) if i != self.drift_axis]
        return (a[0], a[1])

    def n_pixels(self, tpc: int) -> tuple[int, int]:
        """Number of pixels along the two in-plane axes of TPC ``tpc``."""
        t = self.tpcs[tpc]
        return tuple(  # type: ignore[return-value]
            round((t.plane_max_cm[k] - t.plane_min_cm[k]) / self.pixel_pitch_cm) for k in range(2)
        )

    @property
    def max_drift_cm(self) -> float:
        return max(t.drift_length_cm for t in self.tpcs)


@dataclass(frozen=True)
class Physics:
    temperature_K: float
    lar_density_g_cm3: float
    w_ion_MeV: float
    recombination: str  # "birks" or "box"
    box_alpha: float
    box_beta: float


@dataclass(frozen=True)
class Electronics:
    """LArPix self-triggering front end (charges in electrons, times in ticks of ``tick_us``)."""

    tick_us: float
    threshold_e: float
    reset_noise_e: float
    uncorrelated_noise_e: float
    discriminator_noise_e: float
    gain_mV_per_ke: float
    v_pedestal_mV: float
    v_cm_mV: float
    v_ref_mV: float
    adc_bits: int
    hold_cycles: int
    hold_extra_cycles: int
    busy_cycles: int
    reset_cycles: int
    max_hits_per_pixel: int

    @property
    def adc_counts(self) -> int:
        return 2**self.adc_bits

    @property
    def hold_ticks(self) -> int:
        """Ticks integrated after the crossing before the sample is held (18 for LArPix)."""
        return self.hold_cycles + self.hold_extra_cycles

    @property
    def dead_ticks(self) -> int:
        """Ticks from the crossing to the next integration start (hold + busy + reset)."""
        return self.hold_ticks + self.busy_cycles + self.reset_cycles

    @property
    def electrons_per_adc(self) -> float:
        """ADC step in electrons: (V_ref - V_cm) / 2^bits / gain."""
        return (self.v_ref_mV - self.v_cm_mV) / self.adc_counts / (self.gain_mV_per_ke * 1e-3)


@dataclass(frozen=True)
class ParamSpec:
    """Nominal value and uniform prior range of one calibration parameter (physical units)."""

    name: str
    nominal: float
    low: float
    high: float
    unit: str
    source: str = ""


@dataclass(frozen=True)
class DetectorCard:
    name: str
    description: str
    source: str
    geometry: Geometry
    physics: Physics
    electronics: Electronics
    params: tuple[ParamSpec, ...] = field(default_factory=tuple)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"card {self.name!r} has no parameter {name!r}")

    def nominal(self) -> dict[str, float]:
        return {p.name: p.nominal for p in self.params}

    def with_electronics(self, **changes: Any) -> DetectorCard:
        """A copy with some electronics fields replaced (e.g. noise switched off in tests)."""
        from dataclasses import replace

        return replace(self, electronics=replace(self.electronics, **changes))


def _get(d: Any, key: str, path: str, fname: str, kind: type | tuple[type, ...] = float) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise CardError(f"{fname}: missing key '{path}{key}'")
    v = d[key]
    if kind is float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise CardError(f"{fname}: key '{path}{key}' must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            raise CardError(f"{fname}: key '{path}{key}' must be finite, got {v!r}")
        return float(v)
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise CardError(f"{fname}: key '{path}{key}' must be an integer, got {v!r}")
        return int(v)
    if not isinstance(v, kind):
        raise CardError(f"{fname}: key '{path}{key}' has wrong type {type(v).__name__}")
    return v


def _positive(v: float, path: str, fname: str, allow_zero: bool = False) -> float:
    if v < 0 or (v == 0 and not allow_zero):
        raise CardError(f"{fname}: key '{path}' must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return v


def resolve_card_path(name_or_path: str | Path) -> Path:
    """``module0`` -> ``models/module0.yaml``; an existing path is returned as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise CardError(f"{p}: detector card not found")
        return p
    cand = MODELS_DIR / f"{name_or_path}.yaml"
    if not cand.exists():
        known = sorted(q.stem for q in MODELS_DIR.glob("*.yaml"))
        raise CardError(f"unknown detector card {name_or_path!r}; shipped cards: {known}")
    return cand


def parse_card(raw: Any, fname: str = "<card>") -> DetectorCard:
    """Validate a card already parsed from YAML (a dict)."""
    if not isinstance(raw, dict):
        raise CardError(f"{fname}: top level must be a mapping")
    name = _get(raw, "name", "", fname, str)
    g = _get(raw, "geometry", "", fname, dict)
    axis = _get(g, "drift_axis", "geometry.", fname, str)
    if axis not in _AXES:
        raise CardError(f"{fname}: key 'geometry.drift_axis' must be x, y or z, got {axis!r}")
    pitch = _positive(
        _get(g, "pixel_pitch_cm", "geometry.", fname), "geometry.pixel_pitch_cm", fname
    )
    tl = _get(g, "tpcs", "geometry.", fname, list)
    if not tl:
        raise CardError(f"{fname}: key 'geometry.tpcs' must list at least one TPC")
    plane_keys = ["xyz"[i] + "_cm" for i in range(3) if i != _AXES[axis]]
    tpcs = []
    for i, t in enumerate(tl):
        pre = f"geometry.tpcs[{i}]."
        an = _get(t, "anode_cm", pre, fname)
        ca = _get(t, "cathode_cm", pre, fname)
        if an == ca:
            raise CardError(f"{fname}: key '{pre}cathode_cm' equals anode_cm (zero drift length)")
        lo, hi = [], []
        for k in plane_keys:
            r = _get(t, k, pre, fname, list)
            if len(r) != 2 or not all(isinstance(v, int | float) for v in r) or r[1] <= r[0]:
                raise CardError(
                    f"{fname}: key '{pre}{k}' must be [min, max] with min < max, got {r}"
                )
            n = (r[1] - r[0]) / pitch
            if abs(n - round(n)) > 1e-3:
                raise CardError(
                    f"{fname}: key '{pre}{k}' spans {r[1] - r[0]:.4f} cm, not a whole number of "
                    f"{pitch} cm pixels"
                )
            lo.append(float(r[0]))
            hi.append(float(r[1]))
        tpcs.append(TPC(an, ca, (lo[0], lo[1]), (hi[0], hi[1])))
    dsd = g.get("drift_offset_sd_cm", 0.3)
    if isinstance(dsd, bool) or not isinstance(dsd, int | float) or not dsd > 0:
        raise CardError(f"{fname}: key 'geometry.drift_offset_sd_cm' must be a positive number, "
                        f"got {dsd!r}")
    geometry = Geometry(_AXES[axis], pitch, tuple(tpcs), float(dsd))

    ph = _get(raw, "physics", "", fname, dict)
    rec = _get(ph, "recombination", "physics.", fname, str)
    if rec not in ("birks", "box"):
        raise CardError(f"{fname}: key 'physics.recombination' must be birks or box, got {rec!r}")
    physics = Physics(
        temperature_K=_positive(
            _get(ph, "temperature_K", "physics.", fname), "physics.temperature_K", fname
        ),
        lar_density_g_cm3=_positive(
            _get(ph, "lar_density_g_cm3", "physics.", fname), "physics.lar_density_g_cm3", fname
        ),
        w_ion_MeV=_positive(_get(ph, "w_ion_MeV", "physics.", fname), "physics.w_ion_MeV", fname),
        recombination=rec,
        box_alpha=_get(ph, "box_alpha", "physics.", fname),
        box_beta=_get(ph, "box_beta", "physics.", fname),
    )

    el = _get(raw, "electronics", "", fname, dict)
    fl = {
        k: _positive(_get(el, k, "electronics.", fname), "electronics." + k, fname, allow_zero=z)
        for k, z in [
            ("tick_us", False),
            ("threshold_e", False),
            ("reset_noise_e", True),
            ("uncorrelated_noise_e", True),
            ("discriminator_noise_e", True),
            ("gain_mV_per_ke", False),
            ("v_pedestal_mV", True),
            ("v_cm_mV", True),
            ("v_ref_mV", False),
        ]
    }
    it = {
        k: int(
            _positive(
                _get(el, k, "electronics.", fname, int), "electronics." + k, fname, allow_zero=z
            )
        )
        for k, z in [
            ("adc_bits", False),
            ("hold_cycles", True),
            ("hold_extra_cycles", True),
            ("busy_cycles", True),
            ("reset_cycles", True),
            ("max_hits_per_pixel", False),
        ]
    }
    if fl["v_ref_mV"] <= fl["v_cm_mV"]:
        raise CardError(f"{fname}: key 'electronics.v_ref_mV' must exceed v_cm_mV")
    electronics = Electronics(**fl, **it)

    pr = _get(raw, "parameters", "", fname, dict)
    params = []
    for pname in PARAM_NAMES:
        pre = f"parameters.{pname}."
        spec = _get(pr, pname, "parameters.", fname, dict)
        nom, lo, hi = (_get(spec, k, pre, fname) for k in ("nominal", "low", "high"))
        if not (0 < lo < hi):
            raise CardError(
                f"{fname}: key '{pre}low/high' must satisfy 0 < low < high, got [{lo}, {hi}]"
            )
        if not lo <= nom <= hi:
            raise CardError(f"{fname}: key '{pre}nominal' = {nom} outside [{lo}, {hi}]")
        if pname == "A_B" and hi > 1.0:
            raise CardError(f"{fname}: key '{pre}high' = {hi}: A_B is a fraction, at most 1")
        params.append(
            ParamSpec(pname, nom, lo, hi, str(spec.get("unit", "")), str(spec.get("source", "")))
        )
    unknown = set(pr) - set(PARAM_NAMES)
    if unknown:
        raise CardError(f"{fname}: unknown parameter(s) {sorted(unknown)} under 'parameters'")
    return DetectorCard(
        name=name,
        description=str(raw.get("description", "")),
        source=fname,
        geometry=geometry,
        physics=physics,
        electronics=electronics,
        params=tuple(params),
    )


def card_to_dict(card: DetectorCard) -> dict[str, Any]:
    """The card as the plain mapping :func:`parse_card` reads (for storing it in output files)."""
    g = card.geometry
    keys = ["xyz"[i] + "_cm" for i in g.plane_axes]
    return {
        "name": card.name,
        "description": card.description,
        "geometry": {
            "drift_axis": "xyz"[g.drift_axis],
            "pixel_pitch_cm": g.pixel_pitch_cm,
            "tpcs": [
                {
                    "anode_cm": t.anode_cm,
                    "cathode_cm": t.cathode_cm,
                    keys[0]: [t.plane_min_cm[0], t.plane_max_cm[0]],
                    keys[1]: [t.plane_min_cm[1], t.plane_max_cm[1]],
                }
                for t in g.tpcs
            ],
            "drift_offset_sd_cm": g.drift_offset_sd_cm,
        },
        "physics": dict(card.physics.__dict__),
        "electronics": dict(card.electronics.__dict__),
        "parameters": {
            p.name: {
                "nominal": p.nominal,
                "low": p.low,
                "high": p.high,
                "unit": p.unit,
                "source": p.source,
            }
            for p in card.params
        },
    }
