"""Tests of lartpc_bayes.io: round trips and clear errors for malformed files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

import lartpc_bayes.io as lio
from lartpc_bayes.data import Hits, Segments, make_segments
from lartpc_bayes.detector import DetectorCard, card_to_dict, load_card, parse_card
from lartpc_bayes.detector.geometry import pixel_center, pixel_id, tpc_id_offsets
from lartpc_bayes.io import (
    PACKET_DTYPE,
    SEGMENTS_DTYPE,
    IOFormatError,
    packets_to_hits,
    read_flow_hits,
    read_hits,
    read_segments,
    write_hits,
    write_packets,
    write_segments,
)

# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def card() -> DetectorCard:
    return load_card("module0")


@pytest.fixture()
def segs() -> Segments:
    """Five segments, two events, three tracks, in the card (larnd-sim internal) frame."""
    start = [[0.0, 0.0, -20.0], [1.0, 0.5, -19.0], [2.0, 1.0, -18.0], [5.0, -3.0, 10.0],
             [-4.0, 2.0, 15.0]]
    end = [[1.0, 0.5, -19.0], [2.0, 1.0, -18.0], [3.0, 1.5, -17.0], [5.5, -2.0, 11.0],
           [-4.5, 3.0, 16.5]]
    return make_segments(
        start, end, dE=[0.3, 0.25, 0.4, 0.2, 0.5], t0=[0.0, 0.0, 0.0, 1.5, 2.5],
        track_id=[0, 0, 0, 1, 2], event_id=[0, 0, 0, 1, 1], pdg_id=[13, 13, 13, 2212, 11],
    )


def _hits(card: DetectorCard, seed: int = 1, n: int = 40, events=(0, 3, 7)) -> Hits:
    rng = np.random.default_rng(seed)
    n_pix = int(tpc_id_offsets(card)[-1])
    return Hits(
        event_id=rng.choice(np.asarray(events, np.int64), n),
        pixel_id=rng.integers(0, n_pix, n),
        tick=rng.integers(0, 1900, n),
        adc=rng.integers(0, 256, n),
    ).sorted()


def _assert_hits_equal(a: Hits, b: Hits) -> None:
    a, b = a.sorted(), b.sorted()
    for k in Hits._fields:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _assert_segments_close(a: Segments, b: Segments, rtol: float = 1e-6) -> None:
    for k in ("start", "end", "dE", "t0"):
        np.testing.assert_allclose(getattr(a, k), getattr(b, k), rtol=rtol, atol=1e-5, err_msg=k)
    for k in ("track_id", "event_id", "pdg_id"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _edep_record(seg: Segments, dtype: np.dtype, names: dict[str, str]) -> np.ndarray:
    """A segments table in the edep-sim frame (x <-> z swapped), fields renamed by ``names``."""
    rec = np.zeros(seg.n, dtype=dtype)
    s, e = seg.start[:, ::-1], seg.end[:, ::-1]
    for i, c in enumerate("xyz"):
        rec[f"{c}_start"], rec[f"{c}_end"] = s[:, i], e[:, i]
    rec["dE"] = seg.dE
    rec[names["event"]] = seg.event_id
    rec[names["traj"]] = seg.track_id
    rec[names["pdg"]] = seg.pdg_id
    return rec


def _write_h5(path: Path, name: str, data: np.ndarray, **attrs) -> Path:
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(name, data=data)
        for k, v in attrs.items():
            ds.attrs[k] = v
    return path


NEW_NAMES = {"event": "event_id", "traj": "traj_id", "pdg": "pdg_id"}
OLD_DTYPE = np.dtype(
    [("eventID", "u4"), ("trackID", "u4"), ("pdgId", "i4"), ("dEdx", "f4"), ("dE", "f4"),
     ("dx", "f4"), ("x", "f4"), ("x_start", "f4"), ("x_end", "f4"), ("y", "f4"), ("y_start", "f4"),
     ("y_end", "f4"), ("z", "f4"), ("z_start", "f4"), ("z_end", "f4"), ("t", "f4"),
     ("t_start", "f4"), ("t_end", "f4"), ("pixel_plane", "u4"), ("tran_diff", "f4"),
     ("long_diff", "f4"), ("n_electrons", "u4"), ("n_photons", "f4")]
)

# ------------------------------------------------------------------------------------------------
# larnd-sim segments
# ------------------------------------------------------------------------------------------------


def test_read_segments_new_convention(tmp_path, segs):
    rec = _edep_record(segs, SEGMENTS_DTYPE, NEW_NAMES)
    rec["t0"] = segs.t0
    path = _write_h5(tmp_path / "new.h5", "segments", rec)
    got = read_segments(path)
    _assert_segments_close(got, segs)
    # zbeam=False means the file is already in the internal frame: no swap
    path2 = _write_h5(tmp_path / "nozbeam.h5", "segments", rec, zbeam=False)
    np.testing.assert_allclose(read_segments(path2).start, segs.start[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(read_segments(path2, swap_xz=True).start, segs.start, rtol=1e-6)


def test_read_segments_old_convention_and_t0_fallback(tmp_path, segs):
    # trackID restarts in each event (as larnd-sim traj_id does): ids must still come out unique
    traj = np.array([0, 0, 0, 0, 1])
    seg2 = segs._replace(track_id=traj)
    rec = _edep_record(seg2, OLD_DTYPE, {"event": "eventID", "traj": "trackID", "pdg": "pdgId"})
    rec["t_start"] = 99.0  # arrival time, must not be mistaken for the deposition time
    path = _write_h5(tmp_path / "old.h5", "segments", rec)
    got = read_segments(path)
    np.testing.assert_array_equal(got.track_id, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(got.t0, 0.0)
    _assert_segments_close(got._replace(t0=segs.t0), segs)
    # an old file with t0_start only
    dt = np.dtype([*OLD_DTYPE.descr, ("t0_start", "f8")])
    rec2 = np.zeros(segs.n, dt)
    for k in OLD_DTYPE.names:
        rec2[k] = rec[k]
    rec2["t0_start"] = segs.t0
    got2 = read_segments(_write_h5(tmp_path / "old_t0.h5", "segments", rec2))
    np.testing.assert_allclose(got2.t0, segs.t0)


def test_write_segments_round_trip(tmp_path, segs):
    path = tmp_path / "seg_out.h5"
    write_segments(path, segs)
    with h5py.File(path) as f:
        ds = f["segments"]
        assert ds.dtype == SEGMENTS_DTYPE
        assert bool(ds.attrs["zbeam"])
        # edep frame on disk: x holds our drift (z) coordinate
        np.testing.assert_allclose(ds["x_start"], segs.start[:, 2], rtol=1e-6)
        np.testing.assert_allclose(ds["dEdx"], segs.dEdx, rtol=1e-5)
    _assert_segments_close(read_segments(path), segs)


def test_segments_missing_field(tmp_path, segs):
    dt = np.dtype([d for d in SEGMENTS_DTYPE.descr if d[0] != "dE"])
    rec = np.zeros(segs.n, dt)
    path = _write_h5(tmp_path / "nodE.h5", "segments", rec)
    with pytest.raises(IOFormatError) as ei:
        read_segments(path)
    assert "nodE.h5" in str(ei.value) and "'dE'" in str(ei.value)


def test_segments_missing_dataset(tmp_path, segs):
    path = _write_h5(tmp_path / "other.h5", "trajectories", np.zeros(3, [("a", "f4")]))
    with pytest.raises(IOFormatError) as ei:
        read_segments(path)
    assert "other.h5" in str(ei.value) and "segments" in str(ei.value)


def test_segments_wrong_dtype(tmp_path, segs):
    dt = np.dtype([(n, "S8" if n == "dE" else SEGMENTS_DTYPE[n]) for n in SEGMENTS_DTYPE.names])
    rec = np.zeros(segs.n, dt)
    rec["dE"] = b"lots"
    path = _write_h5(tmp_path / "strdE.h5", "segments", rec)
    with pytest.raises(IOFormatError) as ei:
        read_segments(path)
    assert "strdE.h5" in str(ei.value) and "'dE'" in str(ei.value)
    # a float track id is a wrong dtype too
    dt2 = np.dtype(
        [(n, "f4" if n == "traj_id" else SEGMENTS_DTYPE[n]) for n in SEGMENTS_DTYPE.names]
    )
    path2 = _write_h5(tmp_path / "ftraj.h5", "segments", np.zeros(2, dt2))
    with pytest.raises(IOFormatError, match="traj_id") as ei:
        read_segments(path2)
    assert "ftraj.h5" in str(ei.value)


def test_segments_nan(tmp_path, segs):
    rec = _edep_record(segs, SEGMENTS_DTYPE, NEW_NAMES)
    rec["y_end"][2] = np.nan
    path = _write_h5(tmp_path / "nan.h5", "segments", rec)
    with pytest.raises(IOFormatError) as ei:
        read_segments(path)
    assert "nan.h5" in str(ei.value) and "'y_end'" in str(ei.value)


def test_segments_truncated_and_not_hdf5(tmp_path, segs):
    path = tmp_path / "trunc.h5"
    write_segments(path, segs)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IOFormatError) as ei:
        read_segments(path)
    assert "trunc.h5" in str(ei.value)
    text = tmp_path / "notes.h5"
    text.write_text("event_id,dE\n0,1.0\n")
    with pytest.raises(IOFormatError) as ei:
        read_segments(text)
    assert "notes.h5" in str(ei.value)
    with pytest.raises(FileNotFoundError):
        read_segments(tmp_path / "absent.h5")


# ------------------------------------------------------------------------------------------------
# own hit files
# ------------------------------------------------------------------------------------------------


def test_hit_file_round_trip(tmp_path, card, segs):
    hits = _hits(card)
    params = {"A_B": 0.8, "k_B": 0.0486, "E": 0.5, "tau": 2600.0, "D_L": 4e-6, "D_T": 8.8e-6}
    dedx = segs.dEdx * 1.1
    path = tmp_path / "hits.h5"
    write_hits(path, hits, card=card, segments=segs, true_dEdx=dedx, true_params=params, seed=12345,
               extra_attrs={"generator": "cosmic muons", "n_spills": 3})
    hf = read_hits(path)
    _assert_hits_equal(hf.hits, hits)
    assert card_to_dict(hf.card) == card_to_dict(card)
    _assert_segments_close(hf.segments, segs, rtol=0)
    np.testing.assert_array_equal(hf.true_dEdx, dedx)
    assert hf.true_params == params and list(hf.true_params) == list(params)
    assert hf.seed == 12345
    assert hf.attrs["format_version"] == lio.HITS_FORMAT_VERSION
    assert hf.attrs["generator"] == "cosmic muons" and hf.attrs["n_spills"] == 3
    with h5py.File(path) as f:
        assert f["hits"].dtype == np.dtype(
            [("event_id", "i8"), ("pixel_id", "i8"), ("tick", "i8"), ("adc", "i2")]
        )
        assert yaml.safe_load(f["card"][()].decode())["name"] == "module0"


def test_merge_hit_files_renumbers_events_and_tracks(tmp_path, card, segs):
    """Two files of one run: events and tracks follow each other, truth kept only when shared,
    a file with another card is named."""
    params = {"A_B": 0.8, "k_B": 0.0486, "E": 0.5, "tau": 2600.0, "D_L": 4e-6, "D_T": 8.8e-6}
    a, b = _hits(card, 1, 30, events=(0, 1)), _hits(card, 2, 20, events=(0, 4))
    write_hits(tmp_path / "a.h5", a, card=card, segments=segs, true_dEdx=segs.dEdx,
               true_params=params)
    write_hits(tmp_path / "b.h5", b, card=card, segments=segs, true_dEdx=2 * segs.dEdx,
               true_params=params)
    names = [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]
    m = lio.merge_hit_files([read_hits(n) for n in names], names)
    # file a spans events 0-1 and tracks 0-2, so b's event 0 -> 2, 4 -> 6, tracks +3
    assert m.hits.n == 50 and sorted(set(m.hits.event_id.tolist())) == [0, 1, 2, 6]
    assert m.segments.n == 2 * segs.n
    np.testing.assert_array_equal(m.segments.event_id, np.r_[segs.event_id, segs.event_id + 2])
    np.testing.assert_array_equal(m.segments.track_id, np.r_[segs.track_id, segs.track_id + 3])
    np.testing.assert_allclose(m.true_dEdx, np.r_[segs.dEdx, 2 * segs.dEdx])
    assert m.true_params == params and m.attrs["merged_from"] == names
    # different truths are dropped, not mixed; a file without segments drops them all
    write_hits(tmp_path / "c.h5", b, card=card, segments=segs,
               true_params={**params, "tau": 1500.0})
    write_hits(tmp_path / "d.h5", b, card=card)
    m2 = lio.merge_hit_files([read_hits(tmp_path / n) for n in ("a.h5", "c.h5", "d.h5")],
                             ["a.h5", "c.h5", "d.h5"])
    assert m2.true_params is None and m2.segments is None and m2.true_dEdx is None
    assert sorted(set(m2.hits.event_id.tolist())) == [0, 1, 2, 6, 7, 11]
    other = load_card("2x2")
    write_hits(tmp_path / "e.h5", _hits(other, 3, 5), card=other)
    with pytest.raises(IOFormatError, match=r"e\.h5: its detector card differs"):
        lio.merge_hit_files([read_hits(tmp_path / n) for n in ("a.h5", "e.h5")],
                            ["a.h5", "e.h5"])


def test_load_data_many_renumbers_mixed_formats(tmp_path, card):
    """Packets and a truth-free hit file as one run: the packets' events keep their ids, the hit
    file's follow them; a file with another card is named."""
    from lartpc_bayes.reco import load_data_many

    a, b = _hits(card, 1, 60), _hits(card, 2, 20, events=(0, 4))
    write_packets(tmp_path / "a.h5", a, card, event_t0_ticks={0: 0, 3: 5000, 7: 9000})
    write_hits(tmp_path / "b.h5", b, card=card)
    d = load_data_many([tmp_path / "a.h5", tmp_path / "b.h5"], "module0")
    assert d.kind == "hits+packets" and d.hits.n == 80
    assert sorted(set(d.hits.event_id.tolist())) == [0, 3, 7, 8, 12]
    other = load_card("2x2")
    write_hits(tmp_path / "c.h5", _hits(other, 3, 5), card=other)
    with pytest.raises(IOFormatError, match=r"c\.h5: its detector card differs"):
        load_data_many([tmp_path / "a.h5", tmp_path / "c.h5"], "module0")


def test_fit_inputs_expand_globs_and_name_missing_files(tmp_path):
    from lartpc_bayes.calibrate import expand_inputs

    for n in ("r2.h5", "r1.h5", "x.h5"):
        (tmp_path / n).write_bytes(b"")
    got = expand_inputs([str(tmp_path / "r*.h5"), str(tmp_path / "x.h5"),
                         str(tmp_path / "r1.h5")])
    assert got == [str(tmp_path / n) for n in ("r1.h5", "r2.h5", "x.h5")]
    with pytest.raises(FileNotFoundError, match=r"q\*\.h5: no file matches"):
        expand_inputs(str(tmp_path / "q*.h5"))
    with pytest.raises(FileNotFoundError, match=r"nothere\.h5: no such file"):
        expand_inputs([str(tmp_path / "nothere.h5")])


def test_hit_file_without_truth(tmp_path, card):
    hits = _hits(card, n=0)
    path = tmp_path / "empty.h5"
    write_hits(path, hits, card=card)
    hf = read_hits(path)
    assert hf.hits.n == 0 and hf.segments is None and hf.true_dEdx is None
    assert hf.true_params is None and hf.seed is None


def _rewrite_hits(path: Path, rec: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        del f["hits"]
        f.create_dataset("hits", data=rec)


@pytest.mark.parametrize(
    ("case", "field"),
    [("missing", "adc"), ("float", "tick"), ("adc_range", "adc"), ("pixel_range", "pixel_id")],
)
def test_hit_file_malformed(tmp_path, card, case, field):
    hits = _hits(card)
    path = tmp_path / f"bad_{case}.h5"
    write_hits(path, hits, card=card)
    names = [n for n in Hits._fields if not (case == "missing" and n == field)]
    dt = np.dtype([(n, "f8" if (case == "float" and n == field) else "i8") for n in names])
    rec = np.zeros(hits.n, dt)
    for n in names:
        rec[n] = getattr(hits, n)
    if case == "adc_range":
        rec["adc"][3] = 256
    if case == "pixel_range":
        rec["pixel_id"][0] = tpc_id_offsets(card)[-1]
    _rewrite_hits(path, rec)
    with pytest.raises(IOFormatError) as ei:
        read_hits(path)
    msg = str(ei.value)
    assert path.name in msg and f"'{field}'" in msg, msg


def test_hit_file_truncated_and_versions(tmp_path, card, segs):
    path = tmp_path / "cut.h5"
    write_hits(path, _hits(card, n=2000), card=card, segments=segs)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 512])
    with pytest.raises(IOFormatError) as ei:
        read_hits(path)
    assert "cut.h5" in str(ei.value)
    path2 = tmp_path / "future.h5"
    write_hits(path2, _hits(card), card=card)
    with h5py.File(path2, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(IOFormatError, match="format_version") as ei:
        read_hits(path2)
    assert "future.h5" in str(ei.value)
    # a segments file is not a hit file
    path3 = tmp_path / "segfile.h5"
    write_segments(path3, segs)
    with pytest.raises(IOFormatError, match="format_version"):
        read_hits(path3)


def test_write_hits_rejects_bad_input(tmp_path, card, segs):
    hits = _hits(card)
    with pytest.raises(ValueError, match="'adc'"):
        write_hits(tmp_path / "x.h5", hits._replace(adc=hits.adc + 300), card=card)
    with pytest.raises(ValueError, match="true_dEdx"):
        write_hits(tmp_path / "x.h5", hits, card=card, segments=segs, true_dEdx=np.ones(2))
    with pytest.raises(ValueError, match="reserved"):
        write_hits(tmp_path / "x.h5", hits, card=card, extra_attrs={"format_version": 7})
    assert list(tmp_path.iterdir()) == []


def test_atomic_write(tmp_path, card, segs, monkeypatch):
    hits = _hits(card)
    out = tmp_path / "out.h5"
    write_hits(out, hits, card=card)
    before = out.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(lio.hits, "_write_truth", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_hits(out, hits, card=card, segments=segs, seed=1)
    assert out.read_bytes() == before  # the existing output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]  # no temporary left
    with pytest.raises(RuntimeError):
        write_hits(tmp_path / "new.h5", hits, card=card, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    monkeypatch.undo()
    assert read_hits(out).hits.n == hits.n


# ------------------------------------------------------------------------------------------------
# LArPix packets
# ------------------------------------------------------------------------------------------------


def _packet_word(p: np.void) -> int:
    """The 64-bit LArPix-v2 data word (larpix Packet_v2 bit positions), parity bit included."""
    fields = [("packet_type", 0, 2), ("chip_id", 2, 8), ("channel_id", 10, 6),
              ("timestamp", 16, 31), ("first_packet", 47, 1), ("dataword", 48, 8),
              ("trigger_type", 56, 2), ("local_fifo", 58, 2), ("shared_fifo", 60, 2),
              ("downstream_marker", 62, 1), ("parity", 63, 1)]
    w = 0
    for name, lo, nbits in fields:
        w |= (int(p[name]) & ((1 << nbits) - 1)) << lo
    return w


def test_packets_round_trip_synthetic(tmp_path, card):
    hits = _hits(card, n=60)
    t0 = {0: 0, 3: 2_000_000, 7: 10**7 - 500}  # the last event rolls over the PPS period
    path = tmp_path / "packets.h5"
    write_packets(path, hits, card, event_t0_ticks=t0)
    with h5py.File(path) as f:
        assert f["_header"].attrs["version"] == "2.4"
        p = f["packets"][:]
        assert p.dtype == PACKET_DTYPE
        assert f["messages"].shape == (0,) and f["configs"].shape == (0,)
        assert f["mc_packets_assn"].shape == p.shape
    data = p[p["packet_type"] == 0]
    assert data.shape[0] == hits.n
    assert np.count_nonzero(p["packet_type"] == 4) % 3 == 0  # per event, per io_group in use
    assert set(np.unique(data["io_group"])) <= {1, 2}
    assert np.all(data["valid_parity"] == 1)
    for row in data:  # odd parity over the full 64-bit word
        assert bin(_packet_word(row)).count("1") % 2 == 1
    # timestamps: (t0 + trigger tick + hold window) mod 1e7, all inside the PPS period
    hold = card.electronics.hold_ticks
    assert hold == 18
    expect = np.sort([(t0[e] + t + hold) % 10**7 for e, t in zip(hits.event_id, hits.tick,
                                                                  strict=True)])
    np.testing.assert_array_equal(np.sort(data["timestamp"]), expect)
    np.testing.assert_array_equal(np.sort(data["dataword"]), np.sort(hits.adc))
    _assert_hits_equal(packets_to_hits(path, card), hits)


def test_packets_without_bookkeeping(tmp_path, card):
    """Foreign-style file (no mc_packets_assn, no lartpc_bayes group): events from the timestamp
    packets, t0s given by the caller."""
    hits = _hits(card, n=30, events=(0, 1, 2))
    path = tmp_path / "bare.h5"
    write_packets(path, hits, card)  # default t0s: event k at k * 1e6 ticks
    with h5py.File(path, "r+") as f:
        del f["mc_packets_assn"]
        del f["lartpc_bayes"]
    t0 = {k: k * 10**6 for k in range(3)}
    _assert_hits_equal(packets_to_hits(path, card, event_t0_ticks=t0), hits)


def _tiny_layout(tmp_path: Path) -> tuple[DetectorCard, Path]:
    """A two-TPC card with 8 x 8 pixels per anode and a larnd-sim-style layout: 2 tiles per anode of
    4 (x) x 8 (y) pixels, 2 chips per tile, flipped tile orientations."""
    raw = card_to_dict(load_card("module0"))
    for t in raw["geometry"]["tpcs"]:
        t["x_cm"] = [-1.7736, 1.7736]
        t["y_cm"] = [-1.7736, 1.7736]
    tiny = parse_card(raw, "tiny")
    ccp = {}
    for chip, iy0 in ((11, 0), (12, 4)):
        for k in range(16):
            ccp[chip * 1000 + 2 * k + 1] = [k % 4, iy0 + k // 4]
    layout = {
        "pixel_pitch": 4.434,
        "chip_channel_to_position": ccp,
        "tile_chip_to_io": {1: {11: 1001, 12: 1002}, 2: {11: 1003, 12: 1004},
                            3: {11: 2001, 12: 2002}, 4: {11: 2003, 12: 2004}},
        "tile_indeces": {1: [1, 1], 2: [1, 2], 3: [2, 1], 4: [2, 2]},
        "tile_orientations": {1: [1, 1, -1], 2: [1, -1, 1], 3: [-1, -1, -1], 4: [-1, 1, 1]},
        "tile_positions": {1: [-304.31, 0.0, -8.868], 2: [-304.31, 0.0, 8.868],
                           3: [304.31, 0.0, 8.868], 4: [304.31, 0.0, -8.868]},
    }
    path = tmp_path / "multi_tile_layout-tiny.yaml"
    path.write_text(yaml.safe_dump(layout))
    return tiny, path


def test_packets_round_trip_layout(tmp_path):
    tiny, layout = _tiny_layout(tmp_path)
    n_pix = int(tpc_id_offsets(tiny)[-1])
    assert n_pix == 128
    hits = Hits(np.zeros(n_pix, np.int64), np.arange(n_pix), np.arange(n_pix) * 3,
                np.arange(n_pix) % 256)
    path = tmp_path / "lay.h5"
    write_packets(path, hits, tiny, layout=layout)
    with h5py.File(path) as f:
        p = f["packets"][:]
    data = p[p["packet_type"] == 0]
    keys = {(int(r["io_group"]), int(r["io_channel"]), int(r["chip_id"]), int(r["channel_id"]))
            for r in data}
    assert len(keys) == n_pix  # the mapping is one-to-one
    by_pixel = {int(t - 18): k for t, k in zip(data["timestamp"], [
        (int(r["io_group"]), int(r["io_channel"]), int(r["chip_id"]), int(r["channel_id"]))
        for r in data], strict=True)}
    # hand-computed from the larnd-sim rules: TPC 0 pixel (0, 0) sits on tile 1, whose x axis is
    # flipped -> local (3, 0) -> chip 11 channel 7 -> io 1001 -> io_group 1, io_channel 1
    assert by_pixel[3 * int(pixel_id(tiny, 0, 0, 0))] == (1, 1, 11, 7)
    # TPC 1 pixel (0, 7): tile 4 (x = -8.868 mm), not flipped -> chip 12 channel 25 -> io 2004
    assert by_pixel[3 * int(pixel_id(tiny, 1, 0, 7))] == (2, 4, 12, 25)
    _assert_hits_equal(packets_to_hits(path, tiny, layout), hits)
    with pytest.raises(IOFormatError, match="layout"):
        packets_to_hits(path, tiny)


def test_packets_detprop_and_unconnected(tmp_path):
    tiny, layout = _tiny_layout(tmp_path)
    detprop = tmp_path / "detprop.yaml"
    detprop.write_text(yaml.safe_dump({"tile_map": [[[1], [2]], [[4], [3]]],
                                       "module_to_io_groups": {1: [5, 6]}}))
    hits = Hits(np.array([0, 0, 1]), np.array([0, 70, 127]), np.array([5, 6, 7]),
                np.array([10, 20, 30]))
    path = tmp_path / "dp.h5"
    write_packets(path, hits, tiny, layout=layout, detprop=detprop)
    with h5py.File(path) as f:
        p = f["packets"][:]
    assert set(p["io_group"][p["packet_type"] == 0]) == {5, 6}
    _assert_hits_equal(packets_to_hits(path, tiny, layout, detprop=detprop), hits)
    # a layout without the channel of TPC 0 pixel (0, 0) (tile 1 local (3, 0): chip 11 channel 7)
    raw = yaml.safe_load(layout.read_text())
    del raw["chip_channel_to_position"][11007]
    holes = tmp_path / "holes.yaml"
    holes.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="not connected"):
        write_packets(tmp_path / "h.h5", hits, tiny, layout=holes)
    assert not (tmp_path / "h.h5").exists()
    with pytest.warns(UserWarning, match="dropping 1 hit"):
        write_packets(tmp_path / "h.h5", hits, tiny, layout=holes, on_unmapped="drop")
    _assert_hits_equal(packets_to_hits(tmp_path / "h.h5", tiny, holes),
                       Hits(*(a[1:] for a in hits)))


def test_layout_card_mismatch(tmp_path, card):
    _, layout = _tiny_layout(tmp_path)
    with pytest.raises(IOFormatError) as ei:
        write_packets(tmp_path / "p.h5", _hits(card, n=3), card, layout=layout)
    assert "multi_tile_layout-tiny.yaml" in str(ei.value)
    assert not (tmp_path / "p.h5").exists()


# ------------------------------------------------------------------------------------------------
# ndlar_flow hits
# ------------------------------------------------------------------------------------------------


def _flow_file(path: Path, card: DetectorCard, hits: Hits, event_ids: list[int]) -> None:
    el = card.electronics
    c = pixel_center(card, hits.pixel_id)  # card frame, drift coordinate = anode
    tpc = np.searchsorted(tpc_id_offsets(card), hits.pixel_id, side="right") - 1
    cath = np.array([t.cathode_cm for t in card.geometry.tpcs])[tpc]
    c[:, 2] = c[:, 2] + 0.3 * (cath - c[:, 2])  # somewhere inside the drift volume
    q = (hits.adc / el.adc_counts * (el.v_ref_mV - el.v_cm_mV) + el.v_cm_mV - el.v_pedestal_mV)
    q = q / el.gain_mV_per_ke
    dt = np.dtype([("id", "u4"), ("x", "f8"), ("y", "f8"), ("z", "f8"), ("t_drift", "f8"),
                   ("ts_pps", "u8"), ("io_group", "u8"), ("io_channel", "u8"), ("Q", "f8"),
                   ("E", "f8")])
    rec = np.zeros(hits.n, dt)
    rec["id"] = np.arange(hits.n)
    rec["x"], rec["y"], rec["z"] = c[:, 2], c[:, 1], c[:, 0]  # flow: x = drift, z = beam
    rec["t_drift"] = hits.tick + el.hold_ticks
    rec["Q"] = q
    rec["E"] = q * 1e3 * card.physics.w_ion_MeV  # flow's E without recombination, MeV
    ev_row = np.searchsorted(event_ids, hits.event_id)
    with h5py.File(path, "w") as f:
        f.create_dataset("charge/calib_prompt_hits/data", data=rec)
        f.create_dataset("charge/events/data", data=np.array(
            [(e,) for e in event_ids], dtype=[("id", "u4")]))
        f.create_dataset("charge/events/ref/charge/calib_prompt_hits/ref",
                         data=np.stack([ev_row, np.arange(hits.n)], axis=1))


def test_read_flow_hits(tmp_path, card):
    hits = _hits(card, n=50, events=(4, 9))
    hits = hits._replace(tick=hits.tick + 20)
    path = tmp_path / "flow.h5"
    _flow_file(path, card, hits, [4, 9])
    _assert_hits_equal(read_flow_hits(path, card), hits)


def test_read_flow_hits_errors(tmp_path, card):
    hits = _hits(card, n=10)
    path = tmp_path / "flow_bad.h5"
    _flow_file(path, card, hits, [0, 3, 7])
    with h5py.File(path, "r+") as f:
        d = f["charge/calib_prompt_hits/data"]
        rec = d[:]
        rec["y"][2] += 0.4 * card.geometry.pixel_pitch_cm  # off the pixel centre
        d[...] = rec
    with pytest.raises(IOFormatError) as ei:
        read_flow_hits(path, card)
    assert "flow_bad.h5" in str(ei.value) and "'y'" in str(ei.value)
    with h5py.File(path, "r+") as f:
        rec = f["charge/calib_prompt_hits/data"][:]
        del f["charge/calib_prompt_hits/data"]
        f.create_dataset("charge/calib_prompt_hits/data",
                         data=rec[[n for n in rec.dtype.names if n != "Q"]])
    with pytest.raises(IOFormatError) as ei:
        read_flow_hits(path, card)
    assert "flow_bad.h5" in str(ei.value) and "'Q'" in str(ei.value)
