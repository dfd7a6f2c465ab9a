"""ndlar_flow hits (:func:`read_flow_hits`)
----------------------------------------
``charge/calib_prompt_hits`` (h5flow layout ``.../data``, or a plain dataset): pixel centres
(x, y, z) cm are mapped to our pixel ids through the card geometry (flow x = drift), ``Q`` [ke] is
converted back to ADC with the card's electronics, and ``t_drift`` [ticks of 0.1 us, packet time
minus event t0] gives the trigger tick after subtracting the hold window.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np

from ..data import Hits
from ..detector import DetectorCard
from ..detector.geometry import (
    pixel_id,
    pixel_in_range,
    tpc_pixel_counts,
)
from .common import IOFormatError, _get_dataset, _open_read, _read_fields


def _flow_event_ids(f: h5py.File, dataset: str, n: int, fname: str) -> np.ndarray | None:
    """Event id of each hit from h5flow references, or None when the file has none."""
    for parent in ("charge/events", "charge/raw_events"):
        ref_path = f"{parent}/ref/{dataset}/ref"
        if ref_path in f:
            ref = np.asarray(f[ref_path][:])
            if ref.ndim != 2 or ref.shape[1] != 2:
                raise IOFormatError(f"{fname}: dataset '{ref_path}' must have shape (L, 2)")
            parent_idx, hit_idx = ref[:, 0].astype(np.int64), ref[:, 1].astype(np.int64)
            ids = parent_idx
            pdata = f"{parent}/data"
            if pdata in f and f[pdata].dtype.names and "id" in f[pdata].dtype.names:
                ids = np.asarray(f[pdata].fields(["id"])[:]["id"]).astype(np.int64)[parent_idx]
            out = np.full(n, -1, np.int64)
            if hit_idx.size and (hit_idx.min() < 0 or hit_idx.max() >= n):
                raise IOFormatError(f"{fname}: dataset '{ref_path}' points outside '{dataset}'")
            out[hit_idx] = ids
            return out
    return None


def read_flow_hits(
    path: str | Path,
    card: DetectorCard,
    *,
    dataset: str = "charge/calib_prompt_hits",
    flow_drift_axis: str = "x",
    flow_tick_us: float = 0.1,
    subtract_hold: bool = True,
    max_offset_pitch: float = 0.25,
) -> Hits:
    """Read ndlar_flow ``charge/calib_prompt_hits`` as :class:`Hits` of ``card``.

    Fields used (shared/references/larnd-sim.md section 3.4): ``x, y, z`` [cm] pixel centre and
    drift coordinate, ``t_drift`` [ticks of ``flow_tick_us``, packet time minus event t0], ``Q``
    [ke].

    * Position: the flow frame has the drift along ``flow_drift_axis`` (x in ndlar_flow, as
      edep-sim); it is swapped with the card's drift axis (x <-> z for our larnd-sim-frame cards).
      The in-plane coordinates give the pixel; the TPC is the one whose pixel plane contains the hit
      and whose drift interval is nearest the hit's drift coordinate. A hit farther than
      ``max_offset_pitch`` pitches from a pixel centre, or outside every pixel plane, raises
      IOFormatError (geometry mismatch).
    * ADC: Q [ke] -> dataword = (Q G - V_cm + V_ped) 2^bits / (V_ref - V_cm), the inverse of
      ndlar_flow's ``charge_from_dataword`` with the card's electronics, rounded and clipped to
      0..2^bits-1 (a warning is issued when the values are far from integers, i.e. when flow used
      different electronics constants).
    * tick = round(t_drift flow_tick_us / tick_us) - hold_ticks (``subtract_hold``), since the
      packet time is the end of the hold window.
    * Events: from the h5flow references ``charge/events/ref/<dataset>/ref`` (event ``id`` field
      when present, else the event row); hits without an event are dropped with a warning; without
      references all hits are event 0.
    """
    fname = str(path)
    where = f"{fname}:{dataset}"
    if flow_drift_axis not in ("x", "y", "z"):
        raise ValueError(f"flow_drift_axis must be x, y or z, got {flow_drift_axis!r}")
    with _open_read(path) as f:
        ds = _get_dataset(f, dataset, fname)
        cols = _read_fields(
            ds, {k: ((k,), True, False) for k in ("x", "y", "z", "t_drift", "Q")}, where
        )
        n = int(ds.shape[0])
        ev = _flow_event_ids(f, dataset, n, fname)
    g = card.geometry
    el = card.electronics
    xyz = np.stack([np.asarray(cols[c], np.float64) for c in "xyz"], axis=-1).reshape(n, 3)
    perm = [0, 1, 2]
    a, b = "xyz".index(flow_drift_axis), g.drift_axis
    perm[a], perm[b] = perm[b], perm[a]
    xyz = xyz[:, perm]
    u, v, d = xyz[:, g.plane_axes[0]], xyz[:, g.plane_axes[1]], xyz[:, g.drift_axis]

    # TPC: pixel plane contains (u, v); nearest drift interval
    best = np.full(n, -1, np.int64)
    best_dist = np.full(n, np.inf)
    tol = 1e-6
    for i, t in enumerate(g.tpcs):
        inside = ((u >= t.plane_min_cm[0] - tol) & (u <= t.plane_max_cm[0] + tol)
                  & (v >= t.plane_min_cm[1] - tol) & (v <= t.plane_max_cm[1] + tol))
        lo, hi = min(t.anode_cm, t.cathode_cm), max(t.anode_cm, t.cathode_cm)
        dist = np.maximum(np.maximum(lo - d, d - hi), 0.0)
        better = inside & (dist < best_dist)
        best = np.where(better, i, best)
        best_dist = np.where(better, dist, best_dist)
    if np.any(best < 0):
        k = int(np.flatnonzero(best < 0)[0])
        raise IOFormatError(
            f"{where}: hit {k} at ({xyz[k, 0]:.3f}, {xyz[k, 1]:.3f}, {xyz[k, 2]:.3f}) cm "
            f"(card frame) lies outside every pixel plane of card {card.name!r} "
            "(fields 'x', 'y', 'z')"
        )
    umin = np.array([t.plane_min_cm[0] for t in g.tpcs])[best]
    vmin = np.array([t.plane_min_cm[1] for t in g.tpcs])[best]
    p = g.pixel_pitch_cm
    fu, fv = (u - umin) / p, (v - vmin) / p
    ix = np.floor(fu).astype(np.int64)
    iy = np.floor(fv).astype(np.int64)
    counts = tpc_pixel_counts(card)[best]
    ix = np.clip(ix, 0, counts[:, 0] - 1)  # a centre exactly on the far edge (tolerance) stays in
    iy = np.clip(iy, 0, counts[:, 1] - 1)
    off = np.maximum(np.abs(fu - ix - 0.5), np.abs(fv - iy - 0.5))
    if n and off.max() > max_offset_pitch:
        k = int(np.argmax(off))
        raise IOFormatError(
            f"{where}: hit {k} is {off[k]:.2f} pitches from the nearest pixel centre of card "
            f"{card.name!r} (fields 'x', 'y', 'z'); the flow geometry does not match the card"
        )
    assert np.all(pixel_in_range(card, best, ix, iy))
    pid = pixel_id(card, best, ix, iy)

    dw = ((np.asarray(cols["Q"], np.float64) * el.gain_mV_per_ke - el.v_cm_mV + el.v_pedestal_mV)
          * el.adc_counts / (el.v_ref_mV - el.v_cm_mV))
    if n and np.median(np.abs(dw - np.round(dw))) > 0.05:
        warnings.warn(
            f"{where}: ADC codes reconstructed from 'Q' with the electronics of card {card.name!r} "
            "are not integers; flow may have used other V_ref/V_cm/V_ped/gain", stacklevel=2
        )
    adc = np.clip(np.round(dw), 0, el.adc_counts - 1).astype(np.int64)
    t_drift = np.asarray(cols["t_drift"], np.float64)
    tick = np.round(t_drift * flow_tick_us / el.tick_us).astype(np.int64)
    if subtract_hold:
        tick = tick - el.hold_ticks
    if ev is None:
        ev = np.zeros(n, np.int64)
    keep = ev >= 0
    if not np.all(keep):
        warnings.warn(f"{where}: dropping {int((~keep).sum())} hit(s) not referenced by any event",
                      stacklevel=2)
    return Hits(ev[keep], pid[keep], tick[keep], adc[keep]).sorted()
