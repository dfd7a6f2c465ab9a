r"""Track geometry inside the posterior: drift from measured time, and geometry latents.

Why drift times. Reconstructed points are placed on the host at ``d_nom = v_nom t_drift`` with
v_nom = v_d(E_nom). The charge model works with the drift *time* ``t_d = d / v_d(E)``; for a
reconstructed track the measured quantity is t_drift itself, so the model must use

.. math:: d_i(E) = s(E)\, d_{nom,i},\qquad s(E) = v_d(E) / v_{nom},\qquad t_{d,i} = t_{drift,i}

(arrival times do not move with E), and the 3-D length of every sub-point changes with the drift
component of its segment (direction cosine ``c`` along the drift axis):

.. math:: dl_i(E) = dl_{nom,i}\, \sqrt{1 - c^2 + c^2 s(E)^2}.

Placing segments at v_nom and letting a drift-offset latent absorb the difference is *not*
equivalent: over the prior range (E 0.45-0.55 kV/cm, s = 0.948-1.048) a track at 15 cm drift
would move by 0.7-0.8 cm, and the shift scales with the drift distance (a 13 cm-deep window
spans 0.65 cm of differential shift, larger than the 0.3 cm that moves E by 20-100 sd). With
nominal placement the arrival times would follow ``d_nom / v_d(E)``: the timing of the data then
pins E to E_nom (a fake measurement of E by geometry). :func:`apply_geometry` applies the scaling
inside the jitted model.

Geometry latents. Per reconstructed track k a shift ``delta_k = L_k z_k``, ``z_k ~ N(0, I_3)``
(site ``geo_z``), in the local frame (u, v, d) cm, with ``L_k L_k^T`` the track fit's offset
covariance plus systematic floors (:attr:`lartpc_bayes.reco.RecoConfig.sys_transverse_cm`,
``sys_drift_cm``) in quadrature; the drift component is the per-track t0 offset
(``delta t0 = delta d / v``). Optionally a per-TPC drift offset ``o_j ~ N(0, sd)`` (site
``tpc_drift_offset_cm``; sd from the card key ``geometry.drift_offset_sd_cm``) for any problem,
reconstructed or true segments (issue 12 item 4). The plan (pixel set, windows) stays fixed on
the host; it is planned with a transverse margin of ``margin_sd`` prior sd
(``plan_charge(margin_cm=...)``) so that it covers the shifts, and the shifts act on the
sub-point drift distances and the pad edges inside the jitted charge model.

Direction latents. A track whose direction is fixed at the reconstructed one cannot follow data
that locate it to tens of microns along its whole length (half-fake seed 18: a track 0.7 deg from
a pixel column, reconstructed 4 mrad off, pinned D_T 8 sd away; docs/reconstruction.md). Per track
a small rotation about the fit centroid ``c``: ``eta_k = B_k M_k w_k``, ``w_k ~ N(0, I_2)`` (site
``geo_tilt_z``), with ``B_k`` (3, 2) an orthonormal basis perpendicular to the direction ``n_k``
and ``M_k M_k^T = B_k^T C_dir B_k`` (deterministic ``geo_tilt``, (T, 3), rad). A segment at
signed distance ``lambda_s = (x_s - c) . n`` along the track moves by
``delta_k + lambda_s eta_k`` (first order in the angle; the length change is second order).

Pixel quantization floor. The line fit's covariances assume independent point errors. Across the
pixel axis that a track runs along, the points carry the pixel-centre quantization error
(uniform, sd ``p / sqrt(12)``), which averages only over the ``n_q = L min(|n_u|, |n_v|) / p``
pixel-column crossings of the track (at least 1). Both priors get it in quadrature along the
in-plane perpendicular ``w = (-n_v, n_u, 0) / |.|`` (it has no drift component: drift is measured
by time): offset ``q^2 = p^2 / (12 n_q)``, direction ``12 q^2 / L^2`` (the least-squares slope
variance of ``n_q`` independent blocks spread over ``L``). For a track crossing tens of columns
the floor is below the fit's own covariance; for the seed-18 track (n_q = 1, L = 28.8 cm) it is
1.15 mm and 14 mrad, covering the measured 0.76 mm and 4.3 mrad errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from ..detector import DetectorCard
from ..detector.physics import drift_velocity
from .points import nominal_drift_velocity

#: Prior sd of the per-TPC drift offset when the card has no ``geometry.drift_offset_sd_cm``, cm.
DEFAULT_DRIFT_OFFSET_SD_CM = 0.3


@dataclass
class ProblemGeometry:
    """Host-side geometry description attached to a CalibrationProblem.

    from_drift_time : segments were placed at v_nom from measured drift times (reco): rescale.
    seg_track : (N,) geometry-latent track of each segment (-1: none).
    seg_tpc : (N,) TPC of each segment. drift_cos : (N,) |drift component| / length.
    chol : (T, 3, 3) Cholesky factors of the per-track offset prior covariance (u, v, d), cm.
    tpc_offset_sd : prior sd of the per-TPC drift offset (0: no such latent), cm.
    v_nom : placement drift velocity, cm/us.
    tilt_basis : (T, 3, 2) orthonormal basis perpendicular to each track direction (None: no
        direction latents). tilt_chol : (T, 2, 2) Cholesky factor of the direction prior
        covariance in that basis, rad. seg_lever : (N,) signed distance of each segment's midpoint
        from its track's fit centroid along the direction, cm.
    """

    from_drift_time: bool
    seg_track: np.ndarray
    seg_tpc: np.ndarray
    drift_cos: np.ndarray
    chol: np.ndarray
    tpc_offset_sd: float
    n_tpc: int
    v_nom: float
    tilt_basis: np.ndarray | None = None
    tilt_chol: np.ndarray | None = None
    seg_lever: np.ndarray | None = None

    @property
    def n_tracks(self) -> int:
        return int(self.chol.shape[0])

    @property
    def has_tilt(self) -> bool:
        return self.tilt_basis is not None and self.n_tracks > 0

    @property
    def tilt_map(self) -> np.ndarray:
        """(T, 3, 2): ``B_k M_k``, the map from ``geo_tilt_z`` to the direction change (rad)."""
        return np.einsum("tij,tjk->tik", self.tilt_basis, self.tilt_chol)

    @property
    def margin_cm(self) -> np.ndarray | float:
        """Transverse plan margin per segment: 3 prior sd of its largest in-plane shift (offset
        plus lever arm times tilt), cm; 0 for segments without a geometry track."""
        if self.n_tracks == 0:
            return 0.0
        var = np.einsum("tij,tij->ti", self.chol, self.chol)[:, :2]  # (T, 2) in-plane variances
        has = self.seg_track >= 0
        st = np.maximum(self.seg_track, 0)
        v_seg = var[st]
        if self.has_tilt:
            a = self.tilt_map
            tvar = np.einsum("tij,tij->ti", a, a)[:, :2]
            v_seg = v_seg + self.seg_lever[:, None] ** 2 * tvar[st]
        return np.where(has, 3.0 * np.sqrt(v_seg.max(axis=1)), 0.0)


def card_drift_offset_sd(card: DetectorCard) -> float:
    """The card's ``geometry.drift_offset_sd_cm`` (default :data:`DEFAULT_DRIFT_OFFSET_SD_CM`)."""
    return float(getattr(card.geometry, "drift_offset_sd_cm", DEFAULT_DRIFT_OFFSET_SD_CM))


def _seg_tpc_and_cos(card: DetectorCard, segments) -> tuple[np.ndarray, np.ndarray]:
    from ..detector.geometry import tpc_of_points

    g = card.geometry
    mid = 0.5 * (segments.start + segments.end)
    tpc = np.maximum(tpc_of_points(card, mid, margin_cm=0.5), 0)
    dx = np.maximum(segments.dx, 1e-9)
    cos = np.abs(segments.end[:, g.drift_axis] - segments.start[:, g.drift_axis]) / dx
    return tpc, np.clip(cos, 0.0, 1.0)


def quantization_floor(direction: np.ndarray, length_cm: float, pitch_cm: float
                       ) -> tuple[np.ndarray, float, float]:
    """Pixel-quantization prior floor of a straight track (module docstring).

    Returns (w, q, t): the in-plane unit vector ``w`` perpendicular to the direction (u, v, d),
    the offset floor sd ``q = p / sqrt(12 n_q)`` (cm) and the direction floor sd
    ``t = sqrt(12) q / L`` (rad), ``n_q = max(1, L min(|n_u|, |n_v|) / p)``.
    """
    n = np.asarray(direction, np.float64)
    nuv = float(np.hypot(n[0], n[1]))
    w = np.array([-n[1], n[0], 0.0]) / nuv if nuv > 1e-9 else np.array([1.0, 0.0, 0.0])
    n_q = max(1.0, length_cm * min(abs(n[0]), abs(n[1])) / pitch_cm)
    q = pitch_cm / np.sqrt(12.0 * n_q)
    return w, float(q), float(np.sqrt(12.0) * q / max(length_cm, pitch_cm))


def _perp_basis(n: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane perpendicular to the unit vector ``n``."""
    _, vecs = np.linalg.eigh(np.eye(3) - np.outer(n, n))
    return vecs[:, 1:]  # eigenvalues (0, 1, 1)


def reco_geometry(
    card: DetectorCard,
    reco,
    *,
    track_latents: bool = True,
    direction_latents: bool = True,
    tpc_offset: bool = False,
    sys_transverse_cm: float = 0.05,
    sys_drift_cm: float = 0.05,
) -> ProblemGeometry:
    """Geometry of reconstructed segments (:class:`lartpc_bayes.reco.RecoSegments`): per-track
    offset latents (and, with ``direction_latents``, tilt latents) with priors from the track
    fit's covariances, the systematic floors and the pixel-quantization floor."""
    segs = reco.segments
    tpc, cos = _seg_tpc_and_cos(card, segs)
    uniq = np.unique(reco.track)
    basis = tchol = lever = None
    if track_latents and uniq.size:
        seg_track = np.searchsorted(uniq, reco.track)
        floor = np.diag([sys_transverse_cm**2, sys_transverse_cm**2, sys_drift_cm**2])
        g = card.geometry
        chol, bases, tchols = [], [], []
        lever = np.zeros(segs.n) if direction_latents else None
        mid = 0.5 * (segs.start + segs.end)
        mid_loc = np.stack([mid[:, g.plane_axes[0]], mid[:, g.plane_axes[1]],
                            reco.t_drift.mean(1) * nominal_drift_velocity(card)], 1)
        for k, t in enumerate(uniq):
            tr = reco.tracks[int(t)]
            piece = max(tr.pieces, key=lambda pc: pc.n_eff)
            w, q, tq = quantization_floor(piece.n, tr.length, g.pixel_pitch_cm)
            chol.append(np.linalg.cholesky(tr.cov_offset + floor + q * q * np.outer(w, w)))
            if direction_latents:
                b = _perp_basis(piece.n)
                cdir = b.T @ (tr.cov_dir + tq * tq * np.outer(w, w)) @ b
                bases.append(b)
                tchols.append(np.linalg.cholesky(cdir + 1e-14 * np.eye(2)))
                m = seg_track == k
                lever[m] = (mid_loc[m] - piece.c) @ piece.n
        chol = np.stack(chol)
        if direction_latents:
            basis, tchol = np.stack(bases), np.stack(tchols)
    else:
        seg_track = np.full(segs.n, -1)
        chol = np.zeros((0, 3, 3))
    return ProblemGeometry(True, seg_track.astype(np.int64), tpc.astype(np.int64), cos, chol,
                           card_drift_offset_sd(card) if tpc_offset else 0.0,
                           len(card.geometry.tpcs), nominal_drift_velocity(card),
                           basis, tchol, lever)


def drift_offset_geometry(card: DetectorCard, segments, sd_cm: float | None = None
                          ) -> ProblemGeometry:
    """Per-TPC drift offset only, for true (or externally given) segments (issue 12 item 4)."""
    tpc, cos = _seg_tpc_and_cos(card, segments)
    return ProblemGeometry(False, np.full(segments.n, -1, np.int64), tpc.astype(np.int64), cos,
                           np.zeros((0, 3, 3)),
                           card_drift_offset_sd(card) if sd_cm is None else float(sd_cm),
                           len(card.geometry.tpcs), nominal_drift_velocity(card))


def apply_geometry(plan_device, geom: ProblemGeometry, E, temperature_K: float,
                   track_shift=None, tpc_offset=None, track_tilt=None):
    """The device plan with drift distances, sub-point lengths and pad edges moved (pure JAX).

    track_shift : (T, 3) cm per geometry track in (u, v, d); tpc_offset : (n_tpc,) cm;
    track_tilt : (T, 3) rad, the change of each track's unit direction (segment ``s`` moves by
    ``track_shift + seg_lever[s] * track_tilt``).
    """
    sub, buckets = plan_device
    seg = sub.seg
    n_seg = geom.seg_tpc.shape[0]
    seg_c = jnp.minimum(seg, n_seg - 1)  # padding sub-points carry zero charge
    drift = sub.drift
    dl = sub.dl
    if geom.from_drift_time:
        s = drift_velocity(E, temperature_K) / geom.v_nom
        c = jnp.asarray(geom.drift_cos, drift.dtype)[seg_c]
        drift = drift * s
        dl = dl * jnp.sqrt(1.0 - c * c + c * c * s * s)
    du = dv = None
    if track_shift is not None and geom.n_tracks:
        st = jnp.asarray(geom.seg_track)[seg_c]
        has = (st >= 0).astype(drift.dtype)
        sh = track_shift[jnp.maximum(st, 0)]
        if track_tilt is not None and geom.has_tilt:
            lev = jnp.asarray(geom.seg_lever, drift.dtype)[seg_c]
            sh = sh + lev[:, None] * track_tilt[jnp.maximum(st, 0)]
        sh = sh * has[:, None]
        drift = drift + sh[:, 2]
        du, dv = sh[:, 0], sh[:, 1]
    if tpc_offset is not None and geom.tpc_offset_sd > 0:
        drift = drift + tpc_offset[jnp.asarray(geom.seg_tpc)[seg_c]]
    sub = sub._replace(drift=jnp.maximum(drift, 0.0).astype(sub.drift.dtype),
                       dl=dl.astype(sub.dl.dtype))
    if du is not None:
        buckets = tuple(
            b._replace(pair_u=b.pair_u - du[b.pair_sub][:, None].astype(b.pair_u.dtype),
                       pair_v=b.pair_v - dv[b.pair_sub][:, None].astype(b.pair_v.dtype))
            for b in buckets
        )
    return sub, buckets
