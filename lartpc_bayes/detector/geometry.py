"""Pixel geometry on the host: TPC assignment, pixel indices, global pixel ids, pixel centres.

Global pixel id: ``id = offset[tpc] + ix + nx[tpc] * iy`` with ``offset`` the running sum of
``nx * ny`` over the TPCs of the card, (ix, iy) the pixel indices along the two in-plane axes,
counted from the TPC's ``plane_min_cm`` corner. A pixel centre is ``plane_min + (i + 1/2) * pitch``
(larnd-sim ``pixel2id`` convention up to the per-TPC offset).
"""

from __future__ import annotations

import numpy as np

from .card import DetectorCard


def tpc_pixel_counts(card: DetectorCard) -> np.ndarray:
    """(n_tpc, 2) pixel counts along the two in-plane axes."""
    return np.array(
        [card.geometry.n_pixels(i) for i in range(len(card.geometry.tpcs))], dtype=np.int64
    )


def tpc_id_offsets(card: DetectorCard) -> np.ndarray:
    """(n_tpc + 1,) first global pixel id of each TPC (last entry = total number of pixels)."""
    n = tpc_pixel_counts(card)
    return np.concatenate([[0], np.cumsum(n[:, 0] * n[:, 1])]).astype(np.int64)


def length_inside(card: DetectorCard, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Length (cm) of each straight segment that lies inside the card's drift volumes.

    start, end : (N, 3) cm. Each TPC is the box between its anode and cathode on the drift axis and
    inside its pixel plane (the volume of :func:`tpc_of_points`); the segment
    ``p(s) = start + s (end - start)``, s in [0, 1], is clipped to every box (slab method:
    s in [max_k s_lo_k, min_k s_hi_k] over the three axes) and the clipped lengths are summed (the
    boxes of a card do not overlap). Zero-length segments have length 0.
    """
    g = card.geometry
    a = np.asarray(start, np.float64).reshape(-1, 3)
    d = np.asarray(end, np.float64).reshape(-1, 3) - a
    length = np.linalg.norm(d, axis=1)
    total = np.zeros(a.shape[0])
    for t in g.tpcs:
        lo = np.zeros(3)
        hi = np.zeros(3)
        lo[g.drift_axis] = min(t.anode_cm, t.cathode_cm)
        hi[g.drift_axis] = max(t.anode_cm, t.cathode_cm)
        for k, ax in enumerate(g.plane_axes):
            lo[ax], hi[ax] = t.plane_min_cm[k], t.plane_max_cm[k]
        s0 = np.zeros(a.shape[0])
        s1 = np.ones(a.shape[0])
        for ax in range(3):
            moving = d[:, ax] != 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ta = (lo[ax] - a[:, ax]) / d[:, ax]
                tb = (hi[ax] - a[:, ax]) / d[:, ax]
            inside_slab = (a[:, ax] >= lo[ax]) & (a[:, ax] <= hi[ax])
            s0 = np.where(moving, np.maximum(s0, np.minimum(ta, tb)), np.where(inside_slab, s0, 1))
            s1 = np.where(moving, np.minimum(s1, np.maximum(ta, tb)), np.where(inside_slab, s1, 0))
        total += np.clip(s1 - s0, 0.0, None) * length
    return total


def tpc_of_points(card: DetectorCard, xyz: np.ndarray, margin_cm: float = 0.0) -> np.ndarray:
    """Index of the TPC containing each point (-1 outside every drift volume).

    xyz : (..., 3) cm. A point belongs to a TPC if it lies between its anode and cathode on the
    drift axis and inside its pixel plane (both widened by ``margin_cm``).
    """
    g = card.geometry
    xyz = np.asarray(xyz, dtype=np.float64)
    d = xyz[..., g.drift_axis]
    u = xyz[..., g.plane_axes[0]]
    v = xyz[..., g.plane_axes[1]]
    out = np.full(d.shape, -1, dtype=np.int64)
    for i, t in enumerate(g.tpcs):
        lo, hi = min(t.anode_cm, t.cathode_cm), max(t.anode_cm, t.cathode_cm)
        inside = (
            (d >= lo - margin_cm)
            & (d <= hi + margin_cm)
            & (u >= t.plane_min_cm[0] - margin_cm)
            & (u <= t.plane_max_cm[0] + margin_cm)
            & (v >= t.plane_min_cm[1] - margin_cm)
            & (v <= t.plane_max_cm[1] + margin_cm)
            & (out < 0)
        )
        out = np.where(inside, i, out)
    return out


def drift_distance(card: DetectorCard, tpc: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Distance from each point to its TPC's anode plane along the drift axis, cm (>= 0 inside)."""
    g = card.geometry
    anode = np.array([t.anode_cm for t in g.tpcs])[tpc]
    sign = np.array([t.drift_sign for t in g.tpcs])[tpc]
    return sign * (anode - np.asarray(xyz)[..., g.drift_axis])


def pixel_indices(card: DetectorCard, tpc: np.ndarray, u: np.ndarray, v: np.ndarray):
    """Integer pixel indices (ix, iy) of in-plane positions (u, v) cm in TPC ``tpc``.

    Indices are not clipped: callers must check :func:`pixel_in_range`.
    """
    g = card.geometry
    umin = np.array([t.plane_min_cm[0] for t in g.tpcs])[tpc]
    vmin = np.array([t.plane_min_cm[1] for t in g.tpcs])[tpc]
    ix = np.floor((np.asarray(u) - umin) / g.pixel_pitch_cm).astype(np.int64)
    iy = np.floor((np.asarray(v) - vmin) / g.pixel_pitch_cm).astype(np.int64)
    return ix, iy


def pixel_in_range(
    card: DetectorCard, tpc: np.ndarray, ix: np.ndarray, iy: np.ndarray
) -> np.ndarray:
    n = tpc_pixel_counts(card)[tpc]
    return (ix >= 0) & (iy >= 0) & (ix < n[..., 0]) & (iy < n[..., 1])


def pixel_id(card: DetectorCard, tpc: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Global pixel id of (tpc, ix, iy); the indices must be in range."""
    n = tpc_pixel_counts(card)
    off = tpc_id_offsets(card)
    tpc = np.asarray(tpc, dtype=np.int64)
    return off[tpc] + np.asarray(ix, dtype=np.int64) + n[tpc, 0] * np.asarray(iy, dtype=np.int64)


def pixel_from_id(card: DetectorCard, pid: np.ndarray):
    """Inverse of :func:`pixel_id`: (tpc, ix, iy). Raises ValueError for ids out of range."""
    pid = np.asarray(pid, dtype=np.int64)
    off = tpc_id_offsets(card)
    if np.any(pid < 0) or np.any(pid >= off[-1]):
        raise ValueError(f"pixel id out of range [0, {off[-1]}) for card {card.name!r}")
    tpc = np.searchsorted(off, pid, side="right") - 1
    n = tpc_pixel_counts(card)
    local = pid - off[tpc]
    return tpc, local % n[tpc, 0], local // n[tpc, 0]


def pixel_center(card: DetectorCard, pid: np.ndarray) -> np.ndarray:
    """(..., 3) cm: pixel centre in the plane and the anode position on the drift axis."""
    g = card.geometry
    tpc, ix, iy = pixel_from_id(card, pid)
    umin = np.array([t.plane_min_cm[0] for t in g.tpcs])[tpc]
    vmin = np.array([t.plane_min_cm[1] for t in g.tpcs])[tpc]
    out = np.zeros((*np.shape(pid), 3))
    out[..., g.plane_axes[0]] = umin + (ix + 0.5) * g.pixel_pitch_cm
    out[..., g.plane_axes[1]] = vmin + (iy + 0.5) * g.pixel_pitch_cm
    out[..., g.drift_axis] = np.array([t.anode_cm for t in g.tpcs])[tpc]
    return out
