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

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..data import Segments
from ..detector import DetectorCard
from ..detector.geometry import drift_distance
from . import energy_loss as el
from .cosmics import GeneratorConfig, _Pieces, _stopping_batch, _through_going_batch

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


def generate_length(card: DetectorCard, sample: str, length_cm: float, seed: int,
                    n0: int = 8) -> Segments:
    """Whole generated tracks of ``sample`` (the generator's default cuts), in generation order,
    until their total length reaches ``length_cm`` (cm): the generator is asked for ``n0``
    tracks, then twice as many until it has enough, and the first tracks whose lengths add up to
    at least ``length_cm`` are kept (the generator's draws depend on the batch size, so ``n0``
    is part of the sample's definition, as the seed is)."""
    n = n0
    while True:
        segs = generate(card, sample, n, seed)
        key = segs.event_id.astype(np.int64) * 100000 + segs.track_id
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        per_track = np.bincount(rank[inv.ravel()], weights=segs.dx)
        cum = np.cumsum(per_track)
        if cum[-1] >= length_cm:
            k = int(np.searchsorted(cum, length_cm)) + 1
            return segs.select(rank[inv.ravel()] < k)
        n *= 2


def generate_run(card: DetectorCard, length_cm: float, seed: int,
                 proton_fraction: float = 0.1) -> Segments:
    """A run's worth of calibration tracks: whole cosmic muons for ``1 - proton_fraction`` of
    ``length_cm`` (at least the first track) and whole stopping protons for the rest (at least one
    track; seed ``seed + 7919``), the protons' events numbered after the muons'. The sample of the
    scale study (benchmarks/scale_study.py) and of the demo: muons crossing the drift give E, tau
    and D_L their lever arm, stopping protons the high-dE/dx end of Birks' law."""
    mu = generate_length(card, "muons", (1 - proton_fraction) * length_cm, seed, n0=4)
    pr = generate_length(card, "protons", max(proton_fraction * length_cm, 1.0), seed + 7919)
    pr = pr._replace(event_id=pr.event_id + int(mu.event_id.max()) + 1)
    return Segments.concatenate([mu, pr])
