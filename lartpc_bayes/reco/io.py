"""Reconstructed segments, tracks and their covariances to HDF5 (atomic: temp file + os.replace).

Layout::

    /segments   (N,) x/y/z_start, x/y/z_end [cm, card frame at v_nom], t_drift_start/_end [us],
                dE_placeholder [MeV], dx [cm], tpc, track, event_id, pdg_id
    /tracks     (T,) event, tpc, length_cm, angle_deg, stopping, selected, n_points,
                start/end (u, v, d_nominal) [cm], direction (3,)
    /cov_offset (T, 3, 3) cm^2, offset of the track line in (u, v, d_nominal), fit only
    /cov_dir    (T, 3, 3), covariance of the unit direction
    /card       the detector card (YAML); root attrs: the reconstruction attributes
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from ..detector import DetectorCard
from .pipeline import RecoResult

RECO_FORMAT = "lartpc_bayes.reco"


def write_reco(path: str | Path, res: RecoResult, card: DetectorCard) -> None:
    """Write ``res`` to ``path`` atomically (see the module docstring)."""
    import yaml

    from ..detector import card_to_dict

    r = res.reco
    s = r.segments
    seg = np.zeros(s.n, np.dtype([
        *((f"{c}_{w}", "f8") for w in ("start", "end") for c in "xyz"),
        ("t_drift_start", "f8"), ("t_drift_end", "f8"), ("dE_placeholder", "f8"), ("dx", "f8"),
        ("tpc", "i8"), ("track", "i8"), ("event_id", "i8"), ("pdg_id", "i8")]))
    for i, c in enumerate("xyz"):
        seg[f"{c}_start"], seg[f"{c}_end"] = s.start[:, i], s.end[:, i]
    seg["t_drift_start"], seg["t_drift_end"] = r.t_drift[:, 0], r.t_drift[:, 1]
    seg["dE_placeholder"], seg["dx"] = s.dE, s.dx
    seg["tpc"], seg["track"], seg["event_id"], seg["pdg_id"] = r.tpc, r.track, s.event_id, s.pdg_id
    T = len(r.tracks)
    trk = np.zeros(T, np.dtype([("event", "i8"), ("tpc", "i8"), ("length_cm", "f8"),
                                ("angle_deg", "f8"), ("stopping", "i1"), ("selected", "i1"),
                                ("n_points", "i8"), ("start", "f8", 3), ("end", "f8", 3),
                                ("direction", "f8", 3)]))
    for i, t in enumerate(r.tracks):
        trk[i] = (t.event, t.tpc, t.length, t.angle_deg, t.stopping, t.selected, t.points.n,
                  t.vertices[0], t.vertices[-1], t.direction)
    cov_o = np.stack([t.cov_offset for t in r.tracks]) if T else np.zeros((0, 3, 3))
    cov_d = np.stack([t.cov_dir for t in r.tracks]) if T else np.zeros((0, 3, 3))
    tmp, commit, abort = atomic_path(path)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = RECO_FORMAT
            f.attrs["format_version"] = 1
            for k, v in res.attrs.items():
                f.attrs[k] = v if isinstance(v, int | float | str) else str(v)
            f.create_dataset("segments", data=seg)
            f.create_dataset("tracks", data=trk)
            f.create_dataset("cov_offset", data=cov_o).attrs["units"] = "cm^2, (u, v, d_nominal)"
            f.create_dataset("cov_dir", data=cov_d)
            f.create_dataset("card", data=yaml.safe_dump(card_to_dict(card), sort_keys=False),
                             dtype=h5py.string_dtype("utf-8"))
        commit()
    except BaseException:
        abort()
        raise


def read_reco(path: str | Path) -> dict[str, np.ndarray]:
    """The datasets of a file written by :func:`write_reco` (plus ``attrs``)."""
    from ..io import IOFormatError

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != RECO_FORMAT:
            raise IOFormatError(f"{path}: root attribute 'format' is not {RECO_FORMAT!r}")
        out = {k: f[k][()] for k in ("segments", "tracks", "cov_offset", "cov_dir")}
        out["attrs"] = dict(f.attrs)
    return out


def atomic_path(path: str | Path):
    """(temporary path beside ``path``, commit function doing os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)

    def commit() -> None:
        os.replace(tmp, path)

    def abort() -> None:
        if os.path.exists(tmp):
            os.unlink(tmp)

    return tmp, commit, abort
