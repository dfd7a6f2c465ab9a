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


def plot_reco_vs_true(card: DetectorCard, segments: Segments, res: RecoResult, path,
                      max_tracks: int = 6, title: str = ""):
    """PNG of reconstructed against true tracks, one row per matched reconstructed track (at most
    ``max_tracks``, selected first): the hit points and the reco polyline over the true chord, in
    the pixel plane (u, v) and in (u, nominal drift distance d), cm, local frame of the track's
    TPC. The title of each row gives the direction error (deg) and the two end errors (cm)."""
    from ..results.plots import _save, _style, plt

    rows = [r for r in match_tracks(card, segments, res) if r["truth"] is not None]
    rows.sort(key=lambda r: (not r["selected"], -r["length_true"]))
    rows = rows[:max_tracks]
    if not rows:
        raise ValueError("plot_reco_vs_true: no reconstructed track matches a true one")
    with _style():
        fig, axs = plt.subplots(len(rows), 2, figsize=(8.0, 2.6 * len(rows)), squeeze=False)
        for ax2, r in zip(axs, rows, strict=True):
            tr = res.tracks[r["reco"]]
            a, b = r["truth"]["a"], r["truth"]["b"]
            for ax, (i, j, lab) in zip(ax2, ((0, 1, "v"), (0, 2, "d (nominal drift)")),
                                       strict=True):
                pts = np.stack([tr.points.u, tr.points.v, tr.d], 1)
                ax.scatter(pts[:, i], pts[:, j], s=4, c="0.6", label="hit points")
                ax.plot([a[i], b[i]], [a[j], b[j]], "-", color="#d62728", lw=2.5, alpha=0.6,
                        label="true")
                ax.plot(tr.vertices[:, i], tr.vertices[:, j], "--o", color="#1f77b4", ms=3,
                        lw=1.2, label="reco")
                ax.set_xlabel("u [cm]")
                ax.set_ylabel(f"{lab} [cm]")
            e1, e2 = r["end_err_cm"]
            ax2[0].set_title(f"event {tr.event} TPC {tr.tpc}: {r['length_true']:.1f} cm, "
                             f"{'selected' if r['selected'] else 'not selected'}"
                             f"{', stopping' if r['stopping'] else ''}", fontsize=8)
            ax2[1].set_title(f"angle err {r['angle_err_deg']:.2f} deg, ends {e1:.2f} / {e2:.2f} cm",
                             fontsize=8)
        axs[0, 0].legend(fontsize=7, loc="best")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return _save(fig, path)
