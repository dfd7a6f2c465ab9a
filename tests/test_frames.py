"""Segments in another coordinate frame are never dropped silently (issue 16 item 1), and
larnd-sim's own detector files are read into a card (issue 16 item 2).

The frame file is in larnd-sim-jax's Module-0 frame (shared/references/larnd-sim-jax.md 1.2:
y in [-62.076, 62.076], anodes at z = +-30.59 cm), while the stock ``module0`` card follows
DUNE/larnd-sim's ``tpc_offsets`` [0, -21.8236, 0] (y in [-83.900, 40.252], anodes +-30.431 cm).
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import yaml

from lartpc_bayes.cli import main
from lartpc_bayes.data import make_segments
from lartpc_bayes.detector import CardError, length_inside, load_card
from lartpc_bayes.forward.simulate import OUTSIDE_WARN_FRACTION, account_segments
from lartpc_bayes.io import read_hits, write_segments

Y_TOP = 40.252  # cm, upper y edge of the stock module0 card


def _frame_track(y0: float, y1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One straight muon-like track from y0 to y1 (cm) at x ~ 0, z ~ -15 (TPC 0), n segments."""
    ys = np.linspace(y0, y1, n + 1)
    pts = np.stack([0.3 * np.arange(n + 1) / n, ys, -15.0 + 0.5 * np.arange(n + 1) / n], -1)
    return pts[:-1], pts[1:]


def test_length_inside_is_the_clipped_length():
    card = load_card("module0")
    start = np.array([[0, 0, -40.0], [0, 30.0, -20], [0, 500, 0], [1, 1, -5], [0, 39.252, -5]])
    end = np.array([[0, 0, 40.0], [0, 50.0, -20], [0, 510, 0], [1, 1, -5], [0, 41.252, -5]])
    got = length_inside(card, start, end)
    drift = 30.431 - 0.159  # per TPC; the 0.318 cm cathode gap between the TPCs is not active
    np.testing.assert_allclose(got, [2 * drift, Y_TOP - 30.0, 0.0, 0.0, 1.0], atol=1e-9)


def test_accounting_counts_every_cut():
    card = load_card("module0")
    s, e = _frame_track(30.0, 50.0, 4)  # 5 cm segments, the last two partly / fully outside
    seg = make_segments(np.vstack([s, [[0, 0, -10]], [[0, 0, -12]]]),
                        np.vstack([e, [[0, 0, -10]], [[0, 1, -12]]]),
                        np.ones(6), t0=np.array([0, 0, 0, 0, 0, 1e6]))
    keep, acc = account_segments(card, seg)
    assert acc.n_segments == 6 and acc.n_zero_length == 1 and acc.n_t0_out == 1
    assert acc.n_outside == 1  # segment 3 (y 45..50) entirely above the card
    # a straight track: the outside share of its length is the outside share of its y extent
    np.testing.assert_allclose(acc.length_outside_cm, seg.dx[:4].sum() * (50.0 - Y_TOP) / 20.0,
                               rtol=1e-6)
    assert keep.tolist() == [True, True, True, False, False, False]
    assert acc.outside_fraction > OUTSIDE_WARN_FRACTION
    attrs = acc.attrs()
    assert attrs["input_n_outside"] == 1 and attrs["input_n_zero_length"] == 1


def test_simulate_frame_file_reports_what_it_drops(tmp_path, capsys):
    """A 10 cm track at y 36..46 cm: 5.75 cm lie above the card's y = 40.252 cm (57 %)."""
    s, e = _frame_track(36.0, 46.0, 10)
    seg_file = tmp_path / "larndsim_jax_frame.h5"
    write_segments(seg_file, make_segments(s, e, np.full(10, 2.1)), swap_xz=False)
    out = tmp_path / "hits.h5"
    rc = main(["simulate", "--segments", str(seg_file), "--no-noise", "-q", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0
    warn = [ln for ln in cap.err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1
    assert str(seg_file) in warn[0] and "'module0'" in warn[0] and "module0.yaml" in warn[0]
    assert "coordinate frame" in warn[0]
    length = float(np.linalg.norm(e - s, axis=1).sum())  # 10.017 cm (the track is slanted)
    outside = length * (46.0 - Y_TOP) / 10.0
    m = re.search(r"outside the active volume ([\d.]+) of ([\d.]+) cm \(([\d.]+) %, (\d+) segm",
                  cap.out)
    assert m is not None, cap.out
    assert float(m.group(1)) == pytest.approx(outside, abs=0.05)
    assert float(m.group(2)) == pytest.approx(length, abs=0.05)
    assert float(m.group(3)) == pytest.approx(100 * outside / length, abs=0.05)
    assert int(m.group(4)) == 5  # segments y 41..46 lie entirely above
    hf = read_hits(out)
    assert hf.attrs["input_length_outside_cm"] == pytest.approx(outside, rel=1e-5)
    assert hf.attrs["input_n_outside"] == 5 and hf.attrs["input_n_segments"] == 10
    assert hf.segments.n == 5  # the truth holds the simulated segments
    assert hf.hits.n > 0


# --- larnd-sim detector files as the card -----------------------------------------------------


def _larndsim_files(tmp_path, anode_mm: float, drift_mm: float | None, y_offset: float):
    """A Module-0-like pixel layout (tile positions of larnd-sim multi_tile_layout-2.3.16.yaml,
    a dense 70 x 70 pixel grid per tile) and a detector-properties YAML (module0.yaml keys)."""
    ccp = {(11 + ix // 7 + 10 * (iy // 7)) * 1000 + ix % 7 + 7 * (iy % 7): [ix, iy]
           for ix in range(70) for iy in range(70)}
    tp, to, ti = {}, {}, {}
    t = 1
    for a, xd, d in ((1, -anode_mm, 1), (2, anode_mm, -1)):
        for j, y in enumerate((465.2, 155.2, -155.2, -465.2)):
            for k, x in enumerate((-155.2, 155.2)):
                tp[t], to[t], ti[t] = [xd, y, x], [d, 1, 1], [a, 2 * j + k + 1]
                t += 1
    lay = {"pixel_pitch": 4.434, "chip_channel_to_position": ccp, "tile_positions": tp,
           "tile_orientations": to, "tile_indeces": ti, "tile_chip_to_io": {}}
    if drift_mm is not None:
        lay["drift_length"] = drift_mm
    det = {"temperature": 87.17, "e_field": 0.50, "lifetime": 2.6e3, "long_diff": 4.0e-6,
           "tran_diff": 8.8e-6, "drift_length": 30.27225, "time_interval": [0, 200.0],
           "tpc_offsets": [[0, y_offset, 0]], "module_to_io_groups": {1: [1, 2, 3, 4]},
           "tile_map": [[[7, 5, 3, 1], [8, 6, 4, 2]], [[16, 14, 12, 10], [15, 13, 11, 9]]]}
    lp, dp = tmp_path / "multi_tile_layout.yaml", tmp_path / "module0.yaml"
    lp.write_text(yaml.safe_dump(lay))
    dp.write_text(yaml.safe_dump(det))
    return dp, lp


def test_larndsim_files_give_the_module0_geometry(tmp_path):
    dp, lp = _larndsim_files(tmp_path, 304.31, None, -21.8236)
    card = load_card(dp, lp)
    t0, t1 = card.geometry.tpcs
    # larnd-sim set_detector_properties: anode = tile drift position, cathode = anode +
    # drift_length * orientation; x = min tile centre - 35 pitches; y likewise + tpc offset
    assert t0.anode_cm == pytest.approx(-30.431) and t1.anode_cm == pytest.approx(30.431)
    assert t0.cathode_cm == pytest.approx(-30.431 + 30.27225)
    assert t0.plane_min_cm == pytest.approx((-15.52 - 15.519, -46.52 - 15.519 - 21.8236))
    assert card.geometry.n_pixels(0) == (140, 280)
    assert card.param("tau").nominal == 2600.0 and card.electronics.v_ref_mV == 1300.0
    # against the stock card: same pixel counts and drift, y edge 0.037 cm apart (module0.yaml
    # comment); tile pitch 310.4 mm vs 70 pixels = 310.38 mm is the cause
    stock = load_card("module0")
    assert stock.geometry.n_pixels(0) == card.geometry.n_pixels(0)
    assert t0.plane_min_cm[1] - stock.geometry.tpcs[0].plane_min_cm[1] == pytest.approx(
        0.0373, abs=1e-3)


def test_larndsim_card_in_its_own_frame_drops_nothing(tmp_path, capsys):
    """larnd-sim-jax's frame (no y offset, anodes at +-30.59 cm from the v4 layout's drift_length):
    with the card read from those files a track at y 36..46 cm is entirely inside."""
    dp, lp = _larndsim_files(tmp_path, 305.9, 304.31, 0.0)
    card = load_card(dp, lp)
    assert card.geometry.tpcs[0].anode_cm == pytest.approx(-30.59)
    s, e = _frame_track(36.0, 46.0, 10)
    keep, acc = account_segments(card, make_segments(s, e, np.full(10, 2.1)))
    assert keep.all() and acc.length_outside_cm == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(CardError, match="pixel-layout"):
        load_card(lp)  # the layout alone is not a card
    with pytest.raises(CardError, match="--pixel-layout"):
        load_card(dp)  # the detector file needs its layout


def test_simulate_reads_larndsim_files(tmp_path, capsys):
    dp, lp = _larndsim_files(tmp_path, 305.9, 304.31, 0.0)
    seg_file = tmp_path / "seg.h5"
    s, e = _frame_track(36.0, 38.0, 2)
    write_segments(seg_file, make_segments(s, e, np.full(2, 2.1)), swap_xz=False)
    out = tmp_path / "hits.h5"
    rc = main(["simulate", "--detector", str(dp), "--pixel-layout", str(lp), "--segments",
               str(seg_file), "--no-noise", "-q", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "warning" not in cap.err
    with h5py.File(out) as f:
        assert f.attrs["card_name"] == "larndsim:module0"
    assert read_hits(out).card.geometry.tpcs[1].anode_cm == pytest.approx(30.59)


def test_allow_empty_writes_the_empty_file_with_its_accounting(tmp_path, capsys):
    seg_file = tmp_path / "far.h5"
    write_segments(seg_file, make_segments([[0.0, 500, -15]], [[0.0, 502, -15]], [1.0]),
                   swap_xz=False)
    out = tmp_path / "empty.h5"
    rc = main(["simulate", "--segments", str(seg_file), "--allow-empty", "-q", "-o", str(out)])
    cap = capsys.readouterr()
    assert rc == 0 and "1 segments, outside the active volume 2.0 of 2.0 cm" in cap.out
    hf = read_hits(out)
    assert hf.hits.n == 0 and hf.attrs["input_n_outside"] == 1
