"""Reconstruction versus generator truth: per-track direction and end-point residuals, and the
selection's efficiency and purity (used by tests/test_reco.py and docs/reconstruction.md)."""

from __future__ import annotations

import numpy as np

from ..data import Segments
from ..detector import DetectorCard
from ..detector.geometry import drift_distance, tpc_of_points
from .pipeline import RecoResult


def true_pieces(card: DetectorCard, segments: Segments) -> list[dict]:
    """Per (event, track, TPC): true ends in the local frame (u, v, d) and the chord direction."""
    g = card.geometry
    mid = 0.5 * (segments.start + segments.end)
    tpc = tpc_of_points(card, mid, margin_cm=0.05)
    out = []
    key = np.stack([segments.event_id, segments.track_id, tpc], 1)
    for k in np.unique(key, axis=0):
        m = np.nonzero((key == k).all(1))[0]
        if k[2] < 0:
            continue
        t = int(k[2])

        def loc(x, t=t):
            return np.stack([x[:, g.plane_axes[0]], x[:, g.plane_axes[1]],
                             drift_distance(card, np.full(len(x), t), x)], 1)

        a, b = loc(segments.start[m[:1]])[0], loc(segments.end[m[-1:]])[0]
        out.append({"event": int(k[0]), "track": int(k[1]), "tpc": t, "a": a, "b": b,
                    "length": float(segments.dx[m].sum()), "pdg": int(segments.pdg_id[m[0]])})
    return out


def match_tracks(card: DetectorCard, segments: Segments, res: RecoResult) -> list[dict]:
    """Match every reconstructed track to the true piece (same event and TPC) whose ends are
    nearest; residuals: direction angle (deg), end distances (cm, ends paired to minimise)."""
    truth = true_pieces(card, segments)
    rows = []
    for i, tr in enumerate(res.tracks):
        cands = [p for p in truth if p["event"] == tr.event and p["tpc"] == tr.tpc]
        if not cands:
            rows.append({"reco": i, "truth": None})
            continue
        ra, rb = tr.vertices[0], tr.vertices[-1]
        best = None
        for p in cands:
            d1 = np.linalg.norm(ra - p["a"]) + np.linalg.norm(rb - p["b"])
            d2 = np.linalg.norm(ra - p["b"]) + np.linalg.norm(rb - p["a"])
            cost, flip = (d1, False) if d1 <= d2 else (d2, True)
            if best is None or cost < best[0]:
                best = (cost, p, flip)
        _, p, flip = best
        ta, tb = (p["b"], p["a"]) if flip else (p["a"], p["b"])
        dt = (tb - ta) / max(np.linalg.norm(tb - ta), 1e-12)
        cosang = abs(float(dt @ tr.direction))
        rows.append({
            "reco": i, "truth": p, "angle_err_deg": float(np.degrees(np.arccos(min(cosang, 1.0)))),
            "end_err_cm": (float(np.linalg.norm(ra - ta)), float(np.linalg.norm(rb - tb))),
            "end_vec_cm": (ra - ta, rb - tb),
            "length_true": p["length"], "length_reco": tr.length, "selected": tr.selected,
            "stopping": tr.stopping, "angle_deg": tr.angle_deg,
        })
    return rows
