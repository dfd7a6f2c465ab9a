"""Own hit files (:func:`write_hits`, :func:`read_hits`), ``format_version`` 1
---------------------------------------------------------------------------
::

    /                     attrs: format = "lartpc_bayes.hits", format_version = 1,
                                 created_unix [s], lartpc_bayes_version, card_name,
                                 + user attributes (``extra_attrs``)
    /hits                 (H,) compound: event_id i8, pixel_id i8, tick i8, adc i2
                          attrs: tick_us [us]; tick = trigger (threshold-crossing) tick counted from
                          the event's t = 0; pixel_id = global id of lartpc_bayes.detector.geometry
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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ..data import Hits, Segments
from ..detector import CardError, DetectorCard, card_to_dict, parse_card
from .common import (
    IOFormatError,
    _atomic_h5,
    _attr_to_py,
    _check_numeric,
    _get_dataset,
    _open_read,
    _package_version,
    _read_fields,
    _validate_hits,
)

#: Version of the package's own hit-file layout (module docstring).
HITS_FORMAT_VERSION = 1


_HITS_FORMAT = "lartpc_bayes.hits"


_HIT_FIELDS = (("event_id", "i8"), ("pixel_id", "i8"), ("tick", "i8"), ("adc", "i2"))


_TRUTH_SEG_DTYPE = np.dtype(
    [("event_id", "i8"), ("track_id", "i8"), ("pdg_id", "i8"), ("x_start", "f8"),
     ("y_start", "f8"), ("z_start", "f8"), ("x_end", "f8"), ("y_end", "f8"), ("z_end", "f8"),
     ("dE", "f8"), ("t0", "f8")]
)


_RESERVED_ATTRS = ("format", "format_version", "created_unix", "lartpc_bayes_version", "card_name")


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


def _id_span(*arrays: np.ndarray) -> int:
    """1 + the largest id in ``arrays`` (0 when all are empty)."""
    return int(max((int(np.max(a)) + 1 for a in arrays if np.size(a)), default=0))


def require_one_card(cards: list[DetectorCard], names: list[str]) -> None:
    """Files fitted together must share one detector card: :class:`IOFormatError` naming the
    first file whose card differs from the first file's."""
    ref = _card_yaml(cards[0])
    for card, name in zip(cards[1:], names[1:], strict=True):
        if _card_yaml(card) != ref:
            raise IOFormatError(f"{name}: its detector card differs from the one of {names[0]}; "
                                "files fitted together must share one card")


def renumber_events(hits: list[Hits], segments: list[Segments | None] | None = None
                    ) -> tuple[list[Hits], list[Segments | None]]:
    """Hits (and segments) of files read one after the other, with distinct events and tracks:
    file i's event ids are shifted by the event-id spans (hits and segments) of the files before
    it, its track ids by their track-id spans."""
    segments = list(segments) if segments is not None else [None] * len(hits)
    out_h, out_s, ev_off, tr_off = [], [], 0, 0
    for h, sg in zip(hits, segments, strict=True):
        out_h.append(h._replace(event_id=np.asarray(h.event_id, np.int64) + ev_off))
        out_s.append(None if sg is None else sg._replace(
            event_id=np.asarray(sg.event_id) + ev_off, track_id=np.asarray(sg.track_id) + tr_off))
        ev_off += _id_span(h.event_id, sg.event_id if sg is not None else [])
        tr_off += _id_span(sg.track_id) if sg is not None else 0
    return out_h, out_s


def merge_hit_files(files: list[HitFile], names: list[str]) -> HitFile:
    """Several hit files of one detector as one run: events and tracks renumbered after each
    other (:func:`renumber_events`).

    Every file must carry the same detector card (:func:`require_one_card`). Segments and true
    dE/dx are kept when every file has them, the true parameters when every file has the same
    ones; otherwise they are dropped (None), never mixed."""
    if not files:
        raise IOFormatError("no hit files to merge")
    require_one_card([hf.card for hf in files], names)
    hits, segs = renumber_events([hf.hits for hf in files], [hf.segments for hf in files])
    with_segs = all(sg is not None for sg in segs)
    true_dEdx = (np.concatenate([hf.true_dEdx for hf in files])
                 if with_segs and all(hf.true_dEdx is not None for hf in files) else None)
    tp = files[0].true_params
    same_truth = tp is not None and all(hf.true_params == tp for hf in files)
    return HitFile(
        hits=Hits.concatenate(hits).sorted(), card=files[0].card,
        segments=Segments.concatenate(segs) if with_segs else None, true_dEdx=true_dEdx,
        true_params=dict(tp) if same_truth else None, seed=None,
        attrs={"merged_from": [str(n) for n in names]},
    )
