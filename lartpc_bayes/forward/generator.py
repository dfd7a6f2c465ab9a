"""Embedded event generator: cosmic through-going muons (and pions) and stopping protons.

So that a fresh machine needs no input file (DESIGN.md section 7), this module produces
:class:`~lartpc_bayes.data.Segments` in the detector frame of a card (larnd-sim internal frame:
drift axis from the card, vertical axis y), with per-segment Landau/Vavilov energy-loss
fluctuations, optional multiple scattering, and the selection cuts of the published fits
(Y. Chen, MODE 2024 talk, seed 001; ynashed/larnd-sim optimize/: track angle to the drift axis
> 15 degrees, segments with |z| in [15, 28] cm for Module 0, dx > 0.01 cm, 100 cm mini-batches).

Samples
-------
``"muons"`` (PDG 13) and ``"pions"`` (PDG 211)
    Straight lines (or multiple-scattered polylines) crossing the detector. Directions follow the
    sea-level cos^2(zenith) law about the vertical (+y up, tracks go down); positions are uniform on
    a disk perpendicular to the direction that covers the bounding sphere of the TPCs, which gives
    every track the flux weight of its projected area. Momentum: fixed (default 4 GeV/c, the mean
    sea-level muon energy, PDG "Cosmic rays" 30.3) or, with ``GeneratorConfig(muon_momentum_MeV=
    None)``, drawn from the Reyna/Bugaev sea-level spectrum. Each line is clipped to every TPC drift
    volume separately (nothing is deposited in the cathode gap or between modules) and cut into
    equal segments of at most ``segment_length_cm``. dE per segment: Landau with the PDG
    Landau-Vavilov most probable value and width xi for the segment thickness and the local
    beta*gamma (the kinetic energy decreases along the track by the CSDA range), truncated at
    Delta_p + T_cut where T_cut is the energy of a knock-on electron whose range equals the segment
    length (such delta rays leave the segment; see :func:`energy_loss.delta_ray_cut_for_thickness`).
    Pions use the same generator with the pion mass (for the pion-contamination robustness test;
    hadronic interactions are not simulated).
``"protons"`` (PDG 2212)
    Stopping protons with momentum uniform in 200-500 MeV/c (talk 001), starting uniformly inside a
    TPC (chosen with probability proportional to its volume), isotropic direction, path length equal
    to the CSDA range; tracks leaving their TPC are regenerated. dE per segment: the CSDA loss
    T(R_start) - T(R_end) along the residual range (Bethe-Bloch, the Bragg peak) with
    Vavilov-type fluctuations (Gaussian when kappa = xi/W_max is large; see
    :func:`energy_loss.sample_vavilov_loss`); the last segment deposits the remaining energy.

Every track is its own event (event_id = track index, t0 = 0 us) unless ``tracks_per_event > 1``.
``n_tracks`` counts tracks *after* the cuts: the generator draws candidates until that many tracks
keep at least one segment. Deterministic for a seed (one ``numpy.random.Generator``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..data import Segments
from ..detector import DetectorCard
from ..detector.geometry import drift_distance
from . import energy_loss as el

#: PDG codes and masses (MeV) of the samples.
SAMPLE_PDG: dict[str, int] = {"muons": 13, "pions": 211, "protons": 2212}
SAMPLE_MASS_MEV: dict[str, float] = {
    "muons": el.MUON_MASS_MEV,
    "pions": el.PION_MASS_MEV,
    "protons": el.PROTON_MASS_MEV,
}

#: Module 0 (larnd-sim module0.yaml, models/module0.yaml): anode at |z| = 30.431 cm, drift length
#: 30.272 cm. The published cut |z| in [15, 28] cm is a drift distance from the anode in
#: [2.431, 15.431] cm, i.e. fractions (0.0803, 0.5097) of the drift length.
MODULE0_ANODE_CM: float = 30.431
MODULE0_DRIFT_CM: float = 30.272
PUBLISHED_ABS_Z_WINDOW_CM: tuple[float, float] = (15.0, 28.0)
PUBLISHED_DRIFT_WINDOW_CM: tuple[float, float] = (
    MODULE0_ANODE_CM - PUBLISHED_ABS_Z_WINDOW_CM[1],
    MODULE0_ANODE_CM - PUBLISHED_ABS_Z_WINDOW_CM[0],
)

#: Reyna's parametrization of the vertical sea-level muon spectrum, I_V(p) = c1 p^-(c2 + c3 y +
#: c4 y^2 + c5 y^3), y = log10(p / GeV), with I(p, theta) = cos^3(theta) I_V(p cos theta)
#: (D. Reyna, hep-ph/0604145, fit to the Bugaev et al. model; valid 1 GeV/c < p < 2 TeV/c).
REYNA_C: tuple[float, float, float, float, float] = (0.00253, 0.2455, 1.288, -0.2555, 0.0209)


@dataclass(frozen=True)
class SelectionCuts:
    """Selection of the published fits (talk 001; ynashed/larnd-sim optimize/), all configurable.

    min_angle_to_drift_deg : keep tracks whose direction (start-to-end chord) makes an angle larger
        than this with the drift axis (|cos| < cos 15 deg = 0.966), as a line (0-90 degrees).
    drift_window_cm : keep segments whose two end points both lie at a drift distance from their
        anode in [lo, hi] cm. None: ``drift_window_fraction`` times each TPC's drift length, which
        is (2.431, 15.431) cm for the 30.27 cm Module-0/2x2 drift (|z| in [15, 28] cm) and scales
        with the drift length for other cards (ND-LAr: (4.05, 25.69) cm).
    min_dx_cm : keep segments longer than this (0.01 cm).
    min_track_length_cm : keep tracks whose length in the active volume (before the segment cuts)
        exceeds this; 0 disables it (the MLST paper's muon sample used 2 cm).
    """

    min_angle_to_drift_deg: float = 15.0
    drift_window_cm: tuple[float, float] | None = None
    drift_window_fraction: tuple[float, float] = (
        PUBLISHED_DRIFT_WINDOW_CM[0] / MODULE0_DRIFT_CM,
        PUBLISHED_DRIFT_WINDOW_CM[1] / MODULE0_DRIFT_CM,
    )
    min_dx_cm: float = 0.01
    min_track_length_cm: float = 0.0

    def window_cm(self, drift_length_cm: float) -> tuple[float, float]:
        """The drift-distance window (cm from the anode) for a TPC of the given drift length."""
        if self.drift_window_cm is not None:
            return (float(self.drift_window_cm[0]), float(self.drift_window_cm[1]))
        f = self.drift_window_fraction
        return (f[0] * drift_length_cm, f[1] * drift_length_cm)


@dataclass(frozen=True)
class GeneratorConfig:
    """Physics knobs of the generator (the common ones are keyword arguments of :func:`generate`).

    muon_momentum_MeV : fixed momentum of through-going muons/pions (MeV/c); None draws it from the
        Reyna sea-level spectrum within ``spectrum_momentum_range_MeV``.
    proton_momentum_range_MeV : stopping-proton momentum range, uniform (talk 001: 200-500 MeV/c).
    max_zenith_deg : largest zenith angle of through-going tracks.
    vertical_axis : index of the vertical (up) axis in the card frame (1 = y, larnd-sim convention).
    delta_ray_cut_MeV : upper cut of a through-going segment's deposit above its most probable
        value; None uses the electron-range criterion per segment (1.27 MeV for 0.4 cm).
    vavilov_hard_collisions : expected number of explicitly sampled hard collisions per proton
        segment in :func:`energy_loss.sample_vavilov_loss`.
    """

    muon_momentum_MeV: float | None = 4000.0
    spectrum_momentum_range_MeV: tuple[float, float] = (1000.0, 100000.0)
    proton_momentum_range_MeV: tuple[float, float] = (200.0, 500.0)
    max_zenith_deg: float = 90.0
    vertical_axis: int = 1
    delta_ray_cut_MeV: float | None = None
    vavilov_hard_collisions: float = 30.0


class SegmentTruth(NamedTuple):
    """Per-segment generator truth, aligned with the returned segments.

    tpc : TPC index. beta_gamma : at the segment midpoint (CSDA energy).
    residual_range_start_cm / _end_cm : residual range at the segment ends (NaN for through-going).
    dE_mean : expected deposit, MeV (truncated-Landau mean, or the CSDA loss for stopping tracks).
    dE_mpv : Landau-Vavilov most probable deposit (PDG eq. 34.12), MeV (NaN for stopping tracks,
        where kappa is not small). xi : Landau width of the segment, MeV.
    dE_max : upper truncation of the deposit, MeV (inf for stopping tracks).
    """

    tpc: np.ndarray
    beta_gamma: np.ndarray
    residual_range_start_cm: np.ndarray
    residual_range_end_cm: np.ndarray
    dE_mean: np.ndarray
    dE_mpv: np.ndarray
    xi: np.ndarray
    dE_max: np.ndarray


class GeneratedSample(NamedTuple):
    """Segments plus truth. ``track_*`` arrays are indexed by the (renumbered) track id."""

    segments: Segments
    truth: SegmentTruth
    track_momentum_MeV: np.ndarray
    track_direction: np.ndarray


class _Pieces(NamedTuple):
    track: np.ndarray  # batch-local track index
    tpc: np.ndarray
    start: np.ndarray
    end: np.ndarray
    dE: np.ndarray
    beta_gamma: np.ndarray
    rr_start: np.ndarray
    rr_end: np.ndarray
    dE_mean: np.ndarray
    dE_mpv: np.ndarray
    xi: np.ndarray
    dE_max: np.ndarray

    def select(self, m: np.ndarray) -> _Pieces:
        return _Pieces(*(a[m] for a in self))


# ------------------------------------------------------------------------------------------------
# geometry helpers
# ------------------------------------------------------------------------------------------------
def tpc_boxes(card: DetectorCard) -> tuple[np.ndarray, np.ndarray]:
    """(n_tpc, 3) lower and upper corners of every TPC drift volume in the card frame, cm."""
    g = card.geometry
    lo = np.zeros((len(g.tpcs), 3))
    hi = np.zeros((len(g.tpcs), 3))
    for i, t in enumerate(g.tpcs):
        lo[i, g.drift_axis] = min(t.anode_cm, t.cathode_cm)
        hi[i, g.drift_axis] = max(t.anode_cm, t.cathode_cm)
        for k, ax in enumerate(g.plane_axes):
            lo[i, ax] = t.plane_min_cm[k]
            hi[i, ax] = t.plane_max_cm[k]
    return lo, hi


def _slab(p: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Parameter interval [t_in, t_out] of the lines p + t d inside the boxes [lo, hi].

    p, d : (B, 3); lo, hi : (M, 3). Returns (B, M) arrays; empty where t_out <= t_in.
    """
    p = p[:, None, :]
    d = d[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (lo[None] - p) / d
        t2 = (hi[None] - p) / d
    par = d == 0.0
    inside = (p >= lo[None]) & (p <= hi[None])
    tmin = np.where(par, np.where(inside, -np.inf, np.inf), np.minimum(t1, t2))
    tmax = np.where(par, np.where(inside, np.inf, -np.inf), np.maximum(t1, t2))
    return tmin.max(axis=-1), tmax.min(axis=-1)


def _orthonormal_basis(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to each unit vector d (B, 3) and to each other."""
    helper = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    return e1, np.cross(d, e1)


def _deflect(rng: np.random.Generator, d: np.ndarray, theta0: np.ndarray) -> np.ndarray:
    """Rotate directions d by two independent plane-projected Gaussian angles of rms theta0."""
    e1, e2 = _orthonormal_basis(d)
    a = rng.normal(size=(d.shape[0], 2)) * theta0[:, None]
    out = d + a[:, :1] * e1 + a[:, 1:] * e2
    return out / np.linalg.norm(out, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# momentum spectrum
# ------------------------------------------------------------------------------------------------
def reyna_vertical_intensity(p_GeV) -> np.ndarray:
    """Vertical sea-level muon intensity I_V(p) (Reyna, hep-ph/0604145), 1/(cm^2 s sr GeV/c)."""
    p = np.asarray(p_GeV, dtype=np.float64)
    y = np.log10(p)
    c1, c2, c3, c4, c5 = REYNA_C
    return c1 * p ** -(c2 + c3 * y + c4 * y * y + c5 * y**3)


def _sample_reyna_momentum(
    rng: np.random.Generator, cos_zenith: np.ndarray, p_range_MeV: tuple[float, float]
) -> np.ndarray:
    """Momenta (MeV/c) from I(p | theta) ~ I_V(p cos theta) on p_range (inverse CDF on a grid)."""
    q = np.geomspace(1e-3, 1e5, 4001)  # GeV/c, q = p cos(theta)
    f = reyna_vertical_intensity(q) * q  # density in ln q
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (f[1:] + f[:-1]) * np.diff(np.log(q)))])
    c = np.maximum(cos_zenith, 1e-3)
    qlo = p_range_MeV[0] * 1e-3 * c
    qhi = p_range_MeV[1] * 1e-3 * c
    flo = np.interp(np.log(qlo), np.log(q), cdf)
    fhi = np.interp(np.log(qhi), np.log(q), cdf)
    u = flo + (fhi - flo) * rng.uniform(size=c.shape)
    qs = np.exp(np.interp(u, cdf, np.log(q)))
    return np.clip(qs / c * 1e3, p_range_MeV[0], p_range_MeV[1])


# ------------------------------------------------------------------------------------------------
# energy deposits
# ------------------------------------------------------------------------------------------------
def _landau_deposits(
    rng: np.random.Generator, kinetic_mid: np.ndarray, dx: np.ndarray, mass: float, rho: float,
    cfg: GeneratorConfig,
):
    """Truncated-Landau deposits for thin segments; returns dE, bg, mean, mpv, xi, max."""
    bg = el.beta_gamma_from_kinetic_energy(kinetic_mid, mass)
    mpv = el.landau_vavilov_mpv_loss(bg, dx, rho)
    xi = el.landau_xi(bg, dx, rho)
    if cfg.delta_ray_cut_MeV is None:
        t_cut = el.delta_ray_cut_for_thickness(dx, rho)
    else:
        t_cut = np.full_like(dx, float(cfg.delta_ray_cut_MeV))
    dmax = mpv + np.minimum(t_cut, el.max_energy_transfer(bg, mass))
    de = el.sample_truncated_landau(rng, mpv, xi, dmax)
    return de, bg, el.truncated_landau_mean(mpv, xi, dmax), mpv, xi, dmax


# ------------------------------------------------------------------------------------------------
# through-going tracks
# ------------------------------------------------------------------------------------------------
def _through_going_batch(
    rng: np.random.Generator, card: DetectorCard, mass: float, n: int, seg_len: float,
    ms: bool, cfg: GeneratorConfig,
) -> tuple[_Pieces, np.ndarray, np.ndarray]:
    rho = card.physics.lar_density_g_cm3
    lo, hi = tpc_boxes(card)
    blo, bhi = lo.min(axis=0), hi.max(axis=0)
    center = 0.5 * (blo + bhi)
    radius = 0.5 * float(np.linalg.norm(bhi - blo))

    # directions: dN/dOmega ~ cos^2(zenith), downward-going
    cmin = math.cos(math.radians(cfg.max_zenith_deg))
    cz = np.cbrt(cmin**3 + (1.0 - cmin**3) * rng.uniform(size=n))
    sz = np.sqrt(np.maximum(1.0 - cz * cz, 0.0))
    phi = 2.0 * math.pi * rng.uniform(size=n)
    vax = cfg.vertical_axis
    hax = [a for a in range(3) if a != vax]
    d = np.zeros((n, 3))
    d[:, vax] = -cz
    d[:, hax[0]] = sz * np.cos(phi)
    d[:, hax[1]] = sz * np.sin(phi)
    e1, e2 = _orthonormal_basis(d)
    r = radius * np.sqrt(rng.uniform(size=n))
    alpha = 2.0 * math.pi * rng.uniform(size=n)
    p0 = center + r[:, None] * (np.cos(alpha)[:, None] * e1 + np.sin(alpha)[:, None] * e2)
    if cfg.muon_momentum_MeV is None:
        mom = _sample_reyna_momentum(rng, cz, cfg.spectrum_momentum_range_MeV)
    else:
        mom = np.full(n, float(cfg.muon_momentum_MeV))
    t_kin0 = el.kinetic_energy_from_momentum(mom, mass)
    range0 = el.kinetic_energy_to_range(t_kin0, mass, rho)

    tb_in, tb_out = _slab(p0, d, blo[None], bhi[None])
    tb_in, tb_out = tb_in[:, 0], tb_out[:, 0]
    box_len = np.maximum(tb_out - tb_in, 0.0)
    # through-going: the CSDA range must exceed the chord through the detector's bounding box (with
    # a 20 % margin for the longer path of a multiple-scattered track)
    ok = (box_len > 0) & (range0 > 1.2 * box_len)
    # the undeflected line must cross at least one drift volume (also with multiple scattering,
    # whose deflection over the detector is a few mrad for GeV muons)
    t_in, t_out = _slab(p0, d, lo, hi)
    valid = (t_out - t_in > 1e-9) & ok[:, None]
    ok &= valid.any(axis=1)

    if not ms:
        trk, tpc = np.nonzero(valid)
        a, b = t_in[trk, tpc], t_out[trk, tpc]
        order = np.lexsort((a, trk))
        trk, tpc, a, b = trk[order], tpc[order], a[order], b[order]
        L = b - a
        nseg = np.maximum(np.ceil(L / seg_len - 1e-9), 1).astype(np.int64)
        row = np.repeat(np.arange(trk.size), nseg)
        k = np.arange(row.size) - np.repeat(np.cumsum(nseg) - nseg, nseg)
        step = (L / nseg)[row]
        ta = a[row] + k * step
        tbb = ta + step
        strk = trk[row]
        stpc = tpc[row]
        start = p0[strk] + ta[:, None] * d[strk]
        end = p0[strk] + tbb[:, None] * d[strk]
        s_mid = 0.5 * (ta + tbb) - tb_in[strk]  # path length from the detector entry
    else:
        # multiple scattering: step through the bounding box, deflecting after every step
        max_steps = math.ceil(float(box_len[ok].max(initial=0.0)) * 1.2 / seg_len) + 2
        pos = p0 + tb_in[:, None] * d
        pos = np.where(ok[:, None], pos, 0.0)
        dirs = d.copy()
        alive = ok.copy()
        starts, ends, trks, ks = [], [], [], []
        for k_step in range(max_steps):
            inside = np.all((pos >= blo - 1e-9) & (pos <= bhi + 1e-9), axis=1)
            alive &= inside
            if not alive.any():
                break
            idx = np.nonzero(alive)[0]
            new = pos[idx] + seg_len * dirs[idx]
            starts.append(pos[idx])
            ends.append(new)
            trks.append(idx)
            ks.append(np.full(idx.size, k_step))
            kin = el.range_to_kinetic_energy(range0[idx] - k_step * seg_len, mass, rho)
            kin = np.maximum(kin, 1e-3)
            pm = np.sqrt(kin * (kin + 2.0 * mass))
            beta = pm / (kin + mass)
            th0 = el.highland_theta0(pm, beta, seg_len, rho, log_length_cm=box_len[idx])
            pos[idx] = new
            dirs[idx] = _deflect(rng, dirs[idx], th0)
        if starts:
            sa, sb = np.concatenate(starts), np.concatenate(ends)
            st, sk = np.concatenate(trks), np.concatenate(ks)
        else:
            sa = sb = np.zeros((0, 3))
            st = sk = np.zeros(0, dtype=np.int64)
        u = (sb - sa) / seg_len
        rows, tpcs, ta_l, tb_l = [], [], [], []
        for i in range(lo.shape[0]):
            # only steps starting within one step length of the volume can intersect it
            near = np.nonzero(np.all((sa >= lo[i] - seg_len) & (sa <= hi[i] + seg_len), axis=1))[0]
            t_a, t_b = _slab(sa[near], u[near], lo[i : i + 1], hi[i : i + 1])
            t_a = np.maximum(t_a[:, 0], 0.0)
            t_b = np.minimum(t_b[:, 0], seg_len)
            v = t_b - t_a > 1e-9
            rows.append(near[v])
            tpcs.append(np.full(int(v.sum()), i))
            ta_l.append(t_a[v])
            tb_l.append(t_b[v])
        row, stpc = np.concatenate(rows), np.concatenate(tpcs)
        a, b = np.concatenate(ta_l), np.concatenate(tb_l)
        start = sa[row] + a[:, None] * u[row]
        end = sa[row] + b[:, None] * u[row]
        strk = st[row]
        s_mid = sk[row] * seg_len + 0.5 * (a + b)
        order = np.lexsort((s_mid, strk))
        start, end, strk, stpc, s_mid = (x[order] for x in (start, end, strk, stpc, s_mid))

    # keep end points exactly inside their TPC (rounding of p + t d)
    start = np.clip(start, lo[stpc], hi[stpc])
    end = np.clip(end, lo[stpc], hi[stpc])
    dx = np.linalg.norm(end - start, axis=1)
    keep = dx > 1e-9
    start, end, strk, stpc, s_mid, dx = (x[keep] for x in (start, end, strk, stpc, s_mid, dx))
    kin_mid = np.maximum(el.range_to_kinetic_energy(range0[strk] - s_mid, mass, rho), 1e-3)
    de, bg, mean, mpv, xi, dmax = _landau_deposits(rng, kin_mid, dx, mass, rho, cfg)
    nan = np.full(de.shape, np.nan)
    pieces = _Pieces(strk, stpc, start, end, de, bg, nan, nan.copy(), mean, mpv, xi, dmax)
    return pieces, mom, d


# ------------------------------------------------------------------------------------------------
# stopping protons
# ------------------------------------------------------------------------------------------------
def _stopping_batch(
    rng: np.random.Generator, card: DetectorCard, mass: float, n: int, seg_len: float,
    ms: bool, cfg: GeneratorConfig,
) -> tuple[_Pieces, np.ndarray, np.ndarray]:
    rho = card.physics.lar_density_g_cm3
    lo, hi = tpc_boxes(card)
    vol = np.prod(hi - lo, axis=1)
    tpc0 = rng.choice(len(vol), size=n, p=vol / vol.sum())
    x0 = lo[tpc0] + (hi[tpc0] - lo[tpc0]) * rng.uniform(size=(n, 3))
    cth = rng.uniform(-1.0, 1.0, size=n)
    sth = np.sqrt(1.0 - cth * cth)
    phi = 2.0 * math.pi * rng.uniform(size=n)
    d = np.stack([sth * np.cos(phi), sth * np.sin(phi), cth], axis=1)
    plo, phi_p = cfg.proton_momentum_range_MeV
    mom = rng.uniform(plo, phi_p, size=n)
    kin0 = el.kinetic_energy_from_momentum(mom, mass)
    rng0 = el.kinetic_energy_to_range(kin0, mass, rho)
    nseg = np.maximum(np.ceil(rng0 / seg_len - 1e-9), 1).astype(np.int64)
    step = rng0 / nseg
    kmax = int(nseg.max(initial=0))

    # nodes: (n, kmax + 1, 3); beyond a track's last node the position is frozen
    nodes = np.empty((n, kmax + 1, 3))
    nodes[:, 0] = x0
    dirs = d.copy()
    for k in range(kmax):
        live = k < nseg
        nodes[:, k + 1] = np.where(live[:, None], nodes[:, k] + step[:, None] * dirs, nodes[:, k])
        if ms:
            rr = rng0 - k * step
            kin = el.range_to_kinetic_energy(rr, mass, rho)
            pm = np.sqrt(kin * (kin + 2.0 * mass))
            beta = np.maximum(pm / (kin + mass), 1e-6)
            th0 = el.highland_theta0(np.maximum(pm, 1e-9), beta, step, rho, log_length_cm=rng0)
            dirs = np.where(live[:, None], _deflect(rng, dirs, th0), dirs)
    contained = np.all(
        (nodes >= lo[tpc0][:, None, :]) & (nodes <= hi[tpc0][:, None, :]), axis=(1, 2)
    )

    trk = np.repeat(np.nonzero(contained)[0], nseg[contained])
    nc = nseg[contained]
    k = np.arange(trk.size) - np.repeat(np.cumsum(nc) - nc, nc)
    start = nodes[trk, k]
    end = nodes[trk, k + 1]
    stpc = tpc0[trk]
    rr_a = rng0[trk] - k * step[trk]
    rr_b = np.maximum(rr_a - step[trk], 0.0)
    rr_b[k == nseg[trk] - 1] = 0.0
    t_a = el.range_to_kinetic_energy(rr_a, mass, rho)
    t_b = el.range_to_kinetic_energy(rr_b, mass, rho)
    mean = t_a - t_b
    t_mid = el.range_to_kinetic_energy(0.5 * (rr_a + rr_b), mass, rho)
    bg = el.beta_gamma_from_kinetic_energy(t_mid, mass)
    dx = step[trk]
    xi = el.landau_xi(bg, dx, rho)
    wmax = el.max_energy_transfer(bg, mass)
    b2 = bg * bg / (1.0 + bg * bg)
    de = el.sample_vavilov_loss(rng, mean, xi, wmax, b2, cfg.vavilov_hard_collisions)
    # energy conservation: the last segment deposits exactly the remaining kinetic energy (the
    # fluctuation of the stopping point, range straggling, is not modelled), and no segment more
    # than the energy the particle has left
    last = k == nseg[trk] - 1
    de = np.where(last, t_a, np.minimum(de, t_a))
    nan = np.full(de.shape, np.nan)
    pieces = _Pieces(
        trk, stpc, start, end, de, bg, rr_a, rr_b, mean, nan, xi, np.full(de.shape, np.inf)
    )
    return pieces, mom, d


# ------------------------------------------------------------------------------------------------
# cuts, public API
# ------------------------------------------------------------------------------------------------
def track_angle_to_drift_deg(direction: np.ndarray, drift_axis: int) -> np.ndarray:
    """Angle (degrees, 0-90) between track lines with the given directions and the drift axis."""
    d = np.asarray(direction, dtype=np.float64)
    c = np.abs(d[..., drift_axis]) / np.linalg.norm(d, axis=-1)
    return np.degrees(np.arccos(np.clip(c, 0.0, 1.0)))


def _apply_cuts(pieces: _Pieces, card: DetectorCard, cuts: SelectionCuts) -> _Pieces:
    if pieces.track.size == 0:
        return pieces
    g = card.geometry
    ntrk = int(pieces.track.max()) + 1
    dx = np.linalg.norm(pieces.end - pieces.start, axis=1)
    # track-level: chord from the first start to the last end (pieces are ordered along the track)
    idx = np.arange(pieces.track.size)
    first = np.full(ntrk, idx.size)
    last = np.full(ntrk, -1)
    np.minimum.at(first, pieces.track, idx)
    np.maximum.at(last, pieces.track, idx)
    has = last >= 0
    chord = np.zeros((ntrk, 3))
    chord[has] = pieces.end[last[has]] - pieces.start[first[has]]
    angle = track_angle_to_drift_deg(np.where(has[:, None], chord, 1.0), g.drift_axis)
    length = np.bincount(pieces.track, weights=dx, minlength=ntrk)
    track_ok = (angle > cuts.min_angle_to_drift_deg) & (length > cuts.min_track_length_cm)
    # segment-level: length and drift window (both end points)
    wins = np.array([cuts.window_cm(t.drift_length_cm) for t in g.tpcs])
    wlo, whi = wins[pieces.tpc, 0], wins[pieces.tpc, 1]
    da = drift_distance(card, pieces.tpc, pieces.start)
    db = drift_distance(card, pieces.tpc, pieces.end)
    seg_ok = (
        (dx > cuts.min_dx_cm)
        & (da >= wlo) & (da <= whi) & (db >= wlo) & (db <= whi)
        & track_ok[pieces.track]
    )
    return pieces.select(seg_ok)


def generate_sample(
    card: DetectorCard,
    sample: str,
    n_tracks: int,
    seed: int,
    *,
    segment_length_cm: float = 0.4,
    multiple_scattering: bool = False,
    apply_cuts: bool = True,
    tracks_per_event: int = 1,
    cuts: SelectionCuts | None = None,
    config: GeneratorConfig | None = None,
) -> GeneratedSample:
    """Generate ``n_tracks`` tracks of ``sample`` with per-segment truth (see :func:`generate`)."""
    if sample not in SAMPLE_PDG:
        raise ValueError(f"unknown sample {sample!r}; expected one of {sorted(SAMPLE_PDG)}")
    if n_tracks < 0:
        raise ValueError(f"n_tracks must be >= 0, got {n_tracks}")
    if not segment_length_cm > 0:
        raise ValueError(f"segment_length_cm must be > 0, got {segment_length_cm}")
    if tracks_per_event < 1:
        raise ValueError(f"tracks_per_event must be >= 1, got {tracks_per_event}")
    cuts = cuts or SelectionCuts()
    cfg = config or GeneratorConfig()
    mass = SAMPLE_MASS_MEV[sample]
    make = _stopping_batch if sample == "protons" else _through_going_batch
    rng = np.random.default_rng(seed)

    kept: list[_Pieces] = []
    moms: list[np.ndarray] = []
    dirs: list[np.ndarray] = []
    n_have = 0
    acceptance = 1.0  # updated from each batch
    empty_batches = 0
    while n_have < n_tracks:
        n_cand = int(min(max(1.3 * (n_tracks - n_have) / acceptance + 16, 64), 100_000))
        pieces, mom, d = make(rng, card, mass, n_cand, segment_length_cm, multiple_scattering, cfg)
        if apply_cuts:
            pieces = _apply_cuts(pieces, card, cuts)
        good = np.unique(pieces.track)  # sorted batch-local ids = generation order
        acceptance = max(good.size / n_cand, 1e-3)
        if good.size == 0:
            empty_batches += 1
            if empty_batches >= 20:
                raise RuntimeError(
                    f"no {sample} track survives the cuts on card {card.name!r} after "
                    f"{empty_batches} batches; check SelectionCuts"
                )
            continue
        good = good[: n_tracks - n_have]
        new_id = np.full(n_cand, -1)
        new_id[good] = n_have + np.arange(good.size)
        sel = pieces.select(new_id[pieces.track] >= 0)
        kept.append(sel._replace(track=new_id[sel.track]))
        moms.append(mom[good])
        dirs.append(d[good])
        n_have += good.size

    if kept:
        allp = _Pieces(*(np.concatenate([getattr(p, f) for p in kept]) for f in _Pieces._fields))
    else:
        z = np.zeros(0)
        allp = _Pieces(z.astype(np.int64), z.astype(np.int64), np.zeros((0, 3)), np.zeros((0, 3)),
                       *(z.copy() for _ in range(8)))
    tid = allp.track.astype(np.int64)
    segs = Segments(
        start=allp.start,
        end=allp.end,
        dE=allp.dE,
        t0=np.zeros(tid.size),
        track_id=tid,
        event_id=tid // tracks_per_event,
        pdg_id=np.full(tid.size, SAMPLE_PDG[sample], dtype=np.int64),
    ).validate(f"generator({sample})")
    truth = SegmentTruth(
        allp.tpc.astype(np.int64), allp.beta_gamma, allp.rr_start, allp.rr_end, allp.dE_mean,
        allp.dE_mpv, allp.xi, allp.dE_max,
    )
    mom_all = np.concatenate(moms) if moms else np.zeros(0)
    dir_all = np.concatenate(dirs) if dirs else np.zeros((0, 3))
    return GeneratedSample(segs, truth, mom_all, dir_all)


def generate(
    card: DetectorCard,
    sample: str,
    n_tracks: int,
    seed: int,
    *,
    segment_length_cm: float = 0.4,
    multiple_scattering: bool = False,
    apply_cuts: bool = True,
    tracks_per_event: int = 1,
    cuts: SelectionCuts | None = None,
    config: GeneratorConfig | None = None,
) -> Segments:
    """Generate ``n_tracks`` tracks of ``sample`` ('muons' | 'protons' | 'pions') as Segments.

    card : detector card (geometry and LAr density).
    n_tracks : number of tracks returned (after the cuts when ``apply_cuts``); track ids 0..n-1.
    seed : seed of the numpy Generator; the output is a deterministic function of all arguments.
    segment_length_cm : maximal segment length (through-going: equal split of each TPC chord;
        protons: equal split of the range). Default 0.4 cm, about one pixel pitch.
    multiple_scattering : deflect the direction after every step by the Highland angle
        (:func:`energy_loss.highland_theta0`, log term for the whole path).
    apply_cuts : apply :class:`SelectionCuts` (``cuts``; default the published selection).
    tracks_per_event : tracks per event (event_id = track_id // tracks_per_event), all at t0 = 0.
    config : :class:`GeneratorConfig` (momenta, delta-ray cut, ...).

    Segments are ordered by track and along the track. Use :func:`generate_sample` for the
    per-segment truth (beta*gamma, residual range, expected deposit).
    """
    return generate_sample(
        card, sample, n_tracks, seed, segment_length_cm=segment_length_cm,
        multiple_scattering=multiple_scattering, apply_cuts=apply_cuts,
        tracks_per_event=tracks_per_event, cuts=cuts, config=config,
    ).segments


def batch_by_length(segments: Segments, max_length_cm: float = 100.0) -> list[Segments]:
    """Split segments into mini-batches of whole tracks with total length <= ``max_length_cm``.

    Tracks are taken in order of first appearance and accumulated while the batch's summed segment
    length stays within the maximum (talk 001: "maximum total segment length", 100 cm for muons,
    200 cm for protons in ynashed/larnd-sim); a track longer than the maximum forms its own batch.
    Every segment lands in exactly one batch; batches keep the input order of their segments.
    """
    if not max_length_cm > 0:
        raise ValueError(f"max_length_cm must be > 0, got {max_length_cm}")
    if segments.n == 0:
        return []
    tid = np.asarray(segments.track_id)
    eid = np.asarray(segments.event_id)
    key = np.stack([eid, tid], axis=1)
    uniq, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(first, kind="stable")  # tracks in order of first appearance
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    length = np.bincount(rank[inv], weights=segments.dx, minlength=len(uniq))
    batch_of_track = np.empty(len(uniq), dtype=np.int64)
    b, total = 0, 0.0
    for r in range(len(uniq)):
        if total > 0 and total + length[r] > max_length_cm:
            b += 1
            total = 0.0
        batch_of_track[r] = b
        total += length[r]
    seg_batch = batch_of_track[rank[inv]]
    return [segments.select(seg_batch == i) for i in range(b + 1)]
