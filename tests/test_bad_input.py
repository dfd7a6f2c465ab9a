"""Malformed input (issues 16 item 5 and 17): every case gets exit code != 0, one line on stderr
that names the file (or argument) and the field, no traceback, and no output file (nor a
temporary one).

Cases run in-process through :func:`lartpc_bayes.cli.main` on tiny inputs; none needs a simulation
or a fit except the interrupt cases, which start ``fit`` in a subprocess and stop it early.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lartpc_bayes.cli import main
from lartpc_bayes.data import Hits, make_segments
from lartpc_bayes.detector import MODELS_DIR, load_card
from lartpc_bayes.io import write_hits, write_segments

OUT = "out.h5"


def _segments(tmp: Path, name: str = "seg.h5", **kw) -> Path:
    """A 5-segment, 2.5 cm track inside module0 TPC 0 (larnd-sim internal frame), modified by kw."""
    s = np.array([[0.1 * i, 0.0, -15.0 + 0.5 * i] for i in range(5)])
    e = s + np.array([0.1, 0.0, 0.5])
    start, end = kw.get("start", s), kw.get("end", e)
    seg = make_segments(start, end, kw.get("dE", np.ones(len(start))), t0=kw.get("t0", 0.0))
    p = tmp / name
    write_segments(p, seg, swap_xz=False)
    return p


def _raw_segments(tmp: Path, mutate: Callable[[np.ndarray], np.ndarray]) -> Path:
    """A segments file whose structured array is rewritten by ``mutate`` (bypasses validation)."""
    p = _segments(tmp, "raw.h5")
    with h5py.File(p, "r") as f:
        rec, attrs = f["segments"][:], dict(f["segments"].attrs)
    rec = mutate(rec)
    with h5py.File(p, "w") as f:
        ds = f.create_dataset("segments", data=rec)
        ds.attrs.update(attrs)
    return p


def _drop_field(name: str):
    def mutate(rec):
        keep = [n for n in rec.dtype.names if n != name]
        return rec[keep].copy()
    return mutate


def _set(field: str, value, row: int = 0):
    def mutate(rec):
        rec[field][row] = value
        return rec
    return mutate


def _string_field(name: str):
    def mutate(rec):
        dt = [(n, "S8" if n == name else rec.dtype[n]) for n in rec.dtype.names]
        out = np.zeros(rec.shape, dt)
        for n in rec.dtype.names:
            out[n] = b"x" if n == name else rec[n]
        return out
    return mutate


def _card(tmp: Path, edit: Callable[[dict], None], name: str = "card.yaml") -> Path:
    raw = yaml.safe_load((MODELS_DIR / "module0.yaml").read_text())
    edit(raw)
    p = tmp / name
    p.write_text(yaml.safe_dump(raw))
    return p


def _hits(tmp: Path, adc: int = 100, pixel: int = 5, name: str = "hits.h5") -> Path:
    """A hit file (with truth segments) whose first hit gets ``adc`` and ``pixel`` afterwards."""
    card = load_card("module0")
    seg = make_segments([[0, 0, -15.0]], [[0.1, 0, -14.5]], [1.0])
    p = tmp / name
    write_hits(p, Hits(np.zeros(2, np.int64), np.array([5, 6]), np.array([10, 20]),
                       np.array([100, 90])), card=card, segments=seg, true_dEdx=seg.dEdx,
               true_params=card.nominal(), seed=0)
    with h5py.File(p, "r+") as f:
        rec = f["hits"][:]
        rec["adc"][0], rec["pixel_id"][0] = adc, pixel
        f["hits"][...] = rec
    return p


def _sim(*extra: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["simulate", *extra, "-q", "-o", str(tmp / OUT)]


def _sim_seg(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["simulate", "--segments", str(make(tmp)), "-q", "-o", str(tmp / OUT)]


def _sim_card(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["simulate", "--detector", str(make(tmp)), "-q", "-o", str(tmp / OUT)]


def _empty_file(tmp: Path) -> Path:
    p = tmp / "empty.h5"
    p.write_bytes(b"")
    return p


def _truncated(tmp: Path) -> Path:
    p = _segments(tmp, "trunc.h5")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _text(tmp: Path, name: str = "notes.nc") -> Path:
    p = tmp / name
    p.write_text("this is not a netCDF file\n")
    return p


def _netcdf_not_fit(tmp: Path) -> Path:
    import xarray as xr

    p = tmp / "other.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(p, engine="h5netcdf")
    return p


def _larndsim_detprop(tmp: Path) -> Path:
    p = tmp / "module0.yaml"
    p.write_text(yaml.safe_dump({"temperature": 87.17, "e_field": 0.5, "lifetime": 2.6e3,
                                 "drift_length": 30.27225, "tpc_offsets": [[0, -21.8236, 0]]}))
    return p


def _larndsim_layout(tmp: Path) -> Path:
    p = tmp / "multi_tile_layout-2.3.16.yaml"
    p.write_text(yaml.safe_dump({"pixel_pitch": 4.434, "chip_channel_to_position": {11000: [0, 0]},
                                 "tile_positions": {1: [-304.31, 0, 0]},
                                 "tile_indeces": {1: [1, 1]}, "tile_orientations": {1: [1, 1, 1]}}))
    return p


def _blocked_dir(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return ["simulate", "-q", "-o", str(tmp / "afile" / "sub" / OUT)]


def _del(path: str):
    def edit(raw):
        *head, last = path.split(".")
        d = raw
        for k in head:
            d = d[k]
        del d[last]
    return edit


def _put(path: str, value):
    def edit(raw):
        *head, last = path.split(".")
        d = raw
        for k in head:
            d = d[k]
        d[last] = value
    return edit


def _fit(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["fit", str(make(tmp)), "-q", "-o", str(tmp / "fit.nc")]


def _check(make: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    return lambda tmp: ["check", str(make(tmp))]


SEG = "seg.h5"
# (id, argv builder, substrings the one stderr line must contain)
CASES: list[tuple[str, Callable[[Path], list[str]], tuple[str, ...]]] = [
    # unphysical parameters: errors before any work (issue 17 item 1)
    ("tau_negative", _sim("--param", "tau=-5"), ("--param", "tau=-5", "unphysical")),
    ("E_negative", _sim("--param", "E=-0.5"), ("--param", "E=-0.5", "unphysical")),
    ("D_L_negative", _sim("--param", "D_L=-1e-6"), ("--param", "D_L", "unphysical")),
    ("D_T_zero", _sim("--param", "D_T=0"), ("--param", "D_T=0", "unphysical")),
    ("A_B_above_1", _sim("--param", "A_B=1.5"), ("--param", "A_B=1.5", "(0, 1]")),
    ("A_B_zero", _sim("--param", "A_B=0"), ("--param", "A_B=0", "(0, 1]")),
    ("k_B_negative", _sim("--param", "k_B=-0.01"), ("--param", "k_B", "unphysical")),
    ("tau_nan", _sim("--param", "tau=nan"), ("--param", "tau=nan", "finite")),
    ("param_bogus", _sim("--param", "bogus=1"), ("unknown parameter 'bogus'",)),
    ("n_tracks_zero", _sim("--n-tracks", "0"), ("--n-tracks", ">= 1")),
    ("output_dir_blocked", _blocked_dir, ("afile", "not a directory")),
    # segments files
    ("seg_empty_file", _sim_seg(_empty_file), ("empty.h5", "not a readable HDF5")),
    ("seg_truncated", _sim_seg(_truncated), ("trunc.h5", "HDF5")),
    ("seg_no_dataset", _sim_seg(lambda t: _hits(t)), ("hits.h5", "missing dataset 'segments'")),
    ("seg_missing_field", _sim_seg(lambda t: _raw_segments(t, _drop_field("dE"))),
     ("raw.h5", "missing field 'dE'")),
    ("seg_mistyped_field", _sim_seg(lambda t: _raw_segments(t, _string_field("x_start"))),
     ("raw.h5", "'x_start'", "numeric")),
    ("seg_nan_position", _sim_seg(lambda t: _raw_segments(t, _set("y_end", np.nan, 2))),
     ("raw.h5", "'y_end'", "NaN")),
    ("seg_inf_dE", _sim_seg(lambda t: _raw_segments(t, _set("dE", np.inf, 1))),
     ("raw.h5", "'dE'", "NaN/inf")),
    ("seg_negative_dE", _sim_seg(lambda t: _raw_segments(t, _set("dE", -1.0, 0))),
     ("raw.h5", "'dE'", "negative")),
    ("seg_zero_segments", _sim_seg(lambda t: _raw_segments(t, lambda r: r[:0])),
     ("raw.h5", "0 segments")),
    # empty outputs: which cut removed the charge (issue 17 item 2)
    ("seg_all_outside", _sim_seg(lambda t: _segments(
        t, start=np.array([[0.0, 500, -15]]), end=np.array([[0.0, 501, -15]]))),
     (SEG, "entirely outside the active volume", "module0", "--allow-empty")),
    ("seg_all_zero_length", _sim_seg(lambda t: _segments(
        t, start=np.zeros((3, 3)), end=np.zeros((3, 3)), dE=np.ones(3))),
     (SEG, "zero length", "--allow-empty")),
    ("seg_t0_far_outside", _sim_seg(lambda t: _segments(t, t0=1e9)),
     (SEG, "|t0| >", "--allow-empty")),
    ("seg_below_threshold", lambda t: ["simulate", "--segments", str(_segments(
        t, start=np.array([[0.0, 0, -15]]), end=np.array([[0.0, 0, -14.5]]), dE=[1e-4])),
        "--no-noise", "-q", "-o", str(t / OUT)],
     (SEG, "0 hits", "threshold", "--allow-empty")),
    # detector cards
    ("card_missing_key", _sim_card(lambda t: _card(t, _del("physics.w_ion_MeV"))),
     ("card.yaml", "physics.w_ion_MeV")),
    ("card_string_number", _sim_card(lambda t: _card(t, _put("electronics.threshold_e", "5k"))),
     ("card.yaml", "electronics.threshold_e", "number")),
    ("card_prior_low_gt_high", _sim_card(lambda t: _card(
        t, _put("parameters.tau", {"nominal": 2600.0, "low": 6000.0, "high": 500.0}))),
     ("card.yaml", "parameters.tau", "low")),
    ("card_nominal_outside", _sim_card(lambda t: _card(
        t, _put("parameters.E", {"nominal": 0.9, "low": 0.45, "high": 0.55}))),
     ("card.yaml", "parameters.E.nominal")),
    ("card_A_B_prior_above_1", _sim_card(lambda t: _card(
        t, _put("parameters.A_B", {"nominal": 0.8, "low": 0.78, "high": 1.2}))),
     ("card.yaml", "parameters.A_B.high", "at most 1")),
    ("card_calorimeter", _sim("--detector", "calo_ecal"),
     ("calo_ecal.yaml", "calorimeter card", "lartpc-bayes calo")),
    ("card_larndsim_without_layout", _sim_card(_larndsim_detprop),
     ("module0.yaml", "larnd-sim detector-properties", "--pixel-layout")),
    ("card_larndsim_layout_alone", _sim_card(_larndsim_layout),
     ("multi_tile_layout-2.3.16.yaml", "pixel-layout YAML", "--pixel-layout")),
    # hit files given to fit
    ("hits_adc_above_255", _fit(lambda t: _hits(t, adc=300)), ("hits.h5", "'adc'", "255")),
    ("hits_pixel_outside_card", _fit(lambda t: _hits(t, pixel=10**8)),
     ("hits.h5", "'pixel_id'", "module0")),
    ("fit_empty_file", _fit(_empty_file), ("empty.h5",)),
    # check (issue 17 item 3)
    ("check_not_netcdf", _check(_text), ("notes.nc", "not a netCDF")),
    ("check_hit_file", _check(lambda t: _hits(t)), ("hits.h5", "hit file", "lartpc-bayes fit")),
    ("check_netcdf_not_fit", _check(_netcdf_not_fit), ("other.nc", "not a fit result")),
    ("check_missing", _check(lambda t: t / "nothere.nc"), ("nothere.nc", "no such file")),
]


@pytest.mark.parametrize("build,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_clear_line(tmp_path, capsys, build, expect):
    argv = build(tmp_path)
    before = {p.name for p in tmp_path.rglob("*")}
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc not in (0, None), err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Warning" not in err
    for s in expect:
        assert s in lines[0], (s, lines[0])
    made = {p.name for p in tmp_path.rglob("*")} - before
    assert not made, f"files left behind: {made}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_fit_leaves_no_partial_netcdf(tmp_path, sig):
    """``fit -o`` stopped during set-up/compilation: exit 130, one line, no .nc, no temporary."""
    hits = _hits(tmp_path)
    out = tmp_path / "res" / "fit.nc"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        # a shell's background job ignores SIGINT and children inherit that: restore Python's
        # default handler (KeyboardInterrupt), as in an interactive terminal
        [sys.executable, "-c", "import signal, sys; "
         "signal.signal(signal.SIGINT, signal.default_int_handler); "
         "from lartpc_bayes.cli import main; "
         "print('imported', flush=True); sys.exit(main(sys.argv[1:]))", "fit", str(hits),
         "--method", "laplace", "-q", "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "imported"  # the package is loaded
    time.sleep(3.0)  # main() is running: problem set-up / compilation, long before the fit ends
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    left = [p.name for p in tmp_path.rglob("*") if p.suffix in (".nc", ".tmp") or "tmp" in p.name]
    assert not left, left


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_interrupt_inside_gc_callback_is_silent(capfd):
    """A SIGINT/SIGTERM handler can raise inside a garbage-collector callback (jax has one), where
    Python prints "Exception ignored ... Traceback" and goes on; under the guard that is dropped
    (the guard's watcher ends the process with its one line)."""
    import gc

    from lartpc_bayes.cli import _interrupt_guard

    release = _interrupt_guard([], {"command": "fit"})

    def raise_interrupt(phase, info):
        raise KeyboardInterrupt

    gc.callbacks.append(raise_interrupt)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(raise_interrupt)
        release()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception ignored" not in err, err
