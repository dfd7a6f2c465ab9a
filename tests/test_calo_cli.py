"""``calo simulate / fit / report`` through an argparse harness calling ``register``."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from lartpc_bayes.calo.card import DEFAULT_CARD_PATH
from lartpc_bayes.calo.cli import register
from lartpc_bayes.calo.io import read_model


def _run(command: str) -> int:
    """Parse ``command`` (shell syntax) with a parser holding only ``calo``; run its handler."""
    parser = argparse.ArgumentParser(prog="lartpc-bayes")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(shlex.split(command))
    return args.func(args)


def test_simulate_fit_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A card with short NUTS chains for the fit (``--card`` overrides the card stored in the data).
    raw = yaml.safe_load(DEFAULT_CARD_PATH.read_text())
    raw["calibration"].update(nuts_warmup=100, nuts_samples=100)
    card = tmp_path / "short.yaml"
    card.write_text(yaml.safe_dump(raw))
    train, test = tmp_path / "train.h5", tmp_path / "test.h5"
    assert _run(f"calo simulate -n 4000 --seed 1 -o {train} --no-progress") == 0
    assert _run(f"calo simulate -n 3000 --seed 2 -o {test} --no-progress") == 0
    with h5py.File(train) as f:
        assert f["layers"].shape == (4000, 50) and f.attrs["seed"] == 1
    model = tmp_path / "model.h5"
    methods = "sum,linear_relative,perlayer,mdn"
    assert (
        _run(
            f"calo fit --data {train} --card {card} -o {model} --epochs 2 --methods {methods} "
            "--no-progress"
        )
        == 0
    )
    assert read_model(model)[1].calibration.nuts_samples == 100  # the --card card was used
    out = tmp_path / "report"
    assert _run(f"calo report --model {model} --data {test} --out-dir {out} --bootstrap 5") == 0
    report = json.loads((out / "calo_report.json").read_text())
    assert set(report["methods"]) == {"sum", "linear_relative", "perlayer", "mdn"}
    assert report["n_events"] == 3000 and len(report["edges"]) == 19
    ratio = np.asarray(report["methods"]["perlayer"]["bins"]["resolution_over_truth"], float)
    assert np.all(np.isfinite(ratio)) and np.all((ratio > 0.5) & (ratio < 2.0))
    assert "perlayer_within_10pct" in report["targets"]
    table = (out / "calo_table.md").read_text()
    assert table.startswith("| E_true bin [GeV] | truth | sum |")
    for name in ("linearity", "resolution", "pulls", "pit", "weights", "training", "generator"):
        assert (out / f"calo_{name}.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_fixed_energy_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "pi0.h5"
    assert _run(f"calo simulate -n 500 --energy 20 --particle pi0 -o {path} --no-progress") == 0
    with h5py.File(path) as f:
        assert np.all(f["e_true"][()] == np.float32(20.0))
        assert np.all(f["particle"][()] == 111)


def test_errors_exit_2_and_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.h5"
    assert _run(f"calo fit --data {missing} -o {tmp_path / 'm.h5'}") == 2
    assert "missing.h5" in capsys.readouterr().err
    bad_card = tmp_path / "card.yaml"
    bad_card.write_text("name: x\n")
    assert _run(f"calo simulate --card {bad_card} -o {tmp_path / 'e.h5'}") == 2
    err = capsys.readouterr().err
    assert "card.yaml: missing key 'description'" in err
    assert _run(f"calo simulate --e-min 10 --e-max 5 -o {tmp_path / 'e.h5'}") == 2
    assert not (tmp_path / "e.h5").exists()
