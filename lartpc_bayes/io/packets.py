"""LArPix packets (:func:`write_packets`, :func:`packets_to_hits`)
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

The chip/channel mapping is :mod:`lartpc_bayes.io.layout`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..data import Hits
from ..detector import DetectorCard
from ..detector.geometry import (
    pixel_from_id,
    tpc_id_offsets,
)
from .common import (
    IOFormatError,
    _atomic_h5,
    _attr_to_py,
    _get_dataset,
    _open_read,
    _read_fields,
    _validate_hits,
)
from .layout import _channel_map

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
