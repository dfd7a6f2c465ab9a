"""Validation campaign runner: a tiny SBC in the default tier (resumable, tidy table, any
executor), the full campaigns of docs/validation.md in the slow tier."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lartpc_bayes import validation as V

CI = V.with_replicas(V.PRESETS["ci-sbc"], 3)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci-sbc")
    recs = V.run_campaign(CI, out, progress=False)
    return out, recs


def test_replicas_written_and_sane(campaign):
    out, recs = campaign
    assert [r["index"] for r in recs] == [0, 1, 2]
    assert (out / "config.json").exists()
    for r in recs:
        assert r["ok"], r["error"]
        # the Newton decrement: distance of the returned optimum from the true one in posterior sd
        assert r["converged"], r["newton_decrement"]
        assert set(r["params"]) == {"k_B", "D_L", "dEdx[0]", "dEdx[1]"}
        for s in r["params"].values():
            assert 0 < s["pit"] < 1
            assert s["q05"] <= s["median"] <= s["q95"]
            # derived tolerance: a calibrated posterior gives |pull| > 4.5 with probability
            # 7e-6 per parameter (12 pulls here), so this only fails on a broken fit
            assert abs(s["pull"]) < 4.5, s
        # importance weights usable (PSIS k-hat above 1 means the weights are meaningless)
        assert r["pareto_k"] < 1.0


def test_resume_only_runs_missing(campaign):
    out, _ = campaign
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("replica_*.json")}
    # an executor (here threads, sharing the compiled fitter) runs only the missing replica
    with ThreadPoolExecutor(1) as ex:
        recs = V.run_campaign(V.with_replicas(CI, 4), out, executor=ex, progress=False)
    assert len(recs) == 4
    for p in out.glob("replica_*.json"):
        if p.name in mtimes:
            assert p.stat().st_mtime_ns == mtimes[p.name]
    # a different configuration in the same directory is refused
    with pytest.raises(ValueError, match="different configuration"):
        V.run_campaign(dataclasses.replace(CI, seed=99), out, progress=False)


def test_tidy_table(campaign):
    out, _ = campaign
    df = V.collect(out)
    assert (out / "results.csv").exists() and (out / "results.nc").exists()
    assert {"replica", "param", "truth", "mean", "sd", "rank", "pit", "pull", "map_s"} <= set(
        df.columns
    )
    assert df.groupby("replica").size().eq(4).all()
    import xarray as xr

    ds = xr.open_dataset(out / "results.nc", engine="h5netcdf")
    assert json.loads(ds.attrs["config"])["name"] == "ci-sbc"
    assert np.isfinite(ds["pit"].values).all()
    ds.close()


def test_config_roundtrip():
    for cfg in V.PRESETS.values():
        assert V.CampaignConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        V.CampaignConfig("x", kind="nope")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sbc-ppp", "sbc-sequential"])
def test_sbc_campaign(name, tmp_path):
    """Slow tier: the full SBC campaign; rank uniformity not rejected at 1 % (PIT-ECDF POT-C
    test of arviz-stats) and 90 % intervals covering the truth in 85-95 % of replicas."""
    from lartpc_bayes.validation.report import sbc_summary

    cfg = V.PRESETS[name]
    V.run_campaign(cfg, tmp_path / name, progress=False)
    summ = sbc_summary(V.collect(tmp_path / name))
    for p in cfg.free:
        assert summ.loc[p, "p_uniform"] > 0.01, summ
        assert 0.85 <= summ.loc[p, "cover90"] <= 0.95, summ
