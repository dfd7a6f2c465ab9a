"""The reconstruction chain: data file -> hits -> clusters -> tracks -> selected segments.

:func:`reconstruct` runs on :class:`~lartpc_bayes.data.Hits` (ticks from each event's t0);
:func:`load_data` reads any supported detector file (the package's hit file, LArPix packets,
ndlar_flow hits) into hits plus the card and the t0 provenance.

t0 policy (``t0`` argument, stated in ``RecoResult.attrs['t0_source']``):

``"file"`` (default)
    the readers already measure ticks from each event's t0: packets from the trigger/timestamp
    event table (``lartpc_bayes/events``, or trigger packets, type 7), flow hits from the flow's
    event t0 (``t_drift``), the package's hit file from its event t = 0.
a number
    an event t0 in us subtracted from every hit time (an external trigger).
``"crossing"``
    per track, from the track's own drift-time span when it crosses anode and cathode
    (:func:`lartpc_bayes.reco.points.crossing_t0`); tracks that do not cross keep the file's t0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Hits
from ..detector import DetectorCard
from ..forward.generator import SelectionCuts
from .points import crossing_t0, hits_to_points, nominal_drift_velocity
from .tracks import (
    RecoConfig,
    RecoSegments,
    RecoTrack,
    apply_selection,
    fit_track,
    tag_stopping,
    tracks_to_segments,
)


@dataclass
class RecoResult:
    """Output of :func:`reconstruct`: selected segments, all tracks, provenance attributes."""

    reco: RecoSegments
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def segments(self):
        return self.reco.segments

    @property
    def tracks(self) -> list[RecoTrack]:
        return self.reco.tracks


def cluster_hits(hits: Hits, card: DetectorCard, cfg: RecoConfig) -> np.ndarray:
    """DBSCAN label of every hit (-1 noise), unique over (event, TPC). Coordinates (u, v, d) cm
    with d = v_nom (tick + 1/2) dt, so ``eps_cm`` is a distance in space."""
    from sklearn.cluster import DBSCAN

    from ..detector import geometry as geo

    labels = np.full(hits.n, -1, np.int64)
    if hits.n == 0:
        return labels
    tpc, _, _ = geo.pixel_from_id(card, hits.pixel_id)
    c = geo.pixel_center(card, hits.pixel_id)
    pa = card.geometry.plane_axes
    d = nominal_drift_velocity(card) * (hits.tick + 0.5) * card.electronics.tick_us
    x = np.stack([c[:, pa[0]], c[:, pa[1]], d], 1)
    nxt = 0
    key = np.stack([hits.event_id, tpc], 1)
    for k in np.unique(key, axis=0):
        m = np.nonzero((key[:, 0] == k[0]) & (key[:, 1] == k[1]))[0]
        if m.size < cfg.min_samples:
            continue
        lab = DBSCAN(eps=cfg.eps_cm, min_samples=cfg.min_samples).fit_predict(x[m])
        ok = lab >= 0
        labels[m[ok]] = lab[ok] + nxt
        nxt += int(lab.max()) + 1 if ok.any() else 0
    return labels


def reconstruct(
    hits: Hits,
    card: DetectorCard,
    *,
    cuts: SelectionCuts | None = None,
    config: RecoConfig | None = None,
    t0: str | float = "file",
    t0_source: str = "file",
) -> RecoResult:
    """Hits -> selected segments (see the module docstring for ``t0``).

    cuts : the selection (default :class:`SelectionCuts`, the published one); pass
        ``SelectionCuts(min_angle_to_drift_deg=0, drift_window_cm=(0, 1e9))`` for no selection.
    """
    cfg = config or RecoConfig()
    cuts = cuts or SelectionCuts()
    if not (t0 in ("file", "crossing") or isinstance(t0, int | float)):
        raise ValueError(f"t0 must be 'file', 'crossing' or a number (us), got {t0!r}")
    h = hits.sorted()
    if isinstance(t0, int | float) and not isinstance(t0, bool):
        shift = round(float(t0) / card.electronics.tick_us)
        h = Hits(h.event_id, h.pixel_id, h.tick - shift, h.adc)
        t0_desc = f"option: {float(t0)} us subtracted from every hit time"
    else:
        t0_desc = f"{t0_source}: hit ticks measured from each event's t0"
    labels = cluster_hits(h, card, cfg)
    tracks: list[RecoTrack] = []
    n_cross = 0
    for lab in np.unique(labels[labels >= 0]):
        sub = Hits(*(a[labels == lab] for a in h))
        pts = hits_to_points(sub, card)
        if pts.n < cfg.min_points:
            continue
        tpc = int(np.bincount(pts.tpc).argmax())
        pts = pts.select(pts.tpc == tpc)
        if t0 == "crossing":
            t_c = crossing_t0(pts.t_first, card, tpc)
            if t_c is not None:
                pts = pts._replace(t_first=pts.t_first - t_c, t_last=pts.t_last - t_c)
                n_cross += 1
        tr = fit_track(pts, card, cfg, int(sub.event_id[0]), tpc)
        tr = tag_stopping(tr, card, cfg, cuts)
        tracks.append(apply_selection(tr, cuts))
    if t0 == "crossing":
        t0_desc = (f"crossing: t0 from the drift-time span of {n_cross} anode-cathode-crossing "
                   f"track(s); others: {t0_source}")
    reco = tracks_to_segments(tracks, card, cuts, cfg)
    attrs = {
        "t0_source": t0_desc,
        "v_drift_placement_cm_us": nominal_drift_velocity(card),
        "n_clusters": int(labels.max() + 1) if labels.size else 0,
        "n_tracks": len(tracks),
        "n_selected": int(sum(t.selected for t in tracks)),
        "n_stopping": int(sum(t.stopping and t.selected for t in tracks)),
        "n_segments": reco.segments.n,
        "length_cm": float(reco.segments.dx.sum()),
        "selection": str(cuts),
    }
    return RecoResult(reco, attrs)


@dataclass
class DataFile:
    """A detector file read for reconstruction: hits, card, format and t0 provenance."""

    hits: Hits
    card: DetectorCard
    kind: str  # "hits" | "packets" | "flow"
    t0_source: str
    hitfile: Any = None  # the HitFile for the package's own format


def load_data_many(paths: list[str | Path], card: DetectorCard | str | None = None, *,
                   layout: str | Path | None = None) -> DataFile:
    """Several detector files (any mix of the formats of :func:`load_data`) as one run: events
    renumbered after each other (:func:`lartpc_bayes.io.renumber_events`), one card for all (an
    :class:`~lartpc_bayes.io.IOFormatError` names the first file whose card differs)."""
    from ..io import merge_hit_files, renumber_events, require_one_card

    files = [load_data(p, card, layout=layout) for p in paths]
    if len(files) == 1:
        return files[0]
    names = [str(p) for p in paths]
    if all(f.hitfile is not None for f in files):  # merge_hit_files checks the cards
        hf = merge_hit_files([f.hitfile for f in files], names)
        return DataFile(hf.hits, hf.card, "hits", files[0].t0_source, hf)
    require_one_card([f.card for f in files], names)
    hits = Hits.concatenate(renumber_events([f.hits for f in files])[0]).sorted()
    kinds = sorted({f.kind for f in files})
    sources = "; ".join(sorted({f.t0_source for f in files}))
    return DataFile(hits, files[0].card, "+".join(kinds), sources)


def trigger_t0_ticks(path: str | Path) -> dict[int, int] | None:
    """Event t0 (ticks) from trigger packets (packet_type 7) of a LArPix file: event i is the
    i-th trigger, numbered in file order as :func:`lartpc_bayes.io.packets_to_hits` numbers
    timestamp runs. None when the file has no trigger packets."""
    import h5py

    with h5py.File(path, "r") as f:
        if "packets" not in f:
            return None
        p = f["packets"].fields(["packet_type", "timestamp"])[:]
    trig = p["timestamp"][p["packet_type"] == 7]
    if trig.size == 0:
        return None
    return {i: int(t) for i, t in enumerate(trig)}


def load_data(path: str | Path, card: DetectorCard | str | None = None, *,
              layout: str | Path | None = None) -> DataFile:
    """Read a detector file (format detected from its content) into hits for :func:`reconstruct`.

    Package hit file: root attribute ``format_version``; LArPix packets: ``packets`` dataset with
    a ``_header``; ndlar_flow: ``charge/calib_prompt_hits``. Packets and flow files carry no card:
    pass ``card`` (name or :class:`DetectorCard`; default ``module0``, or the ``card_name``
    written by :func:`lartpc_bayes.io.write_packets`).
    """
    import h5py

    from ..detector import load_card
    from ..io import IOFormatError, packets_to_hits, read_flow_hits, read_hits

    fname = str(path)
    try:
        with h5py.File(path, "r") as f:
            is_hits = "format_version" in f.attrs and "hits" in f
            is_packets = "packets" in f
            is_flow = "charge" in f and "calib_prompt_hits" in f["charge"]
            card_name = None
            if "lartpc_bayes" in f:
                cn = f["lartpc_bayes"].attrs.get("card_name")
                card_name = cn.decode() if isinstance(cn, bytes) else cn
    except OSError as exc:
        raise IOFormatError(f"{fname}: not a readable HDF5 file ({exc})") from exc
    if is_hits:
        hf = read_hits(path)
        return DataFile(hf.hits, hf.card, "hits", "hit file (ticks from the event t = 0)", hf)
    if isinstance(card, str) or card is None:
        card = load_card(card or card_name or "module0")
    if is_packets:
        trig = trigger_t0_ticks(path)
        hits = packets_to_hits(path, card, layout, event_t0_ticks=trig)
        with h5py.File(path, "r") as f:
            has_events = "lartpc_bayes" in f and "events" in f["lartpc_bayes"]
        src = ("packets: event t0 from the file's 'lartpc_bayes/events' table" if has_events
               else "packets: event t0 from trigger packets (type 7)" if trig
               else "packets: no trigger in the file, t0 = 0 (use --t0)")
        return DataFile(hits, card, "packets", src)
    if is_flow:
        return DataFile(read_flow_hits(path, card), card, "flow",
                        "ndlar_flow: 't_drift' measured from the flow event t0")
    raise IOFormatError(
        f"{fname}: not a hit file (root attribute 'format_version' + dataset 'hits'), LArPix "
        "packets (dataset 'packets') or ndlar_flow hits (dataset 'charge/calib_prompt_hits')"
    )
