"""Detector cards from larnd-sim's own files: a detector-properties YAML plus a pixel-layout YAML.

``lartpc-bayes simulate --detector module0.yaml --pixel-layout multi_tile_layout-2.3.16.yaml``
turns the two files larnd-sim reads (``larndsim/detector_properties/*.yaml`` and
``larndsim/pixel_layouts/multi_tile_layout-*.yaml``) into a :class:`DetectorCard`, so that a
user's own detector description is the card. The geometry follows larnd-sim's
``consts/detector.py::set_detector_properties`` (DUNE/larnd-sim; shared/references/larnd-sim.md
sections 1.3, 1.4 and 3.3):

* pitch p = ``pixel_pitch`` [mm] / 10 (cm);
* tile half-widths (cm): ``(max(ix) + 1) p / 2`` and ``(max(iy) + 1) p / 2`` over the
  ``chip_channel_to_position`` indices;
* ``tpc_offsets`` [cm] are given in the edep-sim frame and swapped x <-> z (larnd-sim's
  "Inverting x and z axes"), so that z is the drift axis as in our cards;
* per module offset o and anode a (anodes are the first entries of ``tile_indeces``, in file
  order): the anode plane is at ``tile_positions[.][0]`` / 10 + o_z, the cathode at
  anode + L * ``tile_orientations[.][0]`` (L = drift length), x from ``tile_positions[.][2]``,
  y from ``tile_positions[.][1]`` (min/max tile centre -/+ half-width, + o_x / o_y);
* drift length L: the layout's ``drift_length`` [mm] when present (larnd-sim >= 2025), else the
  detector file's ``drift_length`` [cm] (larnd-sim 2024 and earlier), else half the distance
  between the outermost anodes (larnd-sim's own fallback).

larnd-sim places pixel i at ``border_min + (i + 1/2) p`` with ``N = n_tiles * pixels_per_tile``
pixels per axis; tiles are not exactly contiguous (Module 0: tile pitch 310.4 mm, tile width
70 x 4.434 = 310.38 mm), so the card's range is ``[border_min, border_min + N p]`` (whole pixels,
as larnd-sim's pixel grid), not larnd-sim's ``border_max``; the difference (0.04 cm for Module 0)
is at the far edge only.

Constants larnd-sim does not take from these files, and where ours come from:

* ``physics.lar_density_g_cm3`` 1.38, ``physics.w_ion_MeV`` 23.6e-6, Box alpha 0.93 / beta 0.207,
  recombination "birks", the A_B / k_B nominals 0.800 / 0.0486: larnd-sim ``consts/physics.py``
  and ``consts/detector.py`` (hard-coded there, not YAML-configurable);
* ``electronics.hold_extra_cycles`` 3: the ``3 +`` of larnd-sim ``fee.py``'s integration interval;
* ``electronics.max_hits_per_pixel`` 10: our readout's slot count (larnd-sim ``MAX_ADC_VALUES`` is
  a simulation property, 30; the JAX port uses 10);
* electronics keys absent from the detector file (``discrimination_threshold``, ``v_cm``,
  ``v_ref``, ``larpix_gain``, noise charges, delays, ``clock_cycle``, ``adc_counts``): the
  defaults of larnd-sim ``consts/detector.py`` at snapshot aab11b9 (references section 1.2),
  :data:`LARNDSIM_DEFAULTS`. Newer larnd-sim versions changed some defaults (threshold 5e3 e,
  V_CM 478.1 mV, V_REF 1568 mV), so give them in the file when they matter;
* prior ranges of the six parameters: ynashed/larnd-sim ``optimize/ranges.py``
  (:data:`PRIOR_RANGES`), widened to [0.8 nominal, 1.2 nominal] where the file's nominal lies
  outside; A_B is capped at 1.

Per-module values (a list under ``e_field``, ``lifetime`` or ``discrimination_threshold``) are not
modelled (one value per card): the first entry is used, as larnd-sim does without module variation,
and a warning names the key when the entries differ.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import yaml

from .card import CardError, DetectorCard, parse_card

__all__ = [
    "LARNDSIM_DEFAULTS",
    "PRIOR_RANGES",
    "card_from_larndsim",
    "is_larndsim_detector_properties",
    "is_larndsim_pixel_layout",
    "load_larndsim_card",
]

#: larnd-sim ``consts/detector.py`` defaults (snapshot aab11b9, shared/references/larnd-sim.md 1.2)
#: used for keys the detector-properties YAML does not set. Units as in larnd-sim's YAML.
LARNDSIM_DEFAULTS: dict[str, float] = {
    "temperature": 87.17,  # K, TEMPERATURE
    "e_field": 0.50,  # kV/cm, E_FIELD
    "lifetime": 2.2e3,  # us, ELECTRON_LIFETIME
    "long_diff": 4.0e-6,  # cm^2/us, LONG_DIFF
    "tran_diff": 8.8e-6,  # cm^2/us, TRAN_DIFF
    "discrimination_threshold": 7e3,  # e-, DISCRIMINATION_THRESHOLD
    "adc_hold_delay": 15,  # clock cycles, ADC_HOLD_DELAY
    "adc_busy_delay": 9,  # clock cycles, ADC_BUSY_DELAY
    "reset_cycles": 1,  # clock cycles, RESET_CYCLES
    "clock_cycle": 0.1,  # us, CLOCK_CYCLE
    "larpix_gain": 4e-3,  # mV/e-, GAIN
    "v_cm": 288.0,  # mV, V_CM
    "v_ref": 1300.0,  # mV, V_REF
    "v_pedestal": 580.0,  # mV, V_PEDESTAL
    "adc_counts": 256,  # ADC_COUNTS = 2^8
    "reset_noise_charge": 900.0,  # e-, RESET_NOISE_CHARGE
    "uncorrelated_noise_charge": 500.0,  # e-, UNCORRELATED_NOISE_CHARGE
    "discriminator_noise": 650.0,  # e-, DISCRIMINATOR_NOISE
}

#: Prior ranges (low, high) of the six parameters: ynashed/larnd-sim optimize/ranges.py
#: (shared/references/larnd-sim.md section 4.2), the same as the shipped cards.
PRIOR_RANGES: dict[str, tuple[float, float, str]] = {
    "A_B": (0.78, 0.88, "1"),
    "k_B": (0.04, 0.07, "(kV/cm)(g/cm^2)/MeV"),
    "E": (0.45, 0.55, "kV/cm"),
    "tau": (500.0, 5000.0, "us"),
    "D_L": (2.0e-6, 9.0e-6, "cm^2/us"),
    "D_T": (4.0e-6, 14.0e-6, "cm^2/us"),
}

_BIRKS_AB = 0.800  # larnd-sim consts/physics.py BIRKS_Ab (Amoruso et al., NIM A 523 (2004) 275)
_BIRKS_KB = 0.0486  # (kV/cm)(g/cm^2)/MeV, larnd-sim consts/physics.py BIRKS_kb
_LAR_DENSITY = 1.38  # g/cm^3, larnd-sim consts/detector.py LAR_DENSITY
_W_ION_MEV = 23.6e-6  # MeV, larnd-sim consts/physics.py W_ION (Phys. Rev. A 10, 1452)
_BOX_ALPHA, _BOX_BETA = 0.93, 0.207  # larnd-sim consts/physics.py (ArgoNeuT, JINST 8 P08005)
_HOLD_EXTRA = 3  # larnd-sim fee.py: integration interval = (3 + ADC_HOLD_DELAY) cycles
_MAX_HITS = 10  # our readout slots per pixel (larnd-sim MAX_ADC_VALUES 30, JAX port 10)

_DETPROP_KEYS = {"tpc_offsets", "tile_map", "module_to_io_groups", "module_to_tpcs",
                 "drift_length", "lifetime", "e_field", "time_interval", "long_diff"}
_LAYOUT_KEYS = {"chip_channel_to_position", "tile_positions", "tile_indeces",
                "tile_orientations", "tile_chip_to_io", "pixel_pitch"}


def is_larndsim_detector_properties(raw: Any) -> bool:
    """True for a mapping that looks like a larnd-sim detector-properties YAML (>= 2 of its keys,
    no ``geometry`` section of our cards)."""
    return isinstance(raw, dict) and "geometry" not in raw and len(_DETPROP_KEYS & set(raw)) >= 2


def is_larndsim_pixel_layout(raw: Any) -> bool:
    """True for a mapping that looks like a larnd-sim multi-tile pixel-layout YAML."""
    return isinstance(raw, dict) and len(_LAYOUT_KEYS & set(raw)) >= 3


def _read_yaml(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise CardError(f"{p}: {what} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CardError(f"{p}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise CardError(f"{p}: {what} must be a mapping")
    return raw


def _number(d: dict, key: str, fname: str, default: float | None = None) -> float:
    """A finite number (first entry of a per-module list), or the default when the key is absent."""
    if key not in d:
        if default is None:
            raise CardError(f"{fname}: missing key '{key}'")
        return float(default)
    v = d[key]
    if isinstance(v, list):
        if not v:
            raise CardError(f"{fname}: key '{key}' is an empty list")
        if len({repr(x) for x in v}) > 1:
            warnings.warn(f"{fname}: key '{key}' has per-module values {v}; one value per card is "
                          f"modelled, the first ({v[0]}) is used", stacklevel=3)
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise CardError(f"{fname}: key '{key}' must be a finite number, got {v!r}")
    return float(v)


def _vec3(v: Any, key: str, fname: str) -> list[float]:
    if (not isinstance(v, list | tuple) or len(v) != 3
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)):
        raise CardError(f"{fname}: key '{key}' must be a list of 3 numbers, got {v!r}")
    return [float(x) for x in v]


def _geometry(det: dict, dname: str, lay: dict, lname: str) -> tuple[float, list[dict]]:
    for k in ("pixel_pitch", "chip_channel_to_position", "tile_positions", "tile_indeces",
              "tile_orientations"):
        if k not in lay:
            raise CardError(f"{lname}: pixel layout is missing key '{k}'")
    pitch = _number(lay, "pixel_pitch", lname) / 10.0  # mm -> cm
    if pitch <= 0:
        raise CardError(f"{lname}: key 'pixel_pitch' must be > 0, got {pitch * 10} mm")
    ccp = lay["chip_channel_to_position"]
    if not isinstance(ccp, dict) or not ccp:
        raise CardError(f"{lname}: key 'chip_channel_to_position' must be a non-empty mapping")
    try:
        ix = [int(v[0]) for v in ccp.values()]
        iy = [int(v[1]) for v in ccp.values()]
    except (TypeError, ValueError, IndexError) as exc:
        raise CardError(f"{lname}: key 'chip_channel_to_position' values must be [ix, iy]") from exc
    nx_tile, ny_tile = len(set(ix)), len(set(iy))
    half = ((max(ix) + 1) * pitch / 2, (max(iy) + 1) * pitch / 2)
    t_pos, t_or, t_idx = lay["tile_positions"], lay["tile_orientations"], lay["tile_indeces"]
    anodes: dict[Any, list] = {}
    for tile, idx in t_idx.items():
        if tile not in t_pos or tile not in t_or:
            raise CardError(f"{lname}: tile {tile} of 'tile_indeces' lacks 'tile_positions' or "
                            f"'tile_orientations'")
        a = idx[0] if isinstance(idx, list | tuple) and idx else idx
        anodes.setdefault(a, []).append(tile)
    if "tile_map" in det:
        tm = det["tile_map"]
        try:
            ntx, nty = len(tm[0]), len(tm[0][0])
        except (TypeError, IndexError, KeyError) as exc:
            raise CardError(f"{dname}: key 'tile_map' must be [anode][tx][ty] tile ids") from exc
    else:
        ntx = nty = 0
    if "drift_length" in lay:
        drift = _number(lay, "drift_length", lname) / 10.0  # mm
    elif "drift_length" in det:
        drift = _number(det, "drift_length", dname)  # cm
    else:
        xs = [float(t_pos[t][0]) for t in t_pos]
        drift = 0.5 * (max(xs) - min(xs)) / 10.0
    if drift <= 0:
        raise CardError(f"{dname}: drift length must be > 0, got {drift} cm")
    offsets = det.get("tpc_offsets", [[0.0, 0.0, 0.0]])
    if not isinstance(offsets, list) or not offsets:
        raise CardError(f"{dname}: key 'tpc_offsets' must list [x, y, z] per module (cm)")
    tpcs = []
    for m, off in enumerate(offsets):
        ox, oy, oz = _vec3(off, f"tpc_offsets[{m}]", dname)
        ox, oz = oz, ox  # larnd-sim: "Inverting x and z axes" (edep-sim frame -> drift along z)
        for a, tiles in anodes.items():
            pos = [_vec3(t_pos[t], f"tile_positions[{t}]", lname) for t in tiles]
            dirs = {int(_vec3(t_or[t], f"tile_orientations[{t}]", lname)[0]) for t in tiles}
            if len(dirs) != 1 or dirs.pop() not in (1, -1):
                raise CardError(f"{lname}: tiles of anode {a} must share one cathode direction "
                                f"(+1 or -1) in 'tile_orientations'")
            cath_dir = int(_vec3(t_or[tiles[0]], "tile_orientations", lname)[0])
            tx = sorted({p[2] for p in pos})
            ty = sorted({p[1] for p in pos})
            n_tx, n_ty = (ntx, nty) if ntx else (len(tx), len(ty))
            anode = min(p[0] for p in pos) / 10.0 + oz
            x0 = min(tx) / 10.0 - half[0] + ox
            y0 = min(ty) / 10.0 - half[1] + oy
            tpcs.append({
                "anode_cm": round(anode, 6),
                "cathode_cm": round(anode + drift * cath_dir, 6),
                "x_cm": [round(x0, 6), round(x0 + n_tx * nx_tile * pitch, 6)],
                "y_cm": [round(y0, 6), round(y0 + n_ty * ny_tile * pitch, 6)],
            })
    return pitch, tpcs


def card_from_larndsim(
    detprop: dict, layout: dict, dname: str = "<detector properties>",
    lname: str = "<pixel layout>", name: str | None = None,
) -> DetectorCard:
    """Build and validate a card from parsed larnd-sim detector-properties and layout mappings.

    Units follow larnd-sim: lengths in the detector file in cm, in the layout in mm; times us;
    fields kV/cm; diffusion cm^2/us; charges e-; ``larpix_gain`` mV/e- (our card: mV/ke-).
    """
    d = {k: _number(detprop, k, dname, LARNDSIM_DEFAULTS[k]) for k in LARNDSIM_DEFAULTS}
    pitch, tpcs = _geometry(detprop, dname, layout, lname)
    adc_counts = int(d["adc_counts"])
    bits = round(math.log2(adc_counts)) if adc_counts > 1 else 0
    if bits < 1 or 2**bits != adc_counts:
        raise CardError(f"{dname}: key 'adc_counts' must be a power of two, got {adc_counts}")
    defaulted = sorted(k for k in LARNDSIM_DEFAULTS if k not in detprop)

    def prior(pname: str, nominal: float, source: str) -> dict:
        lo, hi, unit = PRIOR_RANGES[pname]
        if not lo <= nominal <= hi:
            lo, hi = min(lo, 0.8 * nominal), max(hi, 1.2 * nominal)
        if pname == "A_B":
            hi = min(hi, 1.0)
        return {"nominal": nominal, "low": lo, "high": hi, "unit": unit, "source": source}

    raw = {
        "name": name or f"larndsim:{Path(dname).stem}",
        "description": (f"from larnd-sim files {dname} + {lname}; larnd-sim defaults used for "
                        f"{', '.join(defaulted) or 'no key'}"),
        "geometry": {"drift_axis": "z", "pixel_pitch_cm": pitch, "tpcs": tpcs},
        "physics": {"temperature_K": d["temperature"], "lar_density_g_cm3": _LAR_DENSITY,
                    "w_ion_MeV": _W_ION_MEV, "recombination": "birks", "box_alpha": _BOX_ALPHA,
                    "box_beta": _BOX_BETA},
        "electronics": {
            "tick_us": d["clock_cycle"], "threshold_e": d["discrimination_threshold"],
            "reset_noise_e": d["reset_noise_charge"],
            "uncorrelated_noise_e": d["uncorrelated_noise_charge"],
            "discriminator_noise_e": d["discriminator_noise"],
            "gain_mV_per_ke": d["larpix_gain"] * 1e3, "v_pedestal_mV": d["v_pedestal"],
            "v_cm_mV": d["v_cm"], "v_ref_mV": d["v_ref"], "adc_bits": bits,
            "hold_cycles": int(d["adc_hold_delay"]), "hold_extra_cycles": _HOLD_EXTRA,
            "busy_cycles": int(d["adc_busy_delay"]), "reset_cycles": int(d["reset_cycles"]),
            "max_hits_per_pixel": _MAX_HITS,
        },
        "parameters": {
            "A_B": prior("A_B", _BIRKS_AB, "larnd-sim consts/physics.py BIRKS_Ab"),
            "k_B": prior("k_B", _BIRKS_KB, "larnd-sim consts/physics.py BIRKS_kb"),
            "E": prior("E", d["e_field"], f"{dname} e_field"),
            "tau": prior("tau", d["lifetime"], f"{dname} lifetime"),
            "D_L": prior("D_L", d["long_diff"], f"{dname} long_diff"),
            "D_T": prior("D_T", d["tran_diff"], f"{dname} tran_diff"),
        },
    }
    return parse_card(raw, f"{dname} + {lname}")


def load_larndsim_card(
    detector_properties: str | Path, pixel_layout: str | Path | None
) -> DetectorCard:
    """Card from a larnd-sim detector-properties YAML and its pixel-layout YAML (paths)."""
    dname = str(detector_properties)
    if pixel_layout is None:
        raise CardError(
            f"{dname}: looks like a larnd-sim detector-properties file; give its pixel layout "
            f"too (--pixel-layout larndsim/pixel_layouts/multi_tile_layout-*.yaml, e.g. 2.3.16 "
            f"for module0.yaml), or use a shipped card (--detector module0, 2x2, ndlar)"
        )
    det = _read_yaml(detector_properties, "detector-properties YAML")
    lay = _read_yaml(pixel_layout, "pixel-layout YAML")
    if not is_larndsim_pixel_layout(lay):
        raise CardError(f"{pixel_layout}: not a larnd-sim pixel layout (no "
                        f"'chip_channel_to_position' / 'tile_positions' keys)")
    return card_from_larndsim(det, lay, dname, str(pixel_layout))
