r"""Points -> tracks: DBSCAN clusters, robust line fits, ends, selection, stopping tag, segments.

Frame. Every fit works in a TPC's local frame ``x = (u, v, d)``: the two in-plane coordinates and
the *nominal* drift distance ``d = v_nom t_drift`` (cm from the anode, v_nom = v_d(E_nom)). Tracks
stay defined by their drift *times* (``t = d / v_nom``); the model converts them back with the
sampled E (:mod:`lartpc_bayes.reco.geometry`).

Line fit (:func:`fit_line`). Charge-weighted total least squares with iterative Huber
reweighting: with weights ``w_i`` (pixel charge clipped at 3x the median, so delta rays and the
Bragg peak do not dominate) the line through the weighted centroid ``c`` along the leading
eigenvector ``n`` of the weighted scatter matrix minimises ``sum_i w_i |r_i|^2``, ``r_i`` the
perpendicular residual. Each iteration multiplies the weights by ``min(1, k s / |r_i|)``
(k = 1.5, s = 1.4826 median |r_i|, floored at pitch/sqrt(12)/2; the threshold k s is at least
one pitch so that the charge-sharing neighbours keep their weight); the second half of the
iterations also trims points farther than max(3 s, 2 pitch) (delta rays). Covariances, with N_eff =
(sum w)^2 / sum w^2 and ``P = I - n n^T``:

.. math:: \mathrm{Cov}(c_\perp) = \frac{s^2}{N_{eff}} P,\qquad
          \mathrm{Cov}(n) = \frac{s^2}{\sum_i \tilde w_i s_i^2} P,

``s_i`` the projection of point i on the line and ``w~`` the weights normalised to sum N_eff.

Pixel points (:func:`refine_points`). A pixel's first crossing happens when the charge of the
track stretch above it, arriving first from the stretch's anode-near end, reaches the threshold
(``delta = Q_thr / (dQ/ds)`` of track); the pixel's point is placed at the pixel centre in the
plane and at the drift distance of the *middle* of the line's chord through the pixel,
``d = v_nom t_first - delta |n_d| + |n_d| l_chord / 2``. Two fit/refine passes.

Ends (:func:`track_ends`). The track ends inside the chord of the last pixel hit (plane
information) and, along the drift, between the last crossing of that pixel and the end of its
dead time (late end) or a threshold-charge before its first crossing (early end); the end is the
middle of the intersection of the two intervals (or of the narrower one when they do not meet).

Piecewise-linear. When the robust residuals of one line exceed ``kink_tol_cm`` (multiple
scattering), the points are split where they are farthest from the line and each part refitted
(Douglas-Peucker), up to ``max_pieces`` pieces.

Stopping tag. An end is a stopping candidate when it lies more than ``fiducial_cm`` inside the
TPC (pixel-plane edges, anode and cathode) and away from the selection's drift-window edges (data
already cut to the window end there), and the mean charge per cm in its last 1.5 cm exceeds
``bragg_ratio`` (1.4) times that of the other end's 1.5 cm and 1.1 times the track's median (the
Bragg rise). A stopping track's segments are ordered
towards its stopping end (the model's residual-range convention).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..data import Segments
from ..detector import DetectorCard
from ..forward.generator import SelectionCuts
from .points import Points, drift_to_position, nominal_drift_velocity

#: MIP dE/dx placeholder of reconstructed through-going segments, MeV/cm (dE/dx stays latent; the
#: value only sizes the charge plan's pruning, see ``plan_charge(min_charge_e=...)``)
MIP_DEDX_PLACEHOLDER = 2.1


@dataclass(frozen=True)
class RecoConfig:
    """Reconstruction knobs (lengths in cm).

    eps_cm, min_samples : DBSCAN on hits in (u, v, d_nominal).
    min_points : clusters with fewer pixel channels are dropped (noise).
    kink_tol_cm, max_pieces, min_piece_points : piecewise-linear splitting.
    fiducial_cm : distance of a stopping end from every TPC boundary and drift-window edge.
    bragg_ratio : charge per cm of the last ``bragg_length_cm`` over that of the other end.
    segment_length_cm : target segment length (None: the pixel pitch).
    sys_transverse_cm, sys_drift_cm : systematic floors added in quadrature to the fit's offset
        covariance (pixel quantisation and threshold timing; docs/reconstruction.md).
    """

    eps_cm: float = 1.5
    min_samples: int = 3
    min_points: int = 5
    kink_tol_cm: float = 0.6
    max_pieces: int = 4
    min_piece_points: int = 10
    huber_k: float = 1.5
    n_iter: int = 6
    fiducial_cm: float = 1.5
    bragg_ratio: float = 1.4
    bragg_length_cm: float = 1.5
    segment_length_cm: float | None = None
    sys_transverse_cm: float = 0.05
    sys_drift_cm: float = 0.05


@dataclass
class LineFit:
    """One straight piece: centroid c (3,), unit direction n (3,), robust scale (cm), covariances
    (3, 3) of the centroid's perpendicular offset and of the direction, N_eff."""

    c: np.ndarray
    n: np.ndarray
    scale: float
    cov_offset: np.ndarray
    cov_dir: np.ndarray
    n_eff: float


@dataclass
class RecoTrack:
    """A reconstructed track in one TPC (local frame (u, v, d_nominal), cm).

    vertices : (K+1, 3) polyline from the first to the last end (K straight pieces).
    length : cm. angle_deg : chord angle to the drift axis (0-90). stopping : Bragg-tagged.
    selected : passes the published selection. cov_offset / cov_dir : of the longest piece.
    """

    event: int
    tpc: int
    points: Points
    d: np.ndarray  # refined nominal drift distance of each point, cm
    pieces: list[LineFit]
    vertices: np.ndarray
    length: float
    angle_deg: float
    stopping: bool = False
    selected: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def direction(self) -> np.ndarray:
        ch = self.vertices[-1] - self.vertices[0]
        return ch / max(np.linalg.norm(ch), 1e-12)

    @property
    def cov_offset(self) -> np.ndarray:
        return max(self.pieces, key=lambda p: p.n_eff).cov_offset

    @property
    def cov_dir(self) -> np.ndarray:
        return max(self.pieces, key=lambda p: p.n_eff).cov_dir


# ------------------------------------------------------------------------------------------------
# line fits
# ------------------------------------------------------------------------------------------------
def fit_line(x: np.ndarray, w: np.ndarray, pitch: float, huber_k: float = 1.5,
             n_iter: int = 6) -> tuple[LineFit, np.ndarray]:
    """Robust charge-weighted TLS line (module docstring). Returns (fit, final weights)."""
    x = np.asarray(x, np.float64)
    w0 = np.clip(np.asarray(w, np.float64), 1e-9, None)
    w0 = np.minimum(w0, 3.0 * np.median(w0))
    w_eff = w0.copy()
    floor = pitch / np.sqrt(12.0) / 2
    s_rob = floor
    for it in range(max(n_iter, 1)):
        c = (w_eff[:, None] * x).sum(0) / w_eff.sum()
        y = x - c
        cov = (w_eff[:, None, None] * y[:, :, None] * y[:, None, :]).sum(0) / w_eff.sum()
        _, vecs = np.linalg.eigh(cov)
        n = vecs[:, -1]
        s = y @ n
        r = np.linalg.norm(y - s[:, None] * n, axis=1)
        s_rob = max(1.4826 * float(np.median(r)), floor)
        # pixels up to a pitch off the line carry the charge sharing that locates it: never
        # down-weight them (the Huber threshold is at least one pitch)
        w_eff = w0 * np.minimum(1.0, max(huber_k * s_rob, pitch) / np.maximum(r, 1e-12))
        if it >= n_iter // 2:  # then trimmed: points beyond max(3 s, 2 pitch) are dropped
            w_eff = np.where(r > max(3.0 * s_rob, 2.0 * pitch), 0.0, w_eff)
            if w_eff.sum() <= 0:
                w_eff = w0.copy()
    # orient along increasing drift distance (then by u) for a reproducible convention
    if n[2] < -1e-9 or (abs(n[2]) <= 1e-9 and n[0] < 0):
        n = -n
    n_eff = float(w_eff.sum() ** 2 / (w_eff**2).sum())
    wn = w_eff / w_eff.sum() * n_eff
    s = (x - c) @ n
    P = np.eye(3) - np.outer(n, n)
    cov_off = s_rob**2 / n_eff * P
    cov_dir = s_rob**2 / max(float((wn * s**2).sum()), 1e-12) * P
    return LineFit(c, n, s_rob, cov_off, cov_dir, n_eff), w_eff


def _chords(pts_u: np.ndarray, pts_v: np.ndarray, c: np.ndarray, n: np.ndarray, pitch: float):
    """Line-parameter interval [s_in, s_out] of the line c + s n over each pixel square (centre
    (u, v), side ``pitch``); empty chords get s_in = s_out = nearest approach."""
    lo = np.full(pts_u.shape, -np.inf)
    hi = np.full(pts_u.shape, np.inf)
    for k, cen in ((0, pts_u), (1, pts_v)):
        if abs(n[k]) > 1e-9:
            a = (cen - pitch / 2 - c[k]) / n[k]
            b = (cen + pitch / 2 - c[k]) / n[k]
            lo = np.maximum(lo, np.minimum(a, b))
            hi = np.minimum(hi, np.maximum(a, b))
        else:
            outside = np.abs(cen - c[k]) > pitch / 2
            lo = np.where(outside, np.nan, lo)
    nxy = max(n[0] ** 2 + n[1] ** 2, 1e-12)
    s_near = ((pts_u - c[0]) * n[0] + (pts_v - c[1]) * n[1]) / nxy
    empty = ~(lo < hi) | ~np.isfinite(lo) | ~np.isfinite(hi)
    lo = np.where(empty, s_near, lo)
    hi = np.where(empty, s_near, hi)
    return lo, hi


def refine_points(pts: Points, fit: LineFit, card: DetectorCard) -> np.ndarray:
    """Nominal drift distance of each pixel point at the middle of its chord (module docstring)."""
    v = nominal_drift_velocity(card)
    p = card.geometry.pixel_pitch_cm
    s_in, s_out = _chords(pts.u, pts.v, fit.c, fit.n, p)
    chord = s_out - s_in
    dqds = pts.charge / np.maximum(chord, 0.05)
    delta = np.minimum(card.electronics.threshold_e / np.maximum(dqds, 1e4), chord)
    nd = abs(fit.n[2])
    return v * pts.t_first - delta * nd + 0.5 * chord * nd


def _fit_piecewise(x, w, pitch, cfg: RecoConfig, depth: int = 0
                   ) -> list[tuple[LineFit, np.ndarray]]:
    fit, _ = fit_line(x, w, pitch, cfg.huber_k, cfg.n_iter)
    s = (x - fit.c) @ fit.n
    r = np.linalg.norm((x - fit.c) - s[:, None] * fit.n, axis=1)
    order = np.argsort(s)
    # distance of a running median (5 points) from the line: robust against single outliers
    if x.shape[0] >= 2 * cfg.min_piece_points and depth < int(np.log2(cfg.max_pieces)) + 0:
        k = 5
        rm = np.array([np.median(r[order[max(0, i - k // 2): i + k // 2 + 1]])
                       for i in range(order.size)])
        i_max = int(np.argmax(rm))
        if (rm[i_max] > cfg.kink_tol_cm and cfg.min_piece_points <= i_max
                <= order.size - cfg.min_piece_points):
            left, right = order[: i_max + 1], order[i_max:]
            return (_fit_piecewise(x[left], w[left], pitch, cfg, depth + 1)
                    + _fit_piecewise(x[right], w[right], pitch, cfg, depth + 1))
    return [(fit, s)]


def track_ends(pts: Points, d: np.ndarray, fit: LineFit, card: DetectorCard
               ) -> tuple[float, float]:
    """Line parameters (s_lo, s_hi) of the two ends (module docstring)."""
    p = card.geometry.pixel_pitch_cm
    el = card.electronics
    v = nominal_drift_velocity(card)
    x = np.stack([pts.u, pts.v, d], 1)
    s = (x - fit.c) @ fit.n
    s_in, s_out = _chords(pts.u, pts.v, fit.c, fit.n, p)
    chord = s_out - s_in
    dqds = pts.charge / np.maximum(chord, 0.05)
    delta = np.minimum(el.threshold_e / np.maximum(dqds, 1e4), np.maximum(chord, 0.0))
    nd = fit.n[2]  # >= 0 by the orientation convention: s grows with drift time
    dead = (el.hold_ticks + el.dead_ticks) * el.tick_us
    out = []
    for side in (0, 1):
        i = int(np.argmin(s)) if side == 0 else int(np.argmax(s))
        if side == 0:
            plane = (s_in[i], s_in[i] + max(chord[i] - delta[i], 0.0))
        else:
            plane = (s_out[i] - max(chord[i] - delta[i], 0.0), s_out[i])
        if nd > 0.05:
            if side == 0:  # early end: a threshold charge before the first crossing
                t = pts.t_first[i]
                dd = (v * (t - 0.5 * el.tick_us) - delta[i] * nd, v * (t + 0.5 * el.tick_us)
                      - delta[i] * nd)
            else:  # late end: after the last crossing, before the end of its dead time
                t = pts.t_last[i]
                dd = (v * (t - 0.5 * el.tick_us), v * (t + dead) + delta[i] * nd)
            drift = ((dd[0] - fit.c[2]) / nd, (dd[1] - fit.c[2]) / nd)
        else:
            drift = (-np.inf, np.inf)
        lo, hi = max(plane[0], drift[0]), min(plane[1], drift[1])
        if lo <= hi:
            out.append(0.5 * (lo + hi))
        else:
            narrow = plane if (plane[1] - plane[0]) < (drift[1] - drift[0]) else drift
            out.append(0.5 * (narrow[0] + narrow[1]))
    return out[0], out[1]


def fit_track(pts: Points, card: DetectorCard, cfg: RecoConfig, event: int, tpc: int
              ) -> RecoTrack:
    """Fit one cluster: two refine passes of the straight line, then piecewise pieces and ends."""
    p = card.geometry.pixel_pitch_cm
    v = nominal_drift_velocity(card)
    d = v * pts.t_first
    w = np.maximum(pts.charge, 1.0)
    for _ in range(2):
        fit, _ = fit_line(np.stack([pts.u, pts.v, d], 1), w, p, cfg.huber_k, cfg.n_iter)
        d = refine_points(pts, fit, card)
    x = np.stack([pts.u, pts.v, d], 1)
    fit, _ = fit_line(x, w, p, cfg.huber_k, cfg.n_iter)
    s_lo, s_hi = track_ends(pts, d, fit, card)
    parts = _fit_piecewise(x, w, p, cfg) if cfg.max_pieces > 1 else [(fit, None)]
    if len(parts) == 1:
        pieces = [fit]
        verts = np.stack([fit.c + s_lo * fit.n, fit.c + s_hi * fit.n])
    else:
        # order the pieces along the global line; joints where consecutive pieces meet
        keyed = sorted(parts, key=lambda pr: float((pr[0].c - fit.c) @ fit.n))
        pieces = [pr[0] for pr in keyed]
        for pc in pieces:  # orient every piece along the global direction
            if pc.n @ fit.n < 0:
                pc.n = -pc.n
        verts = [fit.c + s_lo * fit.n]
        # project the global ends onto the first/last piece lines
        verts[0] = pieces[0].c + ((verts[0] - pieces[0].c) @ pieces[0].n) * pieces[0].n
        for a, b in itertools.pairwise(pieces):
            verts.append(_closest_midpoint(a, b))
        end = fit.c + s_hi * fit.n
        verts.append(pieces[-1].c + ((end - pieces[-1].c) @ pieces[-1].n) * pieces[-1].n)
        verts = np.stack(verts)
    length = float(np.linalg.norm(np.diff(verts, axis=0), axis=1).sum())
    ch = verts[-1] - verts[0]
    angle = float(np.degrees(np.arccos(min(abs(ch[2]) / max(np.linalg.norm(ch), 1e-12), 1.0))))
    return RecoTrack(event, tpc, pts, d, pieces, verts, length, angle)


def _closest_midpoint(a: LineFit, b: LineFit) -> np.ndarray:
    """Midpoint of the shortest segment between two lines (their centroid mean if parallel)."""
    w0 = a.c - b.c
    aa, bb, cc = a.n @ a.n, a.n @ b.n, b.n @ b.n
    dd, ee = a.n @ w0, b.n @ w0
    den = aa * cc - bb * bb
    if den < 1e-8:
        return 0.5 * (a.c + b.c)
    sa = (bb * ee - cc * dd) / den
    sb = (aa * ee - bb * dd) / den
    return 0.5 * (a.c + sa * a.n + b.c + sb * b.n)


# ------------------------------------------------------------------------------------------------
# selection, stopping tag, segments
# ------------------------------------------------------------------------------------------------
def _dqds_profile(tr: RecoTrack, card: DetectorCard) -> tuple[np.ndarray, np.ndarray]:
    """(s along the chord from the first vertex, charge per cm) of the pixel points."""
    p = card.geometry.pixel_pitch_cm
    fit = max(tr.pieces, key=lambda f: f.n_eff)
    s_in, s_out = _chords(tr.points.u, tr.points.v, fit.c, fit.n, p)
    chord = s_out - s_in
    ok = chord > 0.1
    x = np.stack([tr.points.u, tr.points.v, tr.d], 1)
    s = (x - tr.vertices[0]) @ tr.direction
    return s[ok], (tr.points.charge / np.maximum(chord, 1e-6))[ok]


def _end_inside(card: DetectorCard, tpc: int, x: np.ndarray, window: tuple[float, float] | None,
                margin: float) -> bool:
    t = card.geometry.tpcs[tpc]
    inside = (
        t.plane_min_cm[0] + margin <= x[0] <= t.plane_max_cm[0] - margin
        and t.plane_min_cm[1] + margin <= x[1] <= t.plane_max_cm[1] - margin
        and margin <= x[2] <= t.drift_length_cm - margin
    )
    if window is not None:
        inside = inside and (window[0] + margin <= x[2] <= window[1] - margin)
    return bool(inside)


def tag_stopping(tr: RecoTrack, card: DetectorCard, cfg: RecoConfig,
                 cuts: SelectionCuts | None) -> RecoTrack:
    """Set ``tr.stopping`` and orient the polyline so that a stopping end comes last."""
    window = cuts.window_cm(card.geometry.tpcs[tr.tpc].drift_length_cm) if cuts else None
    s, q = _dqds_profile(tr, card)
    if s.size < 6 or tr.length < 2 * cfg.bragg_length_cm:
        return tr
    med = float(np.median(q))
    ends = [s <= cfg.bragg_length_cm, s >= tr.length - cfg.bragg_length_cm]
    if min(e.sum() for e in ends) < 2:
        return tr
    mean_q = [float(np.mean(q[e])) for e in ends]
    best, best_ratio = None, cfg.bragg_ratio
    for end in (0, 1):
        # Bragg rise: this end against the other end, and above the track's median
        ratio = mean_q[end] / mean_q[1 - end] if mean_q[end] > 1.1 * med else 0.0
        x_end = tr.vertices[0] if end == 0 else tr.vertices[-1]
        if ratio > best_ratio and _end_inside(card, tr.tpc, x_end, window, cfg.fiducial_cm):
            best, best_ratio = end, ratio
    if best is not None:
        tr.stopping = True
        if best == 0:
            tr.vertices = tr.vertices[::-1].copy()
            tr.pieces = tr.pieces[::-1]
    return tr


def apply_selection(tr: RecoTrack, cuts: SelectionCuts) -> RecoTrack:
    """Track-level published cuts: length > 2 cm (``max(2, min_track_length_cm)``), angle to the
    drift axis > ``min_angle_to_drift_deg``; the drift window is applied per segment."""
    tr.reasons = []
    if tr.length <= max(2.0, cuts.min_track_length_cm):
        tr.reasons.append("length")
    if tr.angle_deg <= cuts.min_angle_to_drift_deg:
        tr.reasons.append("angle")
    tr.selected = not tr.reasons
    return tr


@dataclass
class RecoSegments:
    """Reconstructed segments and their host-side geometry.

    segments : :class:`Segments` in the card frame at the nominal drift velocity (dE placeholder:
        MIP x dx, or the residual-range CSDA loss for stopping tracks; pdg 2212 for stopping
        tracks, 13 otherwise).
    t_drift : (N, 2) drift time of start / end, us (the measured quantity).
    tpc : (N,) TPC. track : (N,) index into ``tracks``.
    tracks : the reconstructed tracks (all, selected or not).
    """

    segments: Segments
    t_drift: np.ndarray
    tpc: np.ndarray
    track: np.ndarray
    tracks: list[RecoTrack]


def track_segments(tr: RecoTrack, card: DetectorCard, cuts: SelectionCuts | None,
                   seg_len: float, track_id: int):
    """Chop the polyline into pieces of about ``seg_len``; keep those with both ends in the
    drift window (and longer than ``cuts.min_dx_cm``). Returns (start, end, dE, pdg) arrays in the
    local frame (u, v, d)."""
    from ..forward.energy_loss import PROTON_MASS_MEV, kinetic_energy_from_residual_range

    starts, ends = [], []
    for a, b in itertools.pairwise(tr.vertices):
        L = float(np.linalg.norm(b - a))
        k = max(1, round(L / seg_len))
        f = np.linspace(0, 1, k + 1)
        pts = a + f[:, None] * (b - a)
        starts.append(pts[:-1])
        ends.append(pts[1:])
    st, en = np.concatenate(starts), np.concatenate(ends)
    dx = np.linalg.norm(en - st, axis=1)
    if tr.stopping:
        after = np.cumsum(dx[::-1])[::-1] - dx
        rho = card.physics.lar_density_g_cm3
        t_far = np.asarray(kinetic_energy_from_residual_range(after + dx, PROTON_MASS_MEV, rho))
        t_near = np.asarray(kinetic_energy_from_residual_range(after, PROTON_MASS_MEV, rho))
        dE = np.maximum(t_far - t_near, 1e-6)
        pdg = 2212
    else:
        dE = MIP_DEDX_PLACEHOLDER * dx
        pdg = 13
    keep = dx > (cuts.min_dx_cm if cuts else 0.0)
    if cuts is not None:
        lo, hi = cuts.window_cm(card.geometry.tpcs[tr.tpc].drift_length_cm)
        keep &= (st[:, 2] >= lo) & (st[:, 2] <= hi) & (en[:, 2] >= lo) & (en[:, 2] <= hi)
    return st[keep], en[keep], dE[keep], pdg


def local_to_card(card: DetectorCard, tpc: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(u, v, d_nominal) -> card-frame positions (cm)."""
    g = card.geometry
    out = np.zeros_like(x)
    out[:, g.plane_axes[0]] = x[:, 0]
    out[:, g.plane_axes[1]] = x[:, 1]
    out[:, g.drift_axis] = drift_to_position(card, tpc, x[:, 2])
    return out


def tracks_to_segments(tracks: list[RecoTrack], card: DetectorCard, cuts: SelectionCuts | None,
                       cfg: RecoConfig) -> RecoSegments:
    """Segments of the selected tracks (all tracks when ``cuts`` is None)."""
    seg_len = cfg.segment_length_cm or card.geometry.pixel_pitch_cm
    v = nominal_drift_velocity(card)
    cols: dict[str, list] = {k: [] for k in ("st", "en", "dE", "tid", "ev", "pdg", "tpc", "trk")}
    for i, tr in enumerate(tracks):
        if cuts is not None and not tr.selected:
            continue
        st, en, dE, pdg = track_segments(tr, card, cuts, seg_len, i)
        n = st.shape[0]
        if n == 0:
            continue
        cols["st"].append(st)
        cols["en"].append(en)
        cols["dE"].append(dE)
        cols["tid"].append(np.full(n, i))
        cols["ev"].append(np.full(n, tr.event))
        cols["pdg"].append(np.full(n, pdg))
        cols["tpc"].append(np.full(n, tr.tpc))
        cols["trk"].append(np.full(n, i))
    if not cols["st"]:
        z3 = np.zeros((0, 3))
        zi = np.zeros(0, np.int64)
        segs = Segments(z3, z3.copy(), np.zeros(0), np.zeros(0), zi, zi.copy(), zi.copy())
        return RecoSegments(segs, np.zeros((0, 2)), zi, zi, tracks)
    st, en = np.concatenate(cols["st"]), np.concatenate(cols["en"])
    tpc = np.concatenate(cols["tpc"]).astype(np.int64)
    segs = Segments(
        local_to_card(card, tpc, st), local_to_card(card, tpc, en), np.concatenate(cols["dE"]),
        np.zeros(st.shape[0]), np.concatenate(cols["tid"]).astype(np.int64),
        np.concatenate(cols["ev"]).astype(np.int64), np.concatenate(cols["pdg"]).astype(np.int64),
    ).validate("reconstructed segments")
    t_drift = np.stack([st[:, 2], en[:, 2]], 1) / v
    return RecoSegments(segs, t_drift, tpc, np.concatenate(cols["trk"]).astype(np.int64), tracks)
