"""Tests of lartpc_bayes.results / plots: DataTree conversion, summary and correlations against
known draws, netCDF round trip, atomic save, posterior-predictive checks, plots, and one short
real SVI fit of a few cm of muon track end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lartpc_bayes import results as R
from lartpc_bayes.detector import PARAM_NAMES, load_card
from lartpc_bayes.forward.generator import generate
from lartpc_bayes.infer import FitResult
from lartpc_bayes.model import build_problem
from lartpc_bayes.results import plots
from lartpc_bayes.results.ppc import _two_sided_p

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Known posterior of the synthetic fits: means = nominal, sd = 1 % of nominal (A_B: 2 %),
# correlation A_B-k_B +0.8, E-tau -0.5, D_L-D_T +0.3, the rest 0.
REL_SD = np.array([0.02, 0.01, 0.01, 0.01, 0.01, 0.01])
CORR = np.eye(6)
for (i, j), r in {(0, 1): 0.8, (2, 3): -0.5, (4, 5): 0.3}.items():
    CORR[i, j] = CORR[j, i] = r


@pytest.fixture(scope="module")
def card():
    return load_card("module0")


@pytest.fixture(scope="module")
def segments(card):
    seg = generate(card, "muons", 1, 0)
    # ~4 cm of one muon (10 segments): two buckets of channels; 8 cm makes a third bucket and
    # doubles the compile time of the fit below
    return seg.select(np.cumsum(seg.dx) <= 4.0)


@pytest.fixture(scope="module")
def problem(card, segments):
    """Tiny problem with a synthetic observed table (no simulation: cheap)."""
    prob = build_problem(card, segments, latent_length_cm=2.0)
    n_chan = sum(b.n_channels for b in prob.plan.buckets)
    M = card.electronics.max_hits_per_pixel
    rng = np.random.default_rng(11)
    table = np.full((n_chan, M, 2), -1, np.int32)
    for c in range(n_chan):
        k = int(rng.integers(0, 4))
        table[c, :k, 0] = np.sort(rng.choice(np.arange(1000, 1400), k, replace=False))
        table[c, :k, 1] = rng.integers(80, 200, k)
    return replace(prob, table=table)


def _gaussian_fit(card, problem, *, chains=4, draws=1000, seed=0, method="nuts",
                  n_div=3, chain_shift=None):
    nom = np.array([card.nominal()[p] for p in PARAM_NAMES])
    sd = REL_SD * nom
    cov = CORR * np.outer(sd, sd)
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(nom, cov, size=(chains, draws))
    if chain_shift is not None:
        x[0, :, 0] += chain_shift * sd[0]
    samples = {p: x[..., i] for i, p in enumerate(PARAM_NAMES)}
    samples["z_dEdx"] = rng.normal(size=(chains, draws, problem.n_latent))
    samples["dEdx"] = 1.874 + 0.113 * samples["z_dEdx"]
    div = np.zeros(chains * draws, bool)
    div[rng.choice(div.size, n_div, replace=False)] = True
    stats = {"diverging": div.reshape(chains, draws),
             "energy": rng.normal(size=(chains, draws)),
             "n_steps": np.full((chains, draws), 15),
             "acceptance_rate": rng.uniform(0.7, 1, (chains, draws))} if method == "nuts" else {}
    return FitResult(method, samples, stats, timings={"fit_s": 1.5},
                     info={"num_chains": chains}), nom, sd


# ------------------------------------------------------------------------------------------------
# summary / correlations against known draws
# ------------------------------------------------------------------------------------------------


def test_summary_and_correlation_match_known_gaussian(card, problem):
    chains, draws = 4, 1000
    fit, nom, sd = _gaussian_fit(card, problem, chains=chains, draws=draws)
    # truth shifted by d posterior sds: expected pull = (mean - truth)/sd = -d
    d = np.array([0.0, 1.0, -2.0, 0.5, 3.0, -1.0])
    truth = dict(zip(PARAM_NAMES, nom + d * sd, strict=True))
    dt = R.to_datatree(fit, problem, truth=truth)
    tab = R.summary_table(dt)
    N = chains * draws
    # Monte Carlo errors of N independent Gaussian draws (4 sigma bands):
    #   mean: sd/sqrt(N); sd: sd/sqrt(2(N-1)); correlation r: (1 - rho^2)/sqrt(N);
    #   pull = (mean_hat - truth)/sd_hat = -d (1 - eps_sd) + eps_mean, |eps| ~ 1/sqrt(N), 1/sqrt(2N)
    assert list(tab.index) == list(PARAM_NAMES)
    assert np.all(np.abs(tab["mean"].to_numpy() - nom) < 4 * sd / np.sqrt(N))
    assert np.all(np.abs(tab["sd"].to_numpy() / sd - 1) < 4 / np.sqrt(2 * (N - 1)))
    np.testing.assert_allclose(tab["truth"], nom + d * sd, rtol=1e-12)
    pull_tol = 4 / np.sqrt(N) + np.abs(d) * 4 / np.sqrt(2 * N)
    assert np.all(np.abs(tab["pull"].to_numpy() + d) < pull_tol)
    # 68 % equal-tailed interval of a Gaussian: mean -+ 0.9945 sd (MC error ~ 2.5 sd/sqrt(N))
    lo, hi = tab.attrs["ci_columns"]
    assert lo == "eti68_lb" and hi == "eti68_ub"
    z68 = 0.994458
    assert np.all(np.abs((tab[lo].to_numpy() - nom) / sd + z68) < 10 / np.sqrt(N))
    assert np.all(np.abs((tab[hi].to_numpy() - nom) / sd - z68) < 10 / np.sqrt(N))
    # independent draws: R-hat ~ 1 + O(1/N), ESS ~ N
    assert np.all(np.abs(tab["r_hat"] - 1) < 0.01)
    assert np.all(tab["ess_bulk"] > 0.7 * N) and np.all(tab["ess_tail"] > 0.7 * N)
    assert tab.attrs["divergences"] == 3
    assert tab.attrs["n_chains"] == chains and tab.attrs["n_draws"] == draws

    c = R.correlation_matrix(dt)
    assert list(c.index) == list(PARAM_NAMES) == list(c.columns)
    tol = 4 * (1 - CORR**2) / np.sqrt(N) + 1e-12
    assert np.all(np.abs(c.to_numpy() - CORR) <= tol)


def test_exact_moments_give_exact_pulls(card, problem):
    """Draws whitened to an exact sample mean/covariance (ddof=1, as arviz-stats' sd):
    mean, sd, correlation and pulls are then exact up to rounding."""
    fit, nom, sd = _gaussian_fit(card, problem, chains=2, draws=300, seed=5)
    x = np.stack([fit.samples[p].reshape(-1) for p in PARAM_NAMES], 1)
    z = x - x.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    x = nom + z @ np.linalg.cholesky(CORR * np.outer(sd, sd)).T
    for i, p in enumerate(PARAM_NAMES):
        fit.samples[p] = x[:, i].reshape(2, 300)
    truth = dict(zip(PARAM_NAMES, nom - 1.5 * sd, strict=True))
    dt = R.to_datatree(fit, problem, truth=truth)
    tab = R.summary_table(dt)
    np.testing.assert_allclose(tab["mean"], nom, rtol=1e-10)
    np.testing.assert_allclose(tab["sd"], sd, rtol=1e-9)
    np.testing.assert_allclose(tab["pull"], 1.5, rtol=1e-8)
    np.testing.assert_allclose(R.correlation_matrix(dt).to_numpy(), CORR, atol=1e-9)


def test_rhat_flags_a_shifted_chain_and_report(card, problem):
    fit, nom, sd = _gaussian_fit(card, problem, chains=4, draws=500, chain_shift=2.0)
    hess = (CORR, sd * 1.1, "synthetic")
    dt = R.to_datatree(fit, problem, truth=dict(zip(PARAM_NAMES, nom, strict=True)),
                       hessian=hess)
    tab = R.summary_table(dt)
    assert tab.loc["A_B", "r_hat"] > 1.01
    flags = R.diagnostics(dt, tab)
    assert any(f.startswith("r_hat > 1.01") and "A_B" in f for f in flags)
    assert any("divergent" in f for f in flags)
    text = R.format_report(dt)
    for s in ("Posterior correlation", "Hessian pseudo-correlation", "Hessian sd", "kV/cm",
              "3 divergences / 2000 draws", "A_B", "D_T", "(Hessian: synthetic)"):
        assert s in text, s
    # sd ratio posterior / Hessian ~ 1/1.1
    line = next(ln for ln in text.splitlines() if ln.startswith("tau") and "0.9" in ln)
    assert float(line.split()[-1]) == pytest.approx(1 / 1.1, abs=4 * 0.02)


def test_single_chain_svi_has_nan_rhat(card, problem):
    fit, _, _ = _gaussian_fit(card, problem, chains=1, draws=200, method="svi-normal")
    dt = R.to_datatree(fit, problem)
    assert len(dt["sample_stats"].data_vars) == 0
    tab = R.summary_table(dt)
    assert tab["r_hat"].isna().all()
    assert tab["truth"].isna().all() and tab["pull"].isna().all()
    assert tab.attrs["divergences"] is None
    text = R.format_report(dt)
    assert "n/a" in text and "SVI posterior" in text and "no sampler statistics" in text


# ------------------------------------------------------------------------------------------------
# DataTree layout and persistence
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_dt(card, problem, segments):
    fit, nom, sd = _gaussian_fit(card, problem, chains=2, draws=150, seed=3)
    fit.map_values = {**{p: nom[i] for i, p in enumerate(PARAM_NAMES)},
                      "z_dEdx": np.zeros(problem.n_latent)}
    fit.info["losses"] = np.linspace(10, 1, 30)
    rng = np.random.default_rng(4)
    obs = problem.table
    pp = np.repeat(obs[None], 40, 0)
    prior = {p: rng.uniform(s.low, s.high, 25) for s in card.params for p in [s.name]}
    prior["z_dEdx"] = rng.normal(size=(25, problem.n_latent))
    prior["dEdx"] = 1.874 + 0.113 * prior["z_dEdx"]
    prior["hits"] = np.repeat(obs[None], 25, 0)
    truth_seg = np.asarray(segments.dEdx)
    return R.to_datatree(
        fit, problem, prior=prior, posterior_predictive=pp,
        truth=dict(zip(PARAM_NAMES, nom, strict=True)), truth_dEdx=truth_seg,
        hessian=(CORR, sd), attrs={"seed": 17, "card_file": "models/module0.yaml",
                                    "extra": {"a": [1, 2]}, "timings": {"ppc_s": 2.0}})


def test_datatree_groups_dims_attrs(full_dt, problem, segments, card):
    dt = full_dt
    assert set(dt.children) >= {"posterior", "sample_stats", "observed_data",
                                "posterior_predictive", "prior", "prior_predictive", "truth",
                                "hessian", "map", "optimization"}
    post = dt["posterior"]
    assert post["A_B"].dims == ("chain", "draw")
    assert post["dEdx"].dims == ("chain", "draw", "latent")
    assert post["z_dEdx"].sizes["latent"] == problem.n_latent
    obs = dt["observed_data"]["hits"]
    assert obs.dims == ("channel", "slot", "field")
    assert list(obs["field"].values) == ["tick", "adc"]
    np.testing.assert_array_equal(obs.values, problem.table)
    assert "event" in obs.coords and "pixel" in obs.coords
    pp = dt["posterior_predictive"]["hits"]
    assert pp.dims == ("chain", "draw", "channel", "slot", "field") and pp.shape[:2] == (1, 40)
    assert dt["prior"]["A_B"].shape == (1, 25)
    assert dt["prior_predictive"]["hits"].shape[:2] == (1, 25)
    assert set(dt["sample_stats"].data_vars) == {"diverging", "energy", "n_steps",
                                                 "acceptance_rate"}
    tr = dt["truth"]
    assert all(tr[p].shape == () for p in PARAM_NAMES)
    np.testing.assert_allclose(tr["dEdx"].values,
                               R.latent_truth(problem, segments.dEdx), rtol=1e-12)
    assert dt["hessian"]["corr"].dims == ("param", "param2")
    assert list(dt["hessian"]["param"].values) == list(PARAM_NAMES)
    a = dt.attrs
    assert a["method"] == "nuts" and a["card_name"] == card.name and a["seed"] == 17
    assert "electronics:" in a["card_yaml"] and a["package_version"]
    assert json.loads(a["timings"]) == {"fit_s": 1.5, "ppc_s": 2.0}
    assert R.json_attr(dt, "free_params") == list(PARAM_NAMES)
    assert json.loads(a["likelihood"])["kind"] == problem.likelihood.kind
    assert json.loads(a["extra"]) == {"a": [1, 2]}
    # the stored card is the card
    assert R.card_from_datatree(dt) == replace(card, source=R.card_from_datatree(dt).source)


def test_latent_truth_is_length_weighted(problem, segments):
    d = np.arange(segments.n, dtype=float)
    dx = np.asarray(segments.dx)
    lt = R.latent_truth(problem, d, dx)
    for k in range(problem.n_latent):
        m = problem.seg_to_latent == k
        assert lt[k] == pytest.approx(np.sum(d[m] * dx[m]) / np.sum(dx[m]))


def test_netcdf_round_trip(full_dt, tmp_path):
    path = R.save_datatree(full_dt, tmp_path / "post.nc")
    assert path.exists() and [p.name for p in tmp_path.iterdir()] == ["post.nc"]
    back = R.load_datatree(path)
    path.unlink()  # fully in memory: the file is no longer needed
    assert set(back.children) == set(full_dt.children)
    assert back.attrs == full_dt.attrs
    for g in full_dt.children:
        xr.testing.assert_identical(back[g].to_dataset(), full_dt[g].to_dataset())
    assert back["sample_stats"]["diverging"].dtype == bool
    assert back["observed_data"]["hits"].dtype == np.int32
    # the report of the reloaded tree is the same text
    assert R.format_report(back) == R.format_report(full_dt)


def test_atomic_save_leaves_nothing_on_failure(full_dt, tmp_path):
    target = tmp_path / "post.nc"
    R.save_datatree(full_dt, target)
    before = target.read_bytes()
    bad = full_dt.copy(deep=True)
    bad["posterior"].attrs["unstorable"] = {"a": 1}  # netCDF cannot store a dict attribute
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend raises
        R.save_datatree(bad, target)
    assert [p.name for p in tmp_path.iterdir()] == ["post.nc"]  # no temporary left behind
    assert target.read_bytes() == before  # old file untouched
    with pytest.raises(Exception):  # noqa: B017
        R.save_datatree(bad, tmp_path / "new.nc")
    assert [p.name for p in tmp_path.iterdir()] == ["post.nc"]


# ------------------------------------------------------------------------------------------------
# posterior-predictive checks
# ------------------------------------------------------------------------------------------------


def test_ppc_identical_replicas(full_dt, card):
    """Every replica equals the data: T_rep = T_obs for every statistic, so
    P(T_rep >= T_obs) = P(T_rep <= T_obs) = 1 and the two-sided p = min(1, 2) = 1; the pooled
    spectrum is S x the observed one, so its ECDF equals the observed ECDF exactly (same rational
    numbers, correctly rounded) and KS = CvM = 0; the leave-one-out references are (S-1) x the
    data, also at distance 0, and P(0 >= 0) = 1; first-hit residuals are 0."""
    out = R.ppc_checks(full_dt, card)
    n_obs = int(np.sum(full_dt["observed_data"]["hits"].values[..., 0] >= 0))
    assert out["n_replicas"] == 40
    assert out["hit_count"] == {"observed": n_obs, "mean": n_obs, "sd": 0.0, "p_value": 1.0}
    for key in ("channels_hit", "total_charge_ke"):
        assert out[key]["p_value"] == 1.0 and out[key]["sd"] == 0.0
    assert out["total_charge_ke"]["mean"] == out["total_charge_ke"]["observed"]
    ch = out["charge"]
    assert ch["ks"] == 0.0 and ch["cvm"] == 0.0
    assert ch["ks_p_value"] == 1.0 and ch["cvm_p_value"] == 1.0 and ch["mean_p_value"] == 1.0
    assert ch["observed_q10_q50_q90"] == ch["predictive_q10_q50_q90"]
    t = out["times"]
    assert t["mean_residual_ticks"] == 0.0 and t["rms_residual_ticks"] == 0.0
    assert t["mean_hit_probability"] == 1.0
    h = out["hits_per_channel"]
    assert h["observed_hist"] == h["predictive_mean_hist"]
    assert "Posterior-predictive checks (40 replicas" in R.format_ppc(out)


def test_ppc_detects_shifted_charge_and_missing_hits(full_dt, card):
    dt = full_dt.copy()
    rep = dt["posterior_predictive"]["hits"].values.copy()
    valid = rep[..., 0] >= 0
    rep[..., 1] = np.where(valid, rep[..., 1] + 15, -1)  # every hit 15 ADC higher
    c0 = int(np.nonzero(valid[0, 0].any(-1))[0][0])  # first channel with a hit: never hit
    rep[:, :, c0] = -1
    dt["posterior_predictive"] = xr.DataTree(
        dt["posterior_predictive"].to_dataset().assign(
            hits=(dt["posterior_predictive"]["hits"].dims, rep)))
    out = R.ppc_checks(dt, card)
    # all replicas identical to each other and all shifted: d_rep = 0 < d_obs -> p = 0
    assert out["charge"]["ks"] > 0.05 and out["charge"]["ks_p_value"] == 0.0
    assert out["charge"]["cvm_p_value"] == 0.0
    assert out["total_charge_ke"]["p_value"] == 0.0
    # every replica has fewer hits than the data: P(T_rep >= T_obs) = 0 -> p = 0
    assert out["hit_count"]["p_value"] == 0.0
    assert out["hit_count"]["mean"] < out["hit_count"]["observed"]
    t = out["times"]
    assert t["channels_with_prediction"] == t["channels"] - 1
    assert t["mean_residual_ticks"] == 0.0  # times untouched in the other channels


def test_two_sided_p_value():
    # P(T >= 4) = 1/4, P(T <= 4) = 1 -> 2 x 1/4
    assert _two_sided_p(np.array([1, 2, 3, 4]), 4) == 0.5
    assert _two_sided_p(np.array([1, 2, 3, 4]), 5) == 0.0
    assert _two_sided_p(np.array([2, 2, 2]), 2) == 1.0


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------


def _is_png(p: Path) -> bool:
    return p.exists() and p.stat().st_size > 5000 and p.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png(full_dt, card, tmp_path):
    made = [plots.plot_pair(full_dt, tmp_path / "pair.png"),
            plots.plot_trace(full_dt, tmp_path / "trace.png"),
            plots.plot_ppc(full_dt, card, tmp_path / "ppc.png"),
            plots.plot_correlations(full_dt, tmp_path / "corr.png")]
    assert all(_is_png(p) for p in made)
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures closed


# ------------------------------------------------------------------------------------------------
# a short real fit end to end
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(card, segments):
    import jax

    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.infer import predictive_hits, run_svi

    nom = card.nominal()
    hits, _ = simulate_hits(jax.random.key(1), card, segments, DetectorParams.from_dict(nom))
    prob = build_problem(card, segments, hits, latent_length_cm=2.0)
    fit = run_svi(prob, guide="normal", steps=50, num_samples=100, seed=2)
    pp = predictive_hits(prob, fit.samples, seed=3, num_draws=20)
    dt = R.to_datatree(fit, prob, posterior_predictive=pp, truth=nom,
                       truth_dEdx=R.latent_truth(prob, segments.dEdx, segments.dx), seed=2)
    return prob, fit, dt


def test_real_fit_datatree_report_and_check(real, card, tmp_path):
    prob, _fit, dt = real
    assert dt.attrs["method"] == "svi-normal" and dt.attrs["seed"] == 2
    assert dt["posterior"]["A_B"].shape == (1, 100)
    assert dt["posterior"]["dEdx"].shape == (1, 100, prob.n_latent)
    assert dt["posterior_predictive"]["hits"].shape == (1, 20, *prob.table.shape)
    assert "loss" in dt["optimization"].data_vars
    tab = R.summary_table(dt)
    assert np.all(np.isfinite(tab[["mean", "sd", "pull"]].to_numpy()))
    assert tab["r_hat"].isna().all()
    ppc = R.ppc_checks(dt, card)
    assert ppc["hit_count"]["observed"] == int(np.sum(prob.table[..., 0] >= 0))
    assert 0 <= ppc["charge"]["ks_p_value"] <= 1
    path = R.save_datatree(dt, tmp_path / "fit.nc")
    text = R.check_file(path, quiet=True)
    assert "Calibration parameters" in text and "Posterior-predictive checks" in text
    for suffix in ("pair", "trace", "corr", "ppc"):
        assert _is_png(tmp_path / f"fit_{suffix}.png"), suffix
