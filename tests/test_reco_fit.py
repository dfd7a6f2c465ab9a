"""The data path end to end: a truth-free hit file (and its packets) -> reconstruct -> fit."""

from __future__ import annotations

import numpy as np
import pytest

from lartpc_bayes.cli import main
from lartpc_bayes.detector import load_card
from lartpc_bayes.forward.generator import generate


def _truth_free_files(tmp_path):
    import jax

    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.io import write_hits, write_packets

    card = load_card("module0")
    seg = generate(card, "muons", 1, 101)
    seg = seg.select(np.cumsum(seg.dx) <= 5.0)
    hits, _ = simulate_hits(jax.random.key(0), card, seg, nominal_params(card))
    write_hits(tmp_path / "hits.h5", hits, card=card)  # as a detector writes it: no truth
    write_packets(tmp_path / "packets.h5", hits, card)
    return tmp_path / "hits.h5", tmp_path / "packets.h5"


FIX = ["--fix", "A_B", "--fix", "k_B", "--fix", "tau", "--fix", "D_L", "--fix", "D_T"]


def _fit(path, out, capsys):
    rc = main(["fit", str(path), "--method", "laplace", *FIX, "--ppc-draws", "3", "-q",
               "-o", str(out), "--reco-output", str(out.with_suffix(".reco.h5"))])
    assert rc == 0
    return capsys.readouterr().out


def test_truth_free_hit_file_fits_end_to_end(tmp_path, capsys):
    """``fit`` on a hit file without truth: reconstruct, select, geometry latents, MAP+Laplace
    (E free, 5 cm of track); the output states its t0 source and carries the geometry sites."""
    from lartpc_bayes.results import load_datatree

    hits, _ = _truth_free_files(tmp_path)
    report = _fit(hits, tmp_path / "fit.nc", capsys)
    assert "t0: hit file" in report and "1 of 1 tracks selected" in report
    dt = load_datatree(tmp_path / "fit.nc")
    assert "E" in dt["posterior"].data_vars
    post = dt["posterior"]
    assert post["geo_shift_cm"].dims[-2:] == ("track", "uvd")
    assert post["geo_tilt"].dims[-2:] == ("track", "uvd")
    assert dt.attrs["reco_t0_source"].startswith("hit file")
    assert (tmp_path / "fit.reco.h5").exists()


@pytest.mark.slow
def test_packets_give_the_same_fit_as_the_hit_file(tmp_path, capsys):
    from lartpc_bayes.results import load_datatree

    hits, packets = _truth_free_files(tmp_path)
    _fit(hits, tmp_path / "a.nc", capsys)
    _fit(packets, tmp_path / "b.nc", capsys)
    a = load_datatree(tmp_path / "a.nc")["posterior"]["E"].values
    b = load_datatree(tmp_path / "b.nc")["posterior"]["E"].values
    assert np.allclose(a, b, rtol=1e-6)


def test_simulate_no_truth_writes_a_detector_file(tmp_path, capsys):
    import h5py

    rc = main(["simulate", "--n-tracks", "1", "--seed", "4", "--no-truth", "-q",
               "--packets", str(tmp_path / "p.h5"), "-o", str(tmp_path / "h.h5")])
    assert rc == 0
    with h5py.File(tmp_path / "h.h5") as f:
        assert "truth" not in f and "hits" in f
    with h5py.File(tmp_path / "p.h5") as f:
        assert "packets" in f
    rc = main(["reconstruct", str(tmp_path / "p.h5"), "-o", str(tmp_path / "r.h5")])
    assert rc == 0
    assert "t0: packets" in capsys.readouterr().out
