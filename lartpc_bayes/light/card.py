"""The light card: TPC volumes, light-detector tiles, optics and scintillation constants.

A light card is a YAML file in ``models/`` (``light_module0``) or any path. It is parsed into a
frozen :class:`LightCard` whose :attr:`LightCard.tiles` lists every readout channel as a rectangle
on a TPC wall. Every error names the file and the key (:class:`lartpc_bayes.detector.CardError`).

Coordinates and units are those of the charge card: cm, the drift axis from the card (``z`` for
Module 0), MeV for energies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..detector import MODELS_DIR, CardError

_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Tile:
    """One light-readout channel: a rectangle on a wall plane, facing into its TPC.

    axis     : axis normal to the tile (0, 1, 2)
    plane_cm : position of the tile plane on that axis
    inward   : +1 if the TPC lies at larger coordinate than the plane, else -1
    lo, hi   : (2,) tile corners on the two other axes (ascending axis order), cm
    tpc      : index of the TPC the tile looks into
    kind     : tile type name (``arclight``, ``lcm``)
    pde      : photon detection efficiency (photo-electrons per photon hitting the tile)
    """

    axis: int
    plane_cm: float
    inward: float
    lo: tuple[float, float]
    hi: tuple[float, float]
    tpc: int
    kind: str
    pde: float

    @property
    def other_axes(self) -> tuple[int, int]:
        a = [i for i in range(3) if i != self.axis]
        return (a[0], a[1])

    @property
    def center(self) -> np.ndarray:
        c = np.zeros(3)
        c[self.axis] = self.plane_cm
        u, v = self.other_axes
        c[u] = 0.5 * (self.lo[0] + self.hi[0])
        c[v] = 0.5 * (self.lo[1] + self.hi[1])
        return c

    @property
    def size(self) -> tuple[float, float]:
        return (self.hi[0] - self.lo[0], self.hi[1] - self.lo[1])


@dataclass(frozen=True)
class LightTPC:
    """A drift volume as the light sees it: an axis-aligned box (cm)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


@dataclass(frozen=True)
class LightCard:
    """Everything the light model needs (hashable: a static argument of jitted functions).

    Optics: ``rayleigh_cm`` and ``absorption_cm`` combine into the direct-beam attenuation length
    ``1/L_att = 1/L_R + 1/L_abs`` (scattered photons are counted as lost).
    Scintillation: ``w_ph_MeV`` (19.5 eV per quantum), ``excitation_ratio`` n_ex/n_i (0.21).
    Readout: ``dark_pe`` mean background pe per channel per event, ``gain_*`` the prior of the
    optional relative light-gain parameter, ``excess_noise_factor``/``sigma_pe`` the
    Poisson-Gaussian option.
    """

    name: str
    charge_card: str
    drift_axis: int
    tpcs: tuple[LightTPC, ...]
    tiles: tuple[Tile, ...]
    rayleigh_cm: float
    absorption_cm: float
    w_ph_MeV: float
    excitation_ratio: float
    singlet_fraction: float
    tau_s_us: float
    tau_t_us: float
    voxel_cm: float
    max_cell_cm: float
    dark_pe: float
    gain_nominal: float
    gain_low: float
    gain_high: float
    excess_noise_factor: float
    sigma_pe: float
    source: str = ""

    @property
    def n_channels(self) -> int:
        return len(self.tiles)

    @property
    def attenuation_cm(self) -> float:
        """Direct-beam attenuation length ``(1/L_R + 1/L_abs)^-1``, cm."""
        return 1.0 / (1.0 / self.rayleigh_cm + 1.0 / self.absorption_cm)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) of the box enclosing every TPC, cm."""
        lo = np.min([t.lo for t in self.tpcs], axis=0)
        hi = np.max([t.hi for t in self.tpcs], axis=0)
        return lo, hi

    @property
    def tile_tpc(self) -> np.ndarray:
        return np.array([t.tpc for t in self.tiles], np.int64)

    @property
    def pde(self) -> np.ndarray:
        return np.array([t.pde for t in self.tiles])

    def with_optics(self, rayleigh_cm: float | None = None,
                    absorption_cm: float | None = None) -> LightCard:
        """A copy with other optics (e.g. the 'changed attenuation' truth of a closure test)."""
        from dataclasses import replace

        return replace(
            self,
            rayleigh_cm=self.rayleigh_cm if rayleigh_cm is None else float(rayleigh_cm),
            absorption_cm=self.absorption_cm if absorption_cm is None else float(absorption_cm),
        )

    def tpc_of_points(self, xyz: np.ndarray) -> np.ndarray:
        """Index of the TPC box containing each point (-1 outside), first match wins."""
        xyz = np.asarray(xyz, np.float64)
        out = np.full(xyz.shape[:-1], -1, np.int64)
        for i, t in enumerate(self.tpcs):
            inside = np.all((xyz >= np.array(t.lo)) & (xyz <= np.array(t.hi)), axis=-1)
            out = np.where(inside & (out < 0), i, out)
        return out


def _get(d: Any, key: str, fname: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise CardError(f"{fname}: missing key {where}{key}")
    return d[key]


def _pos(v: Any, fname: str, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as exc:
        raise CardError(f"{fname}: {where} must be a number, got {v!r}") from exc
    if not x > 0:
        raise CardError(f"{fname}: {where} must be positive, got {x}")
    return x


def parse_light_card(raw: Any, fname: str = "<light card>") -> LightCard:
    """Validate a light card already parsed from YAML and build its tiles."""
    if not isinstance(raw, dict):
        raise CardError(f"{fname}: a light card is a mapping")
    drift = _get(raw, "drift_axis", fname, "")
    if drift not in _AXES:
        raise CardError(f"{fname}: drift_axis must be x, y or z, got {drift!r}")
    drift_axis = _AXES[drift]
    tpcs = []
    for i, t in enumerate(_get(raw, "tpcs", fname, "")):
        lo, hi = [0.0] * 3, [0.0] * 3
        plane = [a for a in range(3) if a != drift_axis]
        for key, ax in (("drift_cm", drift_axis), ("x_cm" if drift_axis != 0 else "y_cm", plane[0]),
                        ("y_cm" if drift_axis == 2 else "z_cm", plane[1])):
            rng = _get(t, key, fname, f"tpcs[{i}].")
            if len(rng) != 2 or not float(rng[0]) < float(rng[1]):
                raise CardError(f"{fname}: tpcs[{i}].{key} must be [low, high] with low < high")
            lo[ax], hi[ax] = float(rng[0]), float(rng[1])
        tpcs.append(LightTPC(tuple(lo), tuple(hi)))
    walls = _get(raw, "walls", fname, "")
    wall_axis = _AXES.get(_get(walls, "axis", fname, "walls."))
    if wall_axis is None or wall_axis == drift_axis:
        raise CardError(f"{fname}: walls.axis must be an axis other than the drift axis")
    n_slots = int(_get(walls, "slots_per_wall", fname, "walls."))
    order = list(_get(walls, "slot_order", fname, "walls."))
    if len(order) != n_slots:
        raise CardError(f"{fname}: walls.slot_order needs {n_slots} entries, has {len(order)}")
    tile_len = _pos(_get(walls, "tile_drift_length_cm", fname, "walls."), fname,
                    "walls.tile_drift_length_cm")
    types = _get(raw, "tile_types", fname, "")
    for k in set(order):
        if k not in types:
            raise CardError(f"{fname}: walls.slot_order names tile type {k!r} not in tile_types")
    slot_axis = next(a for a in range(3) if a not in (drift_axis, wall_axis))
    tiles = []
    for it, t in enumerate(tpcs):
        for side in (0, 1):
            plane = (t.lo, t.hi)[side][wall_axis]
            inward = 1.0 if side == 0 else -1.0
            s0, s1 = t.lo[slot_axis], t.hi[slot_axis]
            pitch = (s1 - s0) / n_slots
            d_mid = 0.5 * (t.lo[drift_axis] + t.hi[drift_axis])
            d_lo, d_hi = d_mid - 0.5 * tile_len, d_mid + 0.5 * tile_len
            for js, kind in enumerate(order):
                spec = types[kind]
                n_per = int(_get(spec, "n_per_slot", fname, f"tile_types.{kind}."))
                size = _get(spec, "size_cm", fname, f"tile_types.{kind}.")
                pde = _pos(_get(spec, "pde", fname, f"tile_types.{kind}."), fname,
                           f"tile_types.{kind}.pde")
                w = float(size[0])
                if n_per * w > pitch + 1e-9:
                    raise CardError(f"{fname}: {n_per} {kind} tiles of {w} cm exceed the "
                                    f"{pitch:.2f} cm slot")
                c = s0 + (js + 0.5) * pitch
                for k in range(n_per):
                    a0 = c - 0.5 * n_per * w + k * w
                    lo2 = {slot_axis: a0, drift_axis: d_lo}
                    hi2 = {slot_axis: a0 + w, drift_axis: d_hi}
                    ax2 = sorted((slot_axis, drift_axis))
                    tiles.append(Tile(wall_axis, float(plane), inward,
                                      (lo2[ax2[0]], lo2[ax2[1]]), (hi2[ax2[0]], hi2[ax2[1]]),
                                      it, kind, pde))
    optics = _get(raw, "optics", fname, "")
    sc = _get(raw, "scintillation", fname, "")
    lib = _get(raw, "library", fname, "")
    ro = _get(raw, "readout", fname, "")
    gain = _get(ro, "gain", fname, "readout.")
    card = LightCard(
        name=str(raw.get("name", Path(fname).stem)),
        charge_card=str(raw.get("charge_card", "module0")),
        drift_axis=drift_axis,
        tpcs=tuple(tpcs),
        tiles=tuple(tiles),
        rayleigh_cm=_pos(_get(optics, "rayleigh_cm", fname, "optics."), fname,
                         "optics.rayleigh_cm"),
        absorption_cm=_pos(_get(optics, "absorption_cm", fname, "optics."), fname,
                           "optics.absorption_cm"),
        w_ph_MeV=_pos(_get(sc, "w_ph_MeV", fname, "scintillation."), fname, "w_ph_MeV"),
        excitation_ratio=float(_get(sc, "excitation_ratio", fname, "scintillation.")),
        singlet_fraction=float(sc.get("singlet_fraction", 0.3)),
        tau_s_us=float(sc.get("tau_s_us", 0.001)),
        tau_t_us=float(sc.get("tau_t_us", 1.53)),
        voxel_cm=_pos(_get(lib, "voxel_cm", fname, "library."), fname, "library.voxel_cm"),
        max_cell_cm=_pos(lib.get("max_cell_cm", 5.0), fname, "library.max_cell_cm"),
        dark_pe=_pos(_get(ro, "dark_pe", fname, "readout."), fname, "readout.dark_pe"),
        gain_nominal=float(_get(gain, "nominal", fname, "readout.gain.")),
        gain_low=float(_get(gain, "low", fname, "readout.gain.")),
        gain_high=float(_get(gain, "high", fname, "readout.gain.")),
        excess_noise_factor=float(ro.get("excess_noise_factor", 1.0)),
        sigma_pe=float(ro.get("sigma_pe", 0.0)),
        source=fname,
    )
    if not card.gain_low < card.gain_nominal < card.gain_high:
        raise CardError(f"{fname}: readout.gain needs low < nominal < high")
    if not 0 <= card.excitation_ratio < 1:
        raise CardError(f"{fname}: scintillation.excitation_ratio must be in [0, 1)")
    return card


def load_light_card(name_or_path: str | Path = "light_module0") -> LightCard:
    """Load a light card by shipped name (``models/<name>.yaml``) or path."""
    p = Path(name_or_path)
    if not (p.suffix in (".yaml", ".yml") or p.exists()):
        p = MODELS_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        known = sorted(q.stem for q in MODELS_DIR.glob("light*.yaml"))
        raise CardError(f"light card {name_or_path!r} not found; shipped light cards: {known}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise CardError(f"{p}: not valid YAML ({exc})") from exc
    return parse_light_card(raw, str(p))
