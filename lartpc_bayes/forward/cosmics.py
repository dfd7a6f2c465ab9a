"""Track kinematics and deposits of the embedded generator (:mod:`lartpc_bayes.forward.generator`):
the sea-level muon spectrum (Reyna/Bugaev), chords of lines through the TPC drift volumes,
multiple scattering (Highland), Landau/Vavilov deposits per segment, and stopping protons along
their CSDA range. Batches of candidate tracks as host arrays (:class:`_Pieces`); the selection and
the assembly into :class:`~lartpc_bayes.data.Segments` are in the generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..detector import DetectorCard
from . import energy_loss as el

#: Reyna's parametrization of the vertical sea-level muon spectrum, I_V(p) = c1 p^-(c2 + c3 y +
#: c4 y^2 + c5 y^3), y = log10(p / GeV), with I(p, theta) = cos^3(theta) I_V(p cos theta)
#: (D. Reyna, hep-ph/0604145, fit to the Bugaev et al. model; valid 1 GeV/c < p < 2 TeV/c).
REYNA_C: tuple[float, float, float, float, float] = (0.00253, 0.2455, 1.288, -0.2555, 0.0209)


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
