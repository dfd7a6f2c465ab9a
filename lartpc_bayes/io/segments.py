"""larnd-sim ``segments`` (read by :func:`read_segments`, written by :func:`write_segments`)
-----------------------------------------------------------------------------------------
Both dtype conventions are read (shared/references/larnd-sim.md section 3.1):

* new (``cli/dumpTree.py``): ``event_id, traj_id, pdg_id, dE, x/y/z_start, x/y/z_end, t0, ...``;
* old (ynashed/larnd-sim test inputs): ``eventID, trackID, pdgId, dE, ...`` and no ``t0`` fields.

Units: positions cm, ``dE`` MeV, ``t0`` us (deposition time). The deposition time is taken from
``t0``; old files without it use ``t0_start`` when present, else 0 us (the ``t, t_start, t_end``
fields are anode *arrival* times filled by larnd-sim, never deposition times). Track ids are made
unique per (event, trajectory) pair: ``Segments.track_id`` is the dense index 0..K-1 of the pair in
(event, traj) order, because larnd-sim ``traj_id`` restarts in every event.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import Segments
from .common import IOFormatError, _atomic_h5, _get_dataset, _open_read, _read_fields, _swap_xz

#: larnd-sim ``segments`` dtype, new convention (``cli/dumpTree.py`` ``segments_dtype``, aligned).
SEGMENTS_DTYPE = np.dtype(
    [
        ("event_id", "u4"), ("vertex_id", "u8"), ("file_vertex_id", "u8"), ("segment_id", "u4"),
        ("z_end", "f4"), ("traj_id", "u4"), ("file_traj_id", "u4"), ("tran_diff", "f4"),
        ("z_start", "f4"), ("x_end", "f4"), ("y_end", "f4"), ("n_electrons", "u4"),
        ("pdg_id", "i4"), ("x_start", "f4"), ("y_start", "f4"), ("t_start", "f4"),
        ("t0_start", "f8"), ("t0_end", "f8"), ("t0", "f8"), ("dx", "f4"), ("long_diff", "f4"),
        ("pixel_plane", "i4"), ("t_end", "f4"), ("dEdx", "f4"), ("dE", "f4"), ("t", "f4"),
        ("y", "f4"), ("x", "f4"), ("z", "f4"), ("n_photons", "f4"),
    ],
    align=True,
)


_POS_FIELDS = ("x_start", "y_start", "z_start", "x_end", "y_end", "z_end")


def read_segments(
    path: str | Path, *, swap_xz: bool | None = None, dataset: str = "segments"
) -> Segments:
    """Read a larnd-sim / edep-sim ``segments`` dataset into :class:`Segments`.

    Parameters
    ----------
    path : HDF5 file.
    swap_xz : swap x and z (edep-sim frame -> larnd-sim internal frame of our cards). ``None``
        (default) swaps unless the dataset has a false ``zbeam`` attribute; larnd-sim inputs are in
        the edep-sim frame and larnd-sim outputs mark their copy ``zbeam=True``.
    dataset : dataset name.

    Returns positions in cm, ``dE`` in MeV, ``t0`` in us (``t0``, else ``t0_start``, else 0), track
    ids unique per (event, trajectory). Raises :class:`IOFormatError` naming the file and field for
    a missing field, a non-numeric field, NaN/inf values or negative ``dE``.
    """
    fname = str(path)
    where = f"{fname}:{dataset}"
    with _open_read(path) as f:
        ds = _get_dataset(f, dataset, fname)
        cols = _read_fields(
            ds,
            {
                "event": (("event_id", "eventID"), True, True),
                "traj": (("traj_id", "trackID"), True, True),
                "pdg": (("pdg_id", "pdgId"), True, True),
                "dE": (("dE",), True, False),
                **{k: ((k,), True, False) for k in _POS_FIELDS},
                "t0": (("t0", "t0_start"), False, False),
            },
            where,
        )
        if swap_xz is None:
            zbeam = ds.attrs.get("zbeam", True)
            swap_xz = bool(np.asarray(zbeam).item()) if np.size(zbeam) == 1 else True
        n = int(ds.shape[0])

    def pos(which: str) -> np.ndarray:
        a = np.stack([np.asarray(cols[f"{c}_{which}"], np.float64) for c in "xyz"], axis=-1)
        return _swap_xz(a) if swap_xz else a

    event = np.asarray(cols["event"]).astype(np.int64)
    traj = np.asarray(cols["traj"]).astype(np.int64)
    if n:
        _, track = np.unique(np.stack([event, traj], axis=1), axis=0, return_inverse=True)
        track = track.reshape(-1).astype(np.int64)
    else:
        track = np.zeros(0, np.int64)
    t0 = cols["t0"]
    seg = Segments(
        start=pos("start").reshape(n, 3),
        end=pos("end").reshape(n, 3),
        dE=np.asarray(cols["dE"], np.float64),
        t0=np.zeros(n) if t0 is None else np.asarray(t0, np.float64),
        track_id=track,
        event_id=event,
        pdg_id=np.asarray(cols["pdg"]).astype(np.int64),
    )
    try:
        return seg.validate(where)
    except ValueError as exc:
        raise IOFormatError(str(exc)) from exc


def write_segments(
    path: str | Path, segments: Segments, *, swap_xz: bool = True, dataset: str = "segments"
) -> None:
    """Write :class:`Segments` as a larnd-sim ``segments`` dataset (new dtype convention); atomic.

    Positions are written back in the edep-sim frame (x <-> z swapped, attribute ``zbeam=True``)
    unless ``swap_xz=False`` (then ``zbeam=False``), so that :func:`read_segments` round-trips and
    the file can be given to larnd-sim. Fields we do not model (vertex ids, ``n_electrons``,
    diffusion, arrival times ``t``/``t_start``/``t_end``, ``pixel_plane``, ``n_photons``) are 0, as
    on larnd-sim input; ``traj_id`` = ``file_traj_id`` = our track id, ``segment_id`` = row index,
    ``t0_start`` = ``t0_end`` = ``t0`` [us], ``dx`` [cm] and ``dEdx`` [MeV/cm] from the segment,
    (x, y, z) = midpoint [cm]. Stored as float32 / uint32 as larnd-sim does; event and track ids
    must lie in [0, 2^32).
    """
    seg = segments.validate("segments")
    for name in ("event_id", "track_id"):
        a = np.asarray(getattr(seg, name))
        if seg.n and (a.min() < 0 or a.max() >= 2**32):
            raise ValueError(
                f"segments: field '{name}' must lie in [0, 2^32) for the larnd-sim dtype"
            )
    start = _swap_xz(seg.start) if swap_xz else np.asarray(seg.start)
    end = _swap_xz(seg.end) if swap_xz else np.asarray(seg.end)
    mid = 0.5 * (start + end)
    rec = np.zeros(seg.n, dtype=SEGMENTS_DTYPE)
    rec["event_id"] = seg.event_id
    rec["segment_id"] = np.arange(seg.n)
    rec["traj_id"] = seg.track_id
    rec["file_traj_id"] = seg.track_id
    rec["pdg_id"] = seg.pdg_id
    for i, c in enumerate("xyz"):
        rec[f"{c}_start"] = start[:, i]
        rec[f"{c}_end"] = end[:, i]
        rec[c] = mid[:, i]
    rec["t0_start"] = seg.t0
    rec["t0_end"] = seg.t0
    rec["t0"] = seg.t0
    rec["dx"] = seg.dx
    rec["dEdx"] = seg.dEdx
    rec["dE"] = seg.dE
    with _atomic_h5(path) as f:
        ds = f.create_dataset(dataset, data=rec)
        ds.attrs["zbeam"] = bool(swap_xz)
        ds.attrs["note"] = (
            "written by lartpc_bayes.io.write_segments; positions in cm in the edep-sim frame "
            "(beam z, drift x)" if swap_xz else
            "written by lartpc_bayes.io.write_segments; positions in cm in the larnd-sim internal "
            "frame (drift z)"
        )
        ds.attrs["units"] = "positions cm, dE MeV, dx cm, dEdx MeV/cm, t0 us"
