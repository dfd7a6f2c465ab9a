"""HDF5 I/O: larnd-sim segments, the package's own hit files, LArPix packets, ndlar_flow hits.

Everything here runs on the host (NumPy + h5py). Malformed input raises :class:`IOFormatError` (a
``ValueError``) whose message names the file and the offending dataset or field; a file that is not
HDF5, or is truncated, raises it naming the file. Every write is atomic: the file is written under a
temporary name in the destination directory and moved into place with :func:`os.replace` only when
complete, so an interrupted or failed write never leaves a half-written output and never touches an
existing file of the same name.

Coordinate frames
-----------------
Our cards use larnd-sim's *internal* frame (drift axis z, anode plane (x, y)). larnd-sim *input*
files (edep-sim ``segments``) are in the edep-sim frame (beam axis z, drift axis x); larnd-sim swaps
x and z on reading (``cli/simulate_pixels.py::swap_coordinates``) and swaps them back when it copies
the segments to its output, marking the dataset ``zbeam=True``. :func:`read_segments` therefore
swaps x and z by default, unless the dataset carries ``zbeam`` = False; :func:`write_segments` swaps
back and sets ``zbeam=True``. ndlar_flow hits use the same edep-like frame (x = drift, z = beam).

larnd-sim ``segments`` (read by :func:`read_segments`, written by :func:`write_segments`)
-----------------------------------------------------------------------------------------
Both dtype conventions are read (shared/references/larnd-sim.md section 3.1):

* new (``cli/dumpTree.py``): ``event_id, traj_id, pdg_id, dE, x/y/z_start, x/y/z_end, t0, ...``;
* old (ynashed/larnd-sim test inputs): ``eventID, trackID, pdgId, dE, ...`` and no ``t0`` fields.

Units: positions cm, ``dE`` MeV, ``t0`` us (deposition time). The deposition time is taken from
``t0``; old files without it use ``t0_start`` when present, else 0 us (the ``t, t_start, t_end``
fields are anode *arrival* times filled by larnd-sim, never deposition times). Track ids are made
unique per (event, trajectory) pair: ``Segments.track_id`` is the dense index 0..K-1 of the pair in
(event, traj) order, because larnd-sim ``traj_id`` restarts in every event.

Own hit files (:func:`write_hits`, :func:`read_hits`), ``format_version`` 1
---------------------------------------------------------------------------
::

    /                     attrs: format = "lartpc_bayes.hits", format_version = 1,
                                 created_unix [s], lartpc_bayes_version, card_name,
                                 + user attributes (``extra_attrs``)
    /hits                 (H,) compound: event_id i8, pixel_id i8, tick i8, adc i2
                          attrs: tick_us [us]; tick = trigger (threshold-crossing) tick counted from
                          the event's t = 0; pixel_id = global id of lartpc_bayes.geometry
    /card                 scalar UTF-8 string: the detector card as YAML (card_to_dict, safe_dump)
    /truth                (optional group) attrs: seed (i8, when given)
    /truth/segments       (N,) compound: event_id i8, track_id i8, pdg_id i8,
                          x_start, y_start, z_start, x_end, y_end, z_end f8 [cm, card frame],
                          dE f8 [MeV], t0 f8 [us]
    /truth/dEdx           (N,) f8, true dE/dx per segment [MeV/cm] (same length as truth/segments
                          when both are stored)
    /truth/params         group, one f8 attribute per true parameter (physical units of the card)

On reading, the card is re-parsed with :func:`lartpc_bayes.detector.parse_card` and the hits are
checked against it (ADC in 0..2^bits-1, pixel ids in range).

LArPix packets (:func:`write_packets`, :func:`packets_to_hits`)
--------------------------------------------------------------
larpix-control HDF5 format 2.4: ``/_header`` (attrs ``version`` = "2.4", ``created``,
``modified``), ``/packets`` (the 22-field dtype :data:`PACKET_DTYPE`), ``/messages`` and
``/configs`` (empty, with the format's dtypes). One data packet (``packet_type`` 0) per hit with
``dataword`` = ADC and ``timestamp`` = (event t0 + trigger tick + hold window) mod the PPS period,
in ticks of ``tick_us`` (1e7 ticks = 1 s at 0.1 us). The hold window (``hold_ticks``, 18 ticks for
LArPix-v2) is added because the chip stamps a packet when the held sample is digitised, not at the
threshold crossing; larnd-sim's packet time is likewise the end of the integration window. Before
each event's data packets, one timestamp packet (``packet_type`` 4) per io_group in use, carrying
the event t0 in whole seconds as larnd-sim writes it. Parity is LArPix-v2 odd parity over the
64-bit word (bit layout of ``larpix.packet.Packet_v2``); ``valid_parity`` = 1. larnd-sim's
``mc_packets_assn`` is written with the event id of every data packet (-1 for other packets) and
no back-tracking (segment ids -1, fractions 0). A ``/lartpc_bayes`` group stores the event t0s,
the mapping used and the hold window, so that :func:`packets_to_hits` inverts the file exactly.

Chip/channel mapping: with a larnd-sim ``multi_tile_layout`` YAML the mapping of larnd-sim
``fee.export_to_hdf5`` is reproduced (card TPC t = larnd-sim pixel plane t; module t // n_anodes
+ 1; tile from ``tile_map``; tile-local index flipped where ``tile_orientations`` is -1;
(chip, channel) from ``chip_channel_to_position``; io_group/io_channel from ``tile_chip_to_io``
and ``module_to_io_groups``). ``tile_map`` and ``module_to_io_groups`` live in larnd-sim's
detector-properties YAML (``detprop``); when it is not given they are taken from the layout when
present, the tile map is otherwise derived from ``tile_positions`` (it is the geometric order of
the tiles) and io groups default to (2m-1, 2m) for module m. Without a layout, a documented
*synthetic* mapping is used (not a real detector wiring): io_group = tpc + 1; the TPC's pixel grid
is cut into 8 x 8 blocks, block b = bx + nbx * by (bx = ix // 8, by = iy // 8), one chip per block
with ``chip_id`` = 11 + b mod 100, ``io_channel`` = 1 + b // 100, ``channel_id`` = (ix mod 8) +
8 (iy mod 8).

ndlar_flow hits (:func:`read_flow_hits`)
----------------------------------------
``charge/calib_prompt_hits`` (h5flow layout ``.../data``, or a plain dataset): pixel centres
(x, y, z) cm are mapped to our pixel ids through the card geometry (flow x = drift), ``Q`` [ke] is
converted back to ADC with the card's electronics, and ``t_drift`` [ticks of 0.1 us, packet time
minus event t0] gives the trigger tick after subtracting the hold window.
"""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ..data import Hits, Segments
from ..detector import CardError, DetectorCard, card_to_dict, parse_card
from ..detector.geometry import (
    pixel_from_id,
    pixel_id,
    pixel_in_range,
    tpc_id_offsets,
    tpc_pixel_counts,
)

__all__ = [
    "HITS_FORMAT_VERSION",
    "PACKET_DTYPE",
    "SEGMENTS_DTYPE",
    "HitFile",
    "IOFormatError",
    "packets_to_hits",
    "read_flow_hits",
    "read_hits",
    "read_segments",
    "write_hits",
    "write_packets",
    "write_segments",
]

#: Version of the package's own hit-file layout (module docstring).
HITS_FORMAT_VERSION = 1
_HITS_FORMAT = "lartpc_bayes.hits"

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

#: larpix-control HDF5 format 2.4 ``packets`` dtype (``larpix/format/hdf5format.py``).
PACKET_DTYPE = np.dtype(
    [
        ("io_group", "u1"), ("io_channel", "u1"), ("chip_id", "u1"), ("packet_type", "u1"),
        ("downstream_marker", "u1"), ("parity", "u1"), ("valid_parity", "u1"),
        ("channel_id", "u1"), ("timestamp", "u8"), ("dataword", "u1"), ("trigger_type", "u1"),
        ("local_fifo", "u1"), ("shared_fifo", "u1"), ("register_address", "u1"),
        ("register_data", "u1"), ("direction", "u1"), ("local_fifo_events", "u1"),
        ("shared_fifo_events", "u2"), ("counter", "u4"), ("fifo_diagnostics_enabled", "u1"),
        ("first_packet", "u1"), ("receipt_timestamp", "u4"),
    ]
)
#: larpix-control format 2.x ``messages`` dtype.
MESSAGE_DTYPE = np.dtype([("message", "S64"), ("timestamp", "u8"), ("index", "u4")])
#: larpix-control format 2.4 ``configs`` dtype (239 = LightPix-v1 register count, the maximum).
CONFIG_DTYPE = np.dtype(
    [("timestamp", "u8"), ("io_group", "u1"), ("io_channel", "u1"), ("chip_id", "u1"),
     ("registers", "(239,)u1")]
)
#: larnd-sim ``mc_packets_assn`` dtype (ASSOCIATION_COUNT_TO_STORE = 20).
MC_ASSN_DTYPE = np.dtype(
    [("event_ids", "(1,)i8"), ("segment_ids", "(20,)i8"), ("fraction", "(20,)f8"),
     ("file_traj_ids", "(20,)i8"), ("fraction_traj", "(20,)f8")]
)
_PACKET_TYPES_ATTR = (
    "\n0: 'data',\n1: 'test',\n2: 'config write',\n3: 'config read',\n4: 'timestamp',\n"
    "5: 'message',\n6: 'sync',\n7: 'trigger',\n"
)

#: PPS rollover period of the LArPix timestamp (larnd-sim ``CLOCK_RESET_PERIOD`` = 1 s).
PPS_PERIOD_US = 1.0e6
#: Default spacing of event t0s when none are given: larnd-sim EVENT_RATE mean, 1e5 us (10 Hz).
DEFAULT_EVENT_SPACING_US = 1.0e5

# synthetic chip/channel mapping (module docstring)
_SYN_BLOCK = 8
_SYN_CHIPS_PER_IO = 100
_SYN_FIRST_CHIP = 11

_HIT_FIELDS = (("event_id", "i8"), ("pixel_id", "i8"), ("tick", "i8"), ("adc", "i2"))
_TRUTH_SEG_DTYPE = np.dtype(
    [("event_id", "i8"), ("track_id", "i8"), ("pdg_id", "i8"), ("x_start", "f8"),
     ("y_start", "f8"), ("z_start", "f8"), ("x_end", "f8"), ("y_end", "f8"), ("z_end", "f8"),
     ("dE", "f8"), ("t0", "f8")]
)
_POS_FIELDS = ("x_start", "y_start", "z_start", "x_end", "y_end", "z_end")
_RESERVED_ATTRS = ("format", "format_version", "created_unix", "lartpc_bayes_version", "card_name")


class IOFormatError(ValueError):
    """A file is malformed; the message names the file and the dataset or field."""


# ------------------------------------------------------------------------------------------------
# low-level helpers
# ------------------------------------------------------------------------------------------------


@contextmanager
def _open_read(path: str | Path) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; non-HDF5, truncated or damaged files raise IOFormatError."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise IOFormatError(
            f"{p}: not a readable HDF5 file (not HDF5, truncated or corrupt): {exc}"
        ) from exc
    try:
        yield f
    except OSError as exc:  # a read from a damaged file fails later than the open
        raise IOFormatError(f"{p}: HDF5 read failed (truncated or corrupt file?): {exc}") from exc
    finally:
        f.close()


@contextmanager
def _atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Yield a new HDF5 file that replaces ``path`` atomically when the block succeeds.

    The file is written as ``.<name>.<random>.tmp`` in the destination directory, flushed to disk
    and moved over ``path`` with :func:`os.replace`. On any exception the temporary file is removed
    and an existing ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"{target}: directory {directory} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a directory")
    tmp = directory / f".{target.name}.{uuid.uuid4().hex}.tmp"
    f: h5py.File | None = None
    try:
        f = h5py.File(tmp, "x")
        yield f
        f.close()
        f = None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if f is not None:
            try:
                f.close()
            except Exception:  # the original exception matters, not a failing close
                pass
        tmp.unlink(missing_ok=True)
        raise


def _get_dataset(f: h5py.File, name: str, fname: str) -> h5py.Dataset:
    if name not in f:
        raise IOFormatError(f"{fname}: missing dataset '{name}'")
    obj = f[name]
    if isinstance(obj, h5py.Group) and "data" in obj and isinstance(obj["data"], h5py.Dataset):
        obj = obj["data"]  # h5flow layout: /<path>/data
    if not isinstance(obj, h5py.Dataset):
        raise IOFormatError(f"{fname}: '{name}' is not a dataset")
    if obj.dtype.names is None:
        raise IOFormatError(f"{fname}: dataset '{name}' is not a compound (structured) dataset")
    if obj.ndim != 1:
        raise IOFormatError(f"{fname}: dataset '{name}' must be one-dimensional, shape {obj.shape}")
    return obj


def _pick(names: tuple[str, ...] | list[str], candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        if c in names:
            return c
    return None


def _check_numeric(
    arr: np.ndarray, field_: str, where: str, *, integer: bool = False
) -> np.ndarray:
    """Check dtype kind (and finiteness for floats); raise IOFormatError naming the field."""
    kinds = "iu" if integer else "iuf"
    if arr.dtype.kind not in kinds or arr.dtype.subdtype is not None:
        want = "an integer" if integer else "a numeric"
        raise IOFormatError(f"{where}: field '{field_}' must have {want} dtype, got {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if np.any(bad):
            raise IOFormatError(
                f"{where}: field '{field_}' contains {int(bad.sum())} NaN/inf value(s) "
                f"(first at row {int(np.argmax(bad))})"
            )
    return arr


def _read_fields(
    ds: h5py.Dataset, wanted: dict[str, tuple[tuple[str, ...], bool, bool]], where: str
) -> dict[str, np.ndarray | None]:
    """Read the first present alias of each wanted field.

    wanted: key -> (aliases, required, integer). Returns key -> array (None for absent optional).
    """
    names = ds.dtype.names or ()
    chosen: dict[str, str | None] = {}
    for key, (aliases, required, _) in wanted.items():
        name = _pick(names, aliases)
        if name is None and required:
            alt = " or ".join(f"'{a}'" for a in aliases)
            raise IOFormatError(f"{where}: missing field {alt}")
        chosen[key] = name
    present = sorted({n for n in chosen.values() if n is not None})
    for n in present:
        if ds.dtype[n].kind not in "iuf" or ds.dtype[n].subdtype is not None:
            raise IOFormatError(f"{where}: field '{n}' must be numeric, got dtype {ds.dtype[n]}")
    data = ds.fields(present)[:] if present and ds.shape[0] else np.zeros(0, ds.dtype)
    out: dict[str, np.ndarray | None] = {}
    for key, name in chosen.items():
        if name is None:
            out[key] = None
            continue
        out[key] = _check_numeric(np.asarray(data[name]), name, where, integer=wanted[key][2])
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("lartpc_bayes")
    except Exception:
        return "unknown"


def _as_int_array(a: Any, name: str, n: int | None, where: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(
            f"{where}: field '{name}' must be 1-D of length {n}, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: field '{name}' must be integer, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _validate_hits(hits: Hits, card: DetectorCard, where: str, err: type[ValueError]) -> Hits:
    """Hits as int64 arrays, checked against the card (equal lengths, ADC range, pixel ids)."""
    try:
        n = int(np.shape(hits.pixel_id)[0])
        h = Hits(*(_as_int_array(getattr(hits, k), k, n, where) for k in Hits._fields))
    except (ValueError, IndexError) as exc:
        raise err(str(exc)) from exc
    top = card.electronics.adc_counts - 1
    if h.n and (h.adc.min() < 0 or h.adc.max() > top):
        raise err(
            f"{where}: field 'adc' outside 0..{top} (2^{card.electronics.adc_bits} - 1): "
            f"range [{h.adc.min()}, {h.adc.max()}]"
        )
    n_pix = int(tpc_id_offsets(card)[-1])
    if h.n and (h.pixel_id.min() < 0 or h.pixel_id.max() >= n_pix):
        raise err(
            f"{where}: field 'pixel_id' outside [0, {n_pix}) of card {card.name!r}: "
            f"range [{h.pixel_id.min()}, {h.pixel_id.max()}]"
        )
    return h


def _swap_xz(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[..., [2, 1, 0]]


# ------------------------------------------------------------------------------------------------
# larnd-sim segments
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# own hit files
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HitFile:
    """Contents of a hit file written by :func:`write_hits`.

    hits        : the hits (int64 columns).
    card        : detector card re-parsed from the stored YAML.
    segments    : true segments (card frame, cm / MeV / us) or None.
    true_dEdx   : (N,) true dE/dx per segment [MeV/cm] or None.
    true_params : true parameter values (physical units) or None.
    seed        : random seed of the simulation or None.
    attrs       : all root attributes (format, format_version, created_unix, ..., user attributes).
    """

    hits: Hits
    card: DetectorCard
    segments: Segments | None = None
    true_dEdx: np.ndarray | None = None
    true_params: dict[str, float] | None = None
    seed: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


def _card_yaml(card: DetectorCard) -> str:
    return yaml.safe_dump(card_to_dict(card), sort_keys=False)


def _write_card_text(f: h5py.File, card: DetectorCard) -> None:
    f.create_dataset("card", data=_card_yaml(card), dtype=h5py.string_dtype("utf-8"))


def _write_truth(
    f: h5py.File,
    segments: Segments | None,
    true_dEdx: np.ndarray | None,
    true_params: Mapping[str, float] | None,
    seed: int | None,
) -> None:
    if segments is None and true_dEdx is None and true_params is None and seed is None:
        return
    g = f.create_group("truth")
    if seed is not None:
        g.attrs["seed"] = np.int64(seed)
    if segments is not None:
        rec = np.zeros(segments.n, dtype=_TRUTH_SEG_DTYPE)
        for k in ("event_id", "track_id", "pdg_id", "dE", "t0"):
            rec[k] = getattr(segments, k)
        for i, c in enumerate("xyz"):
            rec[f"{c}_start"] = segments.start[:, i]
            rec[f"{c}_end"] = segments.end[:, i]
        ds = g.create_dataset("segments", data=rec)
        ds.attrs["units"] = "positions cm (card frame), dE MeV, t0 us"
    if true_dEdx is not None:
        ds = g.create_dataset("dEdx", data=np.asarray(true_dEdx, np.float64))
        ds.attrs["units"] = "MeV/cm"
    if true_params is not None:
        p = g.create_group("params", track_order=True)
        for k, v in true_params.items():
            p.attrs[k] = np.float64(v)


def write_hits(
    path: str | Path,
    hits: Hits,
    *,
    card: DetectorCard,
    segments: Segments | None = None,
    true_dEdx: np.ndarray | None = None,
    true_params: Mapping[str, float] | None = None,
    seed: int | None = None,
    extra_attrs: Mapping[str, Any] | None = None,
) -> None:
    """Write hits and (optionally) the truth to a hit file (layout in the module docstring); atomic.

    hits        : :class:`Hits` valid for ``card`` (ADC in 0..2^bits-1, pixel ids in range).
    card        : detector card, stored as YAML text.
    segments    : true segments (card frame; cm, MeV, us).
    true_dEdx   : (N,) true dE/dx per segment [MeV/cm]; same length as ``segments`` when both given.
    true_params : true parameter values (finite floats, physical units).
    seed        : random seed of the simulation (int).
    extra_attrs : extra root attributes (names must not clash with the reserved ones).

    Invalid input raises ValueError naming the field; nothing is written then.
    """
    where = "write_hits"
    h = _validate_hits(hits, card, where, ValueError)
    if segments is not None:
        segments = segments.validate(f"{where}: segments")
    if true_dEdx is not None:
        d = np.asarray(true_dEdx)
        if d.ndim != 1 or d.dtype.kind not in "iuf" or not np.all(np.isfinite(d)):
            raise ValueError(f"{where}: field 'true_dEdx' must be a finite 1-D numeric array")
        if segments is not None and d.shape[0] != segments.n:
            raise ValueError(
                f"{where}: field 'true_dEdx' has {d.shape[0]} entries for {segments.n} segments"
            )
    if true_params is not None:
        for k, v in true_params.items():
            ok = isinstance(k, str) and isinstance(v, int | float | np.number)
            if not ok or isinstance(v, bool) or not np.isfinite(float(v)):
                raise ValueError(
                    f"{where}: true parameter {k!r} must be a finite number, got {v!r}"
                )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ValueError(f"{where}: 'seed' must be an integer, got {seed!r}")
    extra = dict(extra_attrs or {})
    clash = sorted(set(extra) & set(_RESERVED_ATTRS))
    if clash:
        raise ValueError(f"{where}: extra_attrs may not set reserved attribute(s) {clash}")

    rec = np.zeros(h.n, dtype=np.dtype(list(_HIT_FIELDS)))
    for k in Hits._fields:
        rec[k] = getattr(h, k)
    with _atomic_h5(path) as f:
        f.attrs["format"] = _HITS_FORMAT
        f.attrs["format_version"] = np.int64(HITS_FORMAT_VERSION)
        f.attrs["created_unix"] = time.time()
        f.attrs["lartpc_bayes_version"] = _package_version()
        f.attrs["card_name"] = card.name
        for k, v in extra.items():
            f.attrs[k] = v
        ds = f.create_dataset("hits", data=rec)
        ds.attrs["tick_us"] = card.electronics.tick_us
        ds.attrs["units"] = "tick: trigger tick of tick_us from the event t = 0; adc: ADC code"
        _write_card_text(f, card)
        _write_truth(f, segments, true_dEdx, true_params, seed)


def _attr_to_py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_hits(path: str | Path) -> HitFile:
    """Read a hit file written by :func:`write_hits` and validate it against its stored card.

    Raises :class:`IOFormatError` naming the file and the dataset/field for: a non-HDF5 or truncated
    file, a missing or newer ``format_version``, a missing ``hits``/``card`` dataset or field, a
    non-integer hit field, ADC codes outside 0..2^bits-1, pixel ids outside the card, or malformed
    truth.
    """
    fname = str(path)
    with _open_read(path) as f:
        attrs = {k: _attr_to_py(v) for k, v in f.attrs.items()}
        if "format_version" not in attrs:
            raise IOFormatError(
                f"{fname}: missing root attribute 'format_version' (not a hit file?)"
            )
        ver = attrs["format_version"]
        if not isinstance(ver, int | np.integer) or not 1 <= int(ver) <= HITS_FORMAT_VERSION:
            raise IOFormatError(
                f"{fname}: attribute 'format_version' = {ver!r} not supported (this reader knows "
                f"1..{HITS_FORMAT_VERSION})"
            )
        if "card" not in f or not isinstance(f["card"], h5py.Dataset):
            raise IOFormatError(f"{fname}: missing dataset 'card'")
        raw = f["card"][()]
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        try:
            card = parse_card(yaml.safe_load(text), f"{fname}:card")
        except (CardError, yaml.YAMLError) as exc:
            raise IOFormatError(f"{fname}: dataset 'card' is not a valid card: {exc}") from exc

        ds = _get_dataset(f, "hits", fname)
        cols = _read_fields(
            ds, {k: ((k,), True, True) for k, _ in _HIT_FIELDS}, f"{fname}:hits"
        )
        hits = _validate_hits(
            Hits(*(np.asarray(cols[k]) for k in Hits._fields)), card, f"{fname}:hits", IOFormatError
        )

        segments = true_dEdx = true_params = seed = None
        if "truth" in f:
            g = f["truth"]
            if not isinstance(g, h5py.Group):
                raise IOFormatError(f"{fname}: 'truth' must be a group")
            if "seed" in g.attrs:
                s = _attr_to_py(g.attrs["seed"])
                if not isinstance(s, int):
                    raise IOFormatError(
                        f"{fname}: attribute 'truth.seed' must be an integer, got {s!r}"
                    )
                seed = s
            if "segments" in g:
                segments = _read_truth_segments(g, fname)
            if "dEdx" in g:
                d = g["dEdx"]
                if not isinstance(d, h5py.Dataset) or d.ndim != 1:
                    raise IOFormatError(f"{fname}: dataset 'truth/dEdx' must be 1-D")
                true_dEdx = _check_numeric(
                    np.asarray(d[:]), "dEdx", f"{fname}:truth"
                ).astype(np.float64)
                if segments is not None and true_dEdx.shape[0] != segments.n:
                    raise IOFormatError(
                        f"{fname}: dataset 'truth/dEdx' has {true_dEdx.shape[0]} entries for "
                        f"{segments.n} segments"
                    )
            if "params" in g:
                true_params = {}
                for k, v in g["params"].attrs.items():
                    val = _attr_to_py(v)
                    is_num = isinstance(val, int | float) and not isinstance(val, bool)
                    if not is_num or not np.isfinite(val):
                        raise IOFormatError(
                            f"{fname}: true parameter 'truth/params.{k}' must be a finite number"
                        )
                    true_params[k] = float(val)
    return HitFile(hits, card, segments, true_dEdx, true_params, seed, attrs)


def _read_truth_segments(g: h5py.Group, fname: str) -> Segments:
    where = f"{fname}:truth/segments"
    ds = _get_dataset(g, "segments", where)
    cols = _read_fields(
        ds,
        {n: ((n,), True, n in ("event_id", "track_id", "pdg_id")) for n in _TRUTH_SEG_DTYPE.names},
        where,
    )
    n = int(ds.shape[0])

    def pos(which: str) -> np.ndarray:
        a = np.stack([np.asarray(cols[f"{c}_{which}"], np.float64) for c in "xyz"], -1)
        return a.reshape(n, 3)

    seg = Segments(
        pos("start"), pos("end"), np.asarray(cols["dE"], np.float64),
        np.asarray(cols["t0"], np.float64), np.asarray(cols["track_id"]).astype(np.int64),
        np.asarray(cols["event_id"]).astype(np.int64), np.asarray(cols["pdg_id"]).astype(np.int64),
    )
    try:
        return seg.validate(where)
    except ValueError as exc:
        raise IOFormatError(str(exc)) from exc


# ------------------------------------------------------------------------------------------------
# chip / channel mapping
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ChannelMap:
    """Vectorised pixel -> (io_group, io_channel, chip_id, channel_id) mapping for one card."""

    kind: str  # "synthetic" or "layout"
    source: str
    # layout mapping tables (unused for the synthetic mapping)
    n_anodes: int = 0
    tile_shape: tuple[int, int] = (0, 0)
    tile_map: np.ndarray | None = None  # (n_anodes, ntx, nty) tile ids
    flip: np.ndarray | None = None  # (max_tile+1, 2) bool: flip local x, y
    conn: np.ndarray | None = None  # (nx_tile, ny_tile) chip*1000+channel, -1 if unconnected
    io_code: np.ndarray | None = None  # (max_tile+1, 256) io_group_local*1000+io_channel or -1
    io_groups: np.ndarray | None = None  # (max_module+1, max_local+1) global io_group or -1

    def forward(self, card: DetectorCard, tpc: np.ndarray, ix: np.ndarray, iy: np.ndarray):
        """(io_group, io_channel, chip_id, channel_id) int64 arrays, -1 where unconnected."""
        tpc, ix, iy = (np.asarray(a, np.int64) for a in (tpc, ix, iy))
        if self.kind == "synthetic":
            nbx = -(-tpc_pixel_counts(card)[tpc, 0] // _SYN_BLOCK)
            b = ix // _SYN_BLOCK + nbx * (iy // _SYN_BLOCK)
            return (
                tpc + 1,
                1 + b // _SYN_CHIPS_PER_IO,
                _SYN_FIRST_CHIP + b % _SYN_CHIPS_PER_IO,
                ix % _SYN_BLOCK + _SYN_BLOCK * (iy % _SYN_BLOCK),
            )
        assert self.tile_map is not None and self.flip is not None and self.conn is not None
        assert self.io_code is not None and self.io_groups is not None
        nx, ny = self.tile_shape
        module = tpc // self.n_anodes + 1
        tile = self.tile_map[tpc % self.n_anodes, ix // nx, iy // ny]
        lx, ly = ix % nx, iy % ny
        lx = np.where(self.flip[tile, 0], nx - 1 - lx, lx)
        ly = np.where(self.flip[tile, 1], ny - 1 - ly, ly)
        cc = self.conn[lx, ly]
        chip = np.where(cc >= 0, cc // 1000, 0)
        channel = np.where(cc >= 0, cc % 1000, -1)
        code = np.where(cc >= 0, self.io_code[tile, np.clip(chip, 0, 255)], -1)
        local = np.where(code >= 0, code // 1000, 0)
        mod_ok = (module < self.io_groups.shape[0]) & (local < self.io_groups.shape[1])
        iog = np.where(
            (code >= 0) & mod_ok,
            self.io_groups[np.clip(module, 0, self.io_groups.shape[0] - 1),
                           np.clip(local, 0, self.io_groups.shape[1] - 1)],
            -1,
        )
        ok = iog >= 0
        return (
            np.where(ok, iog, -1), np.where(ok, code % 1000, -1), np.where(ok, chip, -1),
            np.where(ok, channel, -1),
        )


def _yaml_file(path: str | Path, what: str) -> dict:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise
    except (OSError, yaml.YAMLError) as exc:
        raise IOFormatError(f"{p}: cannot read {what} YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise IOFormatError(f"{p}: {what} YAML must be a mapping")
    return raw


def _layout_key(d: dict, key: str, fname: str) -> Any:
    if key not in d:
        raise IOFormatError(f"{fname}: pixel layout is missing key '{key}'")
    return d[key]


def _channel_map(
    card: DetectorCard, layout: str | Path | None, detprop: str | Path | None
) -> _ChannelMap:
    """Build the chip/channel mapping (module docstring) and check it against the card."""
    g = card.geometry
    if layout is None:
        counts = tpc_pixel_counts(card)
        nblocks = (-(-counts[:, 0] // _SYN_BLOCK)) * (-(-counts[:, 1] // _SYN_BLOCK))
        if len(g.tpcs) > 255 or 1 + (nblocks.max() - 1) // _SYN_CHIPS_PER_IO > 255:
            raise ValueError(f"card {card.name!r} is too large for the synthetic 8-bit chip keys")
        return _ChannelMap("synthetic", "synthetic")

    fname = str(layout)
    lay = _yaml_file(layout, "pixel layout")
    det = _yaml_file(detprop, "detector properties") if detprop is not None else {}
    pitch_cm = float(_layout_key(lay, "pixel_pitch", fname)) / 10.0
    if abs(pitch_cm - g.pixel_pitch_cm) > 1e-6 * g.pixel_pitch_cm:
        raise IOFormatError(
            f"{fname}: key 'pixel_pitch' = {pitch_cm * 10} mm differs from card {card.name!r} "
            f"pitch {g.pixel_pitch_cm * 10} mm"
        )
    ccp = _layout_key(lay, "chip_channel_to_position", fname)
    pos = np.array([list(v)[:2] for v in ccp.values()], dtype=np.int64)
    keys = np.array(list(ccp.keys()), dtype=np.int64)
    if pos.size == 0 or pos.min() < 0:
        raise IOFormatError(f"{fname}: key 'chip_channel_to_position' must map to indices >= 0")
    nx_t, ny_t = len(np.unique(pos[:, 0])), len(np.unique(pos[:, 1]))
    if pos[:, 0].max() >= nx_t or pos[:, 1].max() >= ny_t:
        raise IOFormatError(f"{fname}: key 'chip_channel_to_position' indices are not a dense grid")
    conn = np.full((nx_t, ny_t), -1, np.int64)
    conn[pos[:, 0], pos[:, 1]] = keys

    t_pos = _layout_key(lay, "tile_positions", fname)
    t_or = _layout_key(lay, "tile_orientations", fname)
    t_idx = _layout_key(lay, "tile_indeces", fname)
    t_io = _layout_key(lay, "tile_chip_to_io", fname)
    tiles = sorted(int(t) for t in t_idx)
    max_tile = max(tiles)
    anodes = sorted({int(t_idx[t][0]) for t in t_idx})
    n_anodes = len(anodes)

    flip = np.zeros((max_tile + 1, 2), bool)
    for t in tiles:
        o = t_or[t]
        flip[t] = (o[2] < 0, o[1] < 0)  # larnd-sim fee.rotate_tile: x uses axes[2], y axes[1]
    io_code = np.full((max_tile + 1, 256), -1, np.int64)
    for t, chips in t_io.items():
        for chip, code in chips.items():
            if int(t) <= max_tile and 0 <= int(chip) < 256:
                io_code[int(t), int(chip)] = int(code)

    tile_map_raw = det.get("tile_map", lay.get("tile_map"))
    if tile_map_raw is not None:
        tile_map = np.asarray(tile_map_raw, dtype=np.int64)
    else:  # the geometric order of the tiles of each anode: x from tile_positions[2], y from [1]
        per = []
        for a in anodes:
            ts = [t for t in tiles if int(t_idx[t][0]) == a]
            xs = np.unique([float(t_pos[t][2]) for t in ts])
            ys = np.unique([float(t_pos[t][1]) for t in ts])
            m = np.full((len(xs), len(ys)), -1, np.int64)
            for t in ts:
                jx = np.searchsorted(xs, float(t_pos[t][2]))
                m[jx, np.searchsorted(ys, float(t_pos[t][1]))] = t
            if np.any(m < 0):
                raise IOFormatError(f"{fname}: tiles of anode {a} do not fill a rectangular grid")
            per.append(m)
        if len({m.shape for m in per}) != 1:
            raise IOFormatError(f"{fname}: anodes have different tile grids")
        tile_map = np.stack(per)
    if tile_map.ndim != 3 or tile_map.shape[0] != n_anodes:
        raise IOFormatError(f"{fname}: 'tile_map' must have shape (n_anodes={n_anodes}, ntx, nty)")

    # cathode direction per anode (tile_orientations[..][0]) must match the card's drift sense
    for t_i, t in enumerate(g.tpcs):
        a = anodes[t_i % n_anodes]
        cath = {int(t_or[k][0]) for k in tiles if int(t_idx[k][0]) == a}
        if cath != {-int(t.drift_sign)}:
            raise IOFormatError(
                f"{fname}: anode {a} (card TPC {t_i}) has cathode direction {sorted(cath)}, but "
                f"the card's TPC {t_i} has its cathode on the "
                f"{'+' if t.drift_sign < 0 else '-'} side"
            )
        want = (nx_t * tile_map.shape[1], ny_t * tile_map.shape[2])
        if tuple(g.n_pixels(t_i)) != want:
            raise IOFormatError(
                f"{fname}: layout gives {want} pixels per anode, card {card.name!r} TPC {t_i} has "
                f"{tuple(g.n_pixels(t_i))}"
            )

    m2io = det.get("module_to_io_groups", lay.get("module_to_io_groups"))
    n_modules = -(-len(g.tpcs) // n_anodes)
    if m2io is None:
        m2io = {m: [2 * m - 1, 2 * m] for m in range(1, n_modules + 1)}
    n_local = max(len(v) for v in m2io.values())
    io_groups = np.full((max(int(m) for m in m2io) + 1, n_local + 1), -1, np.int64)
    for m, groups in m2io.items():
        for i, iog in enumerate(groups):
            io_groups[int(m), i + 1] = int(iog)
    for m in range(1, n_modules + 1):
        if m >= io_groups.shape[0] or np.all(io_groups[m] < 0):
            raise IOFormatError(f"{detprop or fname}: key 'module_to_io_groups' lacks module {m}")
    return _ChannelMap(
        "layout", Path(layout).name, n_anodes, (nx_t, ny_t), tile_map, flip, conn, io_code,
        io_groups,
    )


def _packet_keys(io_group, io_channel, chip, channel) -> np.ndarray:
    return ((np.asarray(io_group, np.int64) * 256 + io_channel) * 256 + chip) * 256 + channel


def _parity(p: np.ndarray) -> np.ndarray:
    """LArPix-v2 odd parity: 1 - (number of set bits in bits 0..62) mod 2 (``Packet_v2``)."""
    ones = np.zeros(p.shape[0], np.int64)
    ts = p["timestamp"].astype(np.uint64) & np.uint64(2**31 - 1)  # 31-bit field
    ones += np.bitwise_count(ts).astype(np.int64)
    for k in ("packet_type", "chip_id", "channel_id", "first_packet", "dataword", "trigger_type",
              "local_fifo", "shared_fifo", "downstream_marker"):
        ones += np.bitwise_count(p[k]).astype(np.int64)
    return (1 - ones % 2).astype(np.uint8)


def _event_t0s(events: np.ndarray, event_t0_ticks: Any, card: DetectorCard) -> np.ndarray:
    """t0 [ticks] of each event in ``events`` (sorted unique ids)."""
    if event_t0_ticks is None:
        step = round(DEFAULT_EVENT_SPACING_US / card.electronics.tick_us)
        return np.arange(events.shape[0], dtype=np.int64) * step
    if isinstance(event_t0_ticks, Mapping):
        missing = [int(e) for e in events if int(e) not in event_t0_ticks]
        if missing:
            raise ValueError(f"event_t0_ticks has no entry for event(s) {missing[:5]}")
        t0 = np.array([event_t0_ticks[int(e)] for e in events])
    else:
        t0 = np.asarray(event_t0_ticks)
        if t0.shape != events.shape:
            raise ValueError(
                f"event_t0_ticks must have one entry per event ({events.shape[0]}), got {t0.shape}"
            )
    if t0.size and (t0.dtype.kind not in "iu" or t0.min() < 0):
        raise ValueError("event_t0_ticks must be non-negative integers (ticks)")
    return t0.astype(np.int64)


def write_packets(
    path: str | Path,
    hits: Hits,
    card: DetectorCard,
    *,
    layout: str | Path | None = None,
    event_t0_ticks: Mapping[int, int] | np.ndarray | None = None,
    detprop: str | Path | None = None,
    on_unmapped: str = "raise",
) -> None:
    """Write hits as a larpix-control HDF5 format 2.4 ``packets`` file (module docstring); atomic.

    hits           : hits valid for ``card``; ADC codes must fit the 8-bit ``dataword``.
    layout         : larnd-sim ``multi_tile_layout-*.yaml``; None -> synthetic mapping.
    event_t0_ticks : t0 of each event in ticks of ``tick_us`` (mapping event id -> t0, or an array
                     in sorted-event-id order); None -> events every 1e5 us (larnd-sim mean).
    detprop        : larnd-sim detector-properties YAML for ``tile_map``/``module_to_io_groups``.
    on_unmapped    : "raise" (default) or "drop" for hits on pixels the layout does not connect.

    Data-packet timestamp = (t0 + tick + hold_ticks) mod (1 s / tick_us).
    """
    if on_unmapped not in ("raise", "drop"):
        raise ValueError(f"on_unmapped must be 'raise' or 'drop', got {on_unmapped!r}")
    el = card.electronics
    if el.adc_bits > 8:
        raise ValueError(
            f"card {card.name!r} has a {el.adc_bits}-bit ADC; LArPix datawords are 8 bit"
        )
    h = _validate_hits(hits, card, "write_packets: hits", ValueError)
    cmap = _channel_map(card, layout, detprop)
    tpc, ix, iy = pixel_from_id(card, h.pixel_id)
    iog, ioc, chip, chan = cmap.forward(card, tpc, ix, iy)
    bad = iog < 0
    if np.any(bad):
        if on_unmapped == "raise":
            raise ValueError(
                f"write_packets: {int(bad.sum())} hit(s) on pixels not connected in layout "
                f"{cmap.source} (first pixel id {int(h.pixel_id[bad][0])}); use on_unmapped='drop'"
            )
        warnings.warn(f"write_packets: dropping {int(bad.sum())} hit(s) on unconnected pixels",
                      stacklevel=2)
        keep = ~bad
        h = Hits(*(a[keep] for a in h))
        iog, ioc, chip, chan = iog[keep], ioc[keep], chip[keep], chan[keep]
    for name, a in (("io_group", iog), ("io_channel", ioc), ("chip_id", chip)):
        if a.size and a.max() > 255:
            raise ValueError(f"write_packets: mapped field '{name}' exceeds 255")

    events = np.unique(h.event_id)
    t0 = _event_t0s(events, event_t0_ticks, card)
    period = round(PPS_PERIOD_US / el.tick_us)
    ev_idx = np.searchsorted(events, h.event_id)
    abs_ts = t0[ev_idx] + h.tick + el.hold_ticks
    if h.n and abs_ts.min() < 0:
        raise ValueError("write_packets: negative packet time (event t0 + tick + hold < 0)")

    data = np.zeros(h.n, PACKET_DTYPE)
    data["io_group"], data["io_channel"], data["chip_id"], data["channel_id"] = iog, ioc, chip, chan
    data["packet_type"] = 0
    data["timestamp"] = abs_ts % period
    data["dataword"] = h.adc
    data["first_packet"] = 1
    data["receipt_timestamp"] = abs_ts % period
    data["parity"] = _parity(data)
    data["valid_parity"] = 1

    used_iog = np.unique(iog).astype(np.int64) if h.n else np.zeros(0, np.int64)
    n_ev, n_g = events.shape[0], used_iog.shape[0]
    tsp = np.zeros(n_ev * n_g, PACKET_DTYPE)
    tsp["packet_type"] = 4
    tsp["io_group"] = np.tile(used_iog, n_ev)
    tsp["timestamp"] = np.repeat(np.floor(t0 * el.tick_us * 1e-6).astype(np.int64), n_g)

    packets = np.concatenate([tsp, data])
    ev_of = np.concatenate([np.repeat(np.arange(n_ev), n_g), ev_idx])
    kind = np.concatenate([np.zeros(tsp.shape[0], np.int64), np.ones(h.n, np.int64)])
    t_abs = np.concatenate([np.repeat(t0, n_g), abs_ts])
    order = np.lexsort((packets["channel_id"], packets["chip_id"], packets["io_channel"],
                        packets["io_group"], t_abs, kind, ev_of, t0[ev_of] if n_ev else ev_of))
    # events in t0 order (ties by id), timestamp packets first, data packets in time order
    packets = packets[order]
    assn = np.zeros(packets.shape[0], MC_ASSN_DTYPE)
    assn["event_ids"][:, 0] = np.where(kind[order] == 1, events[ev_of[order]] if n_ev else -1, -1)
    assn["segment_ids"] = -1
    assn["file_traj_ids"] = -1

    ev_rec = np.zeros(n_ev, np.dtype([("event_id", "i8"), ("t0_ticks", "i8")]))
    ev_rec["event_id"], ev_rec["t0_ticks"] = events, t0
    now = time.time()
    with _atomic_h5(path) as f:
        hdr = f.create_group("_header")
        hdr.attrs["version"] = "2.4"
        hdr.attrs["created"] = now
        hdr.attrs["modified"] = now
        ds = f.create_dataset("packets", data=packets, maxshape=(None,))
        ds.attrs["packet_types"] = _PACKET_TYPES_ATTR
        f.create_dataset("messages", shape=(0,), maxshape=(None,), dtype=MESSAGE_DTYPE)
        f.create_dataset("configs", shape=(0,), maxshape=(None,), dtype=CONFIG_DTYPE)
        f.create_dataset("mc_packets_assn", data=assn, maxshape=(None,))
        g = f.create_group("lartpc_bayes")
        g.attrs["mapping"] = cmap.kind
        g.attrs["layout"] = cmap.source
        g.attrs["card_name"] = card.name
        g.attrs["tick_us"] = el.tick_us
        g.attrs["hold_ticks"] = np.int64(el.hold_ticks)
        g.attrs["pps_period_ticks"] = np.int64(period)
        g.attrs["note"] = (
            "data-packet timestamp = (event t0 + trigger tick + hold_ticks) mod pps_period_ticks"
        )
        g.create_dataset("events", data=ev_rec)


def packets_to_hits(
    path: str | Path,
    card: DetectorCard,
    layout: str | Path | None = None,
    *,
    detprop: str | Path | None = None,
    event_t0_ticks: Mapping[int, int] | None = None,
) -> Hits:
    """Inverse of :func:`write_packets`: data packets of a LArPix HDF5 (2.x) file -> :class:`Hits`.

    Events: ``mc_packets_assn['event_ids']`` when present, else a new event starts at each run of
    timestamp packets (type 4), numbered 0, 1, ... Event t0 [ticks]: the file's
    ``lartpc_bayes/events``, else ``event_t0_ticks``, else 0. tick = (timestamp - hold_ticks - t0)
    mod (1 s / tick_us). Data packets with ``valid_parity`` = 0 are skipped. Returns hits sorted
    by (event, pixel, tick).
    """
    fname = str(path)
    el = card.electronics
    period = round(PPS_PERIOD_US / el.tick_us)
    with _open_read(path) as f:
        ver = f["_header"].attrs.get("version") if "_header" in f else None
        ver = _attr_to_py(ver)
        if ver is None or not str(ver).startswith("2."):
            raise IOFormatError(
                f"{fname}: attribute '_header.version' = {ver!r}; expected a LArPix HDF5 2.x file"
            )
        meta = dict(f["lartpc_bayes"].attrs) if "lartpc_bayes" in f else {}
        mapping = _attr_to_py(meta.get("mapping"))
        if mapping == "layout" and layout is None:
            raise IOFormatError(
                f"{fname}: packets were written with layout {_attr_to_py(meta.get('layout'))!r}; "
                "pass the same layout to packets_to_hits"
            )
        if mapping == "synthetic" and layout is not None:
            raise IOFormatError(
                f"{fname}: packets were written with the synthetic mapping; pass no layout"
            )
        ds = _get_dataset(f, "packets", fname)
        req = ("io_group", "io_channel", "chip_id", "packet_type", "channel_id", "timestamp",
               "dataword")
        spec = {k: ((k,), True, True) for k in req}
        spec["valid_parity"] = (("valid_parity",), False, True)
        cols = _read_fields(ds, spec, f"{fname}:packets")
        ptype = np.asarray(cols["packet_type"]).astype(np.int64)
        npk = ptype.shape[0]
        if "mc_packets_assn" in f:
            a = f["mc_packets_assn"]
            names = a.dtype.names if isinstance(a, h5py.Dataset) else None
            if names is None or "event_ids" not in names:
                raise IOFormatError(f"{fname}: dataset 'mc_packets_assn' lacks field 'event_ids'")
            if a.shape[0] != npk:
                raise IOFormatError(
                    f"{fname}: dataset 'mc_packets_assn' has {a.shape[0]} rows for {npk} packets"
                )
            ev = np.asarray(a.fields(["event_ids"])[:]["event_ids"]).reshape(npk, -1)[:, 0]
            ev = ev.astype(np.int64)
        else:
            is_ts = ptype == 4
            start = is_ts & ~np.concatenate([[False], is_ts[:-1]])
            ev = np.maximum(np.cumsum(start) - 1, 0).astype(np.int64)
        t0_map: dict[int, int] = dict(event_t0_ticks or {})
        if "lartpc_bayes" in f and "events" in f["lartpc_bayes"]:
            e = f["lartpc_bayes"]["events"][:]
            t0_map = {int(i): int(t) for i, t in zip(e["event_id"], e["t0_ticks"], strict=True)}
        hold = int(_attr_to_py(meta.get("hold_ticks", el.hold_ticks)))
        if hold != el.hold_ticks:
            raise IOFormatError(
                f"{fname}: attribute 'lartpc_bayes.hold_ticks' = {hold} differs from the card's "
                f"hold window {el.hold_ticks} ticks"
            )

    sel = ptype == 0
    if cols["valid_parity"] is not None:
        sel &= np.asarray(cols["valid_parity"]) != 0
    ev = ev[sel]
    if np.any(ev < 0):
        raise IOFormatError(f"{fname}: data packet(s) with no event id in 'mc_packets_assn'")
    iog, ioc, chip, chan = (np.asarray(cols[k]).astype(np.int64)[sel]
                            for k in ("io_group", "io_channel", "chip_id", "channel_id"))
    ts = np.asarray(cols["timestamp"]).astype(np.int64)[sel]
    adc = np.asarray(cols["dataword"]).astype(np.int64)[sel]

    # inverse mapping: forward-map every pixel of the card and look the packet keys up
    cmap = _channel_map(card, layout, detprop)
    all_ids = np.arange(tpc_id_offsets(card)[-1], dtype=np.int64)
    tpc, ix, iy = pixel_from_id(card, all_ids)
    keys = _packet_keys(*cmap.forward(card, tpc, ix, iy))
    ok = keys >= 0
    keys, ids = keys[ok], all_ids[ok]
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    q = _packet_keys(iog, ioc, chip, chan)
    pid = np.zeros(q.shape[0], np.int64)
    if q.size:
        pos = np.clip(np.searchsorted(keys, q), 0, max(keys.shape[0] - 1, 0))
        missing = (keys[pos] != q) if keys.size else np.ones(q.shape[0], bool)
        if np.any(missing):
            m = int(np.flatnonzero(missing)[0])
            raise IOFormatError(
                f"{fname}: packet field(s) 'io_group, io_channel, chip_id, channel_id' = "
                f"({iog[m]}, {ioc[m]}, {chip[m]}, {chan[m]}) is not a pixel of card {card.name!r} "
                f"under the {cmap.kind} mapping ({cmap.source})"
            )
        pid = ids[pos]
    t0 = np.zeros(ev.shape[0], np.int64)
    if t0_map and ev.size:
        known = np.array(sorted(t0_map), dtype=np.int64)
        vals = np.array([t0_map[int(k)] for k in known], dtype=np.int64)
        j = np.clip(np.searchsorted(known, ev), 0, known.size - 1)
        t0 = np.where(known[j] == ev, vals[j], 0)
    tick = (ts - hold - t0) % period
    return Hits(ev, pid, tick, adc).sorted()


# ------------------------------------------------------------------------------------------------
# ndlar_flow hits
# ------------------------------------------------------------------------------------------------


def _flow_event_ids(f: h5py.File, dataset: str, n: int, fname: str) -> np.ndarray | None:
    """Event id of each hit from h5flow references, or None when the file has none."""
    for parent in ("charge/events", "charge/raw_events"):
        ref_path = f"{parent}/ref/{dataset}/ref"
        if ref_path in f:
            ref = np.asarray(f[ref_path][:])
            if ref.ndim != 2 or ref.shape[1] != 2:
                raise IOFormatError(f"{fname}: dataset '{ref_path}' must have shape (L, 2)")
            parent_idx, hit_idx = ref[:, 0].astype(np.int64), ref[:, 1].astype(np.int64)
            ids = parent_idx
            pdata = f"{parent}/data"
            if pdata in f and f[pdata].dtype.names and "id" in f[pdata].dtype.names:
                ids = np.asarray(f[pdata].fields(["id"])[:]["id"]).astype(np.int64)[parent_idx]
            out = np.full(n, -1, np.int64)
            if hit_idx.size and (hit_idx.min() < 0 or hit_idx.max() >= n):
                raise IOFormatError(f"{fname}: dataset '{ref_path}' points outside '{dataset}'")
            out[hit_idx] = ids
            return out
    return None


def read_flow_hits(
    path: str | Path,
    card: DetectorCard,
    *,
    dataset: str = "charge/calib_prompt_hits",
    flow_drift_axis: str = "x",
    flow_tick_us: float = 0.1,
    subtract_hold: bool = True,
    max_offset_pitch: float = 0.25,
) -> Hits:
    """Read ndlar_flow ``charge/calib_prompt_hits`` as :class:`Hits` of ``card``.

    Fields used (shared/references/larnd-sim.md section 3.4): ``x, y, z`` [cm] pixel centre and
    drift coordinate, ``t_drift`` [ticks of ``flow_tick_us``, packet time minus event t0], ``Q``
    [ke].

    * Position: the flow frame has the drift along ``flow_drift_axis`` (x in ndlar_flow, as
      edep-sim); it is swapped with the card's drift axis (x <-> z for our larnd-sim-frame cards).
      The in-plane coordinates give the pixel; the TPC is the one whose pixel plane contains the hit
      and whose drift interval is nearest the hit's drift coordinate. A hit farther than
      ``max_offset_pitch`` pitches from a pixel centre, or outside every pixel plane, raises
      IOFormatError (geometry mismatch).
    * ADC: Q [ke] -> dataword = (Q G - V_cm + V_ped) 2^bits / (V_ref - V_cm), the inverse of
      ndlar_flow's ``charge_from_dataword`` with the card's electronics, rounded and clipped to
      0..2^bits-1 (a warning is issued when the values are far from integers, i.e. when flow used
      different electronics constants).
    * tick = round(t_drift flow_tick_us / tick_us) - hold_ticks (``subtract_hold``), since the
      packet time is the end of the hold window.
    * Events: from the h5flow references ``charge/events/ref/<dataset>/ref`` (event ``id`` field
      when present, else the event row); hits without an event are dropped with a warning; without
      references all hits are event 0.
    """
    fname = str(path)
    where = f"{fname}:{dataset}"
    if flow_drift_axis not in ("x", "y", "z"):
        raise ValueError(f"flow_drift_axis must be x, y or z, got {flow_drift_axis!r}")
    with _open_read(path) as f:
        ds = _get_dataset(f, dataset, fname)
        cols = _read_fields(
            ds, {k: ((k,), True, False) for k in ("x", "y", "z", "t_drift", "Q")}, where
        )
        n = int(ds.shape[0])
        ev = _flow_event_ids(f, dataset, n, fname)
    g = card.geometry
    el = card.electronics
    xyz = np.stack([np.asarray(cols[c], np.float64) for c in "xyz"], axis=-1).reshape(n, 3)
    perm = [0, 1, 2]
    a, b = "xyz".index(flow_drift_axis), g.drift_axis
    perm[a], perm[b] = perm[b], perm[a]
    xyz = xyz[:, perm]
    u, v, d = xyz[:, g.plane_axes[0]], xyz[:, g.plane_axes[1]], xyz[:, g.drift_axis]

    # TPC: pixel plane contains (u, v); nearest drift interval
    best = np.full(n, -1, np.int64)
    best_dist = np.full(n, np.inf)
    tol = 1e-6
    for i, t in enumerate(g.tpcs):
        inside = ((u >= t.plane_min_cm[0] - tol) & (u <= t.plane_max_cm[0] + tol)
                  & (v >= t.plane_min_cm[1] - tol) & (v <= t.plane_max_cm[1] + tol))
        lo, hi = min(t.anode_cm, t.cathode_cm), max(t.anode_cm, t.cathode_cm)
        dist = np.maximum(np.maximum(lo - d, d - hi), 0.0)
        better = inside & (dist < best_dist)
        best = np.where(better, i, best)
        best_dist = np.where(better, dist, best_dist)
    if np.any(best < 0):
        k = int(np.flatnonzero(best < 0)[0])
        raise IOFormatError(
            f"{where}: hit {k} at ({xyz[k, 0]:.3f}, {xyz[k, 1]:.3f}, {xyz[k, 2]:.3f}) cm "
            f"(card frame) lies outside every pixel plane of card {card.name!r} "
            "(fields 'x', 'y', 'z')"
        )
    umin = np.array([t.plane_min_cm[0] for t in g.tpcs])[best]
    vmin = np.array([t.plane_min_cm[1] for t in g.tpcs])[best]
    p = g.pixel_pitch_cm
    fu, fv = (u - umin) / p, (v - vmin) / p
    ix = np.floor(fu).astype(np.int64)
    iy = np.floor(fv).astype(np.int64)
    counts = tpc_pixel_counts(card)[best]
    ix = np.clip(ix, 0, counts[:, 0] - 1)  # a centre exactly on the far edge (tolerance) stays in
    iy = np.clip(iy, 0, counts[:, 1] - 1)
    off = np.maximum(np.abs(fu - ix - 0.5), np.abs(fv - iy - 0.5))
    if n and off.max() > max_offset_pitch:
        k = int(np.argmax(off))
        raise IOFormatError(
            f"{where}: hit {k} is {off[k]:.2f} pitches from the nearest pixel centre of card "
            f"{card.name!r} (fields 'x', 'y', 'z'); the flow geometry does not match the card"
        )
    assert np.all(pixel_in_range(card, best, ix, iy))
    pid = pixel_id(card, best, ix, iy)

    dw = ((np.asarray(cols["Q"], np.float64) * el.gain_mV_per_ke - el.v_cm_mV + el.v_pedestal_mV)
          * el.adc_counts / (el.v_ref_mV - el.v_cm_mV))
    if n and np.median(np.abs(dw - np.round(dw))) > 0.05:
        warnings.warn(
            f"{where}: ADC codes reconstructed from 'Q' with the electronics of card {card.name!r} "
            "are not integers; flow may have used other V_ref/V_cm/V_ped/gain", stacklevel=2
        )
    adc = np.clip(np.round(dw), 0, el.adc_counts - 1).astype(np.int64)
    t_drift = np.asarray(cols["t_drift"], np.float64)
    tick = np.round(t_drift * flow_tick_us / el.tick_us).astype(np.int64)
    if subtract_hold:
        tick = tick - el.hold_ticks
    if ev is None:
        ev = np.zeros(n, np.int64)
    keep = ev >= 0
    if not np.all(keep):
        warnings.warn(f"{where}: dropping {int((~keep).sum())} hit(s) not referenced by any event",
                      stacklevel=2)
    return Hits(ev[keep], pid[keep], tick[keep], adc[keep]).sorted()
