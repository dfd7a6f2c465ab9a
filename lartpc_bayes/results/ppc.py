"""Posterior-predictive checks of a fit: replicated hit tables from the stochastic readout against
the observed ones (hits, total and mean hit charge, charge spectrum KS / CvM, first-hit time,
hits per channel), with two-sided predictive p-values and randomized PIT uniformity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from ..detector import DetectorCard
from .datatree import _fmt, card_from_datatree


def _two_sided_p(t_rep: np.ndarray, t_obs: float) -> float:
    """Two-sided predictive p-value 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)), capped at 1."""
    t_rep = np.asarray(t_rep, np.float64)
    t_rep = t_rep[np.isfinite(t_rep)]
    if t_rep.size == 0 or not np.isfinite(t_obs):
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(t_rep >= t_obs), np.mean(t_rep <= t_obs))))


def _adc_hist(tables: np.ndarray, n_codes: int) -> np.ndarray:
    """(..., channels, M, 2) -> (..., n_codes) counts of valid hits per ADC code."""
    t = np.asarray(tables)
    lead = t.shape[:-3]
    flat = t.reshape((-1, *t.shape[-3:]))
    out = np.zeros((flat.shape[0], n_codes), np.int64)
    for i, tb in enumerate(flat):
        valid = tb[..., 0] >= 0
        out[i] = np.bincount(np.clip(tb[..., 1][valid], 0, n_codes - 1), minlength=n_codes)
    return out.reshape((*lead, n_codes))


def _cdf(h: np.ndarray) -> np.ndarray:
    n = h.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.cumsum(h, -1) / n


def _distances(h_a: np.ndarray, h_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KS and Cramér–von Mises distances between the ADC-code histograms ``h_a`` (..., K) and
    reference histograms ``h_ref`` (..., K): KS = max |F_a - F_ref|,
    CvM = sum_k (F_a - F_ref)^2 p_ref(k) (the integral of (F_a - F_ref)^2 dF_ref)."""
    fa, fr = _cdf(h_a), _cdf(h_ref)
    nr = h_ref.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = h_ref / nr
    ks = np.max(np.abs(fa - fr), -1)
    cvm = np.sum((fa - fr) ** 2 * pr, -1)
    return ks, cvm


def _hits_per_channel(tables: np.ndarray) -> np.ndarray:
    return np.sum(np.asarray(tables)[..., 0] >= 0, axis=-1)


def _first_tick(tables: np.ndarray) -> np.ndarray:
    """First-hit tick per channel (float, NaN where the channel has no hit)."""
    t = np.asarray(tables)[..., 0].astype(np.float64)
    t = np.where(t >= 0, t, np.inf)
    f = t.min(-1)
    return np.where(np.isfinite(f), f, np.nan)


def real_channels(dt: xr.DataTree) -> np.ndarray:
    """Mask of the observed table's rows that are real channels (not plan padding)."""
    obs = dt["observed_data"]["hits"]
    if "event" in obs.coords:
        return np.asarray(obs["event"].values) >= 0
    return np.ones(obs.sizes["channel"], bool)


def _randomized_pit(rep: np.ndarray, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomised rank PIT of obs[c] among the n finite replicas rep[:, c]:
    (#{rep < obs} + V (#{rep == obs} + 1)) / (n + 1), V ~ U(0, 1). The observation is ranked as
    one more exchangeable draw, so under the model the value is exactly U(0, 1) for discrete and
    continuous statistics and never exactly 0 or 1 (which would break the uniformity test).
    NaN where no replica is finite."""
    ok = np.isfinite(rep)
    n = ok.sum(0)
    lt = np.sum(ok & (rep < obs), 0)
    eq = np.sum(ok & (rep == obs), 0)
    v = rng.uniform(size=np.shape(obs))
    return np.where(n > 0, (lt + v * (eq + 1)) / (n + 1), np.nan)


def _uniformity(pit: np.ndarray) -> float:
    """arviz-stats POT-C uniformity test p-value of the finite PIT values (NaN if < 5)."""
    import arviz_stats  # noqa: F401 - registers the .azstats accessor

    p = pit[np.isfinite(pit)]
    if p.size < 5:
        return float("nan")
    try:
        res = xr.DataArray(p, dims=["pit_dim"]).azstats.uniformity_test(dim=["pit_dim"])
        return float(np.asarray(res[0]))
    except Exception:  # pragma: no cover - arviz-stats API drift
        return float("nan")


def ppc_checks(dt: xr.DataTree, card: DetectorCard | None = None, *, seed: int = 0
               ) -> dict[str, Any]:
    """Observed hits against the posterior-predictive replicas (``posterior_predictive/hits``).

    Returns a nested dict of plain numbers:

    * ``hit_count``: observed N, replica mean/sd, two-sided predictive p-value.
    * ``channels_hit``: same for the number of channels with at least one hit.
    * ``total_charge_ke``: same for the summed charge (ADC -> ke-, ``readout.adc_to_charge``).
    * ``charge``: spectrum of hit charges (ke-): observed mean and 10/50/90 % quantiles, the
      replicas' (mean over replicas); KS and Cramér–von Mises distances of the observed spectrum
      to the pooled replicated spectrum with predictive p-values from the same distances of each
      replica to the pool of the others (leave-one-out), p = P(d_rep >= d_obs).
    * ``times``: first-hit tick per channel hit in the data: mean and rms of
      (observed - predictive mean) in ticks and us over channels, the mean fraction of replicas
      with a hit there; PIT uniformity p-value (arviz-stats) of the first-hit ticks.
    * ``hits_per_channel``: observed histogram of hits per channel (0..M) and replica mean/sd;
      PIT uniformity p-value of the per-channel counts (channels hit in data or any replica).

    If every replica equals the observed table, all p-values are 1 and all distances 0.
    """
    from ..forward.readout import adc_to_charge

    if "posterior_predictive" not in dt.children or "observed_data" not in dt.children:
        raise ValueError("need observed_data and posterior_predictive groups")
    card = card or card_from_datatree(dt)
    el = card.electronics
    obs = np.asarray(dt["observed_data"]["hits"].values)
    rep = np.asarray(dt["posterior_predictive"]["hits"].values)
    rep = rep.reshape((-1, *rep.shape[-3:]))
    S = rep.shape[0]
    K = el.adc_counts
    q_code = np.asarray(adc_to_charge(np.arange(K, dtype=np.float64), el), np.float64) / 1e3
    rng = np.random.default_rng(seed)

    out: dict[str, Any] = {"n_replicas": int(S), "n_channels": int(obs.shape[0])}

    # --- counts --------------------------------------------------------------------------------
    n_obs = int(np.sum(obs[..., 0] >= 0))
    n_rep = np.sum(rep[..., 0] >= 0, axis=(1, 2))
    out["hit_count"] = {"observed": n_obs, "mean": float(n_rep.mean()),
                        "sd": float(n_rep.std(ddof=1)) if S > 1 else float("nan"),
                        "p_value": _two_sided_p(n_rep, n_obs)}
    hpc_obs = _hits_per_channel(obs)
    hpc_rep = _hits_per_channel(rep)
    c_obs = int(np.sum(hpc_obs > 0))
    c_rep = np.sum(hpc_rep > 0, axis=1)
    out["channels_hit"] = {"observed": c_obs, "mean": float(c_rep.mean()),
                           "sd": float(c_rep.std(ddof=1)) if S > 1 else float("nan"),
                           "p_value": _two_sided_p(c_rep, c_obs)}

    # --- charge spectrum -----------------------------------------------------------------------
    h_obs = _adc_hist(obs, K)
    h_rep = _adc_hist(rep, K)
    # the same row-wise reduction for data and replicas (identical tables -> identical sums)
    qt_all = (np.concatenate([h_obs[None], h_rep]) * q_code).sum(-1)
    qt_obs, qt_rep = float(qt_all[0]), qt_all[1:]
    out["total_charge_ke"] = {"observed": qt_obs, "mean": float(qt_rep.mean()),
                              "sd": float(qt_rep.std(ddof=1)) if S > 1 else float("nan"),
                              "p_value": _two_sided_p(qt_rep, qt_obs)}

    def quantiles(h):
        n = h.sum()
        if n == 0:
            return [float("nan")] * 3
        c = np.cumsum(h) / n
        return [float(q_code[min(np.searchsorted(c, q), K - 1)]) for q in (0.1, 0.5, 0.9)]

    with np.errstate(invalid="ignore", divide="ignore"):
        mean_obs = float(qt_obs / h_obs.sum()) if h_obs.sum() else float("nan")
        mean_rep = np.where(h_rep.sum(1) > 0, qt_rep / np.maximum(h_rep.sum(1), 1), np.nan)
    qs_rep = np.array([quantiles(h) for h in h_rep])
    pool = h_rep.sum(0)
    ks_obs, cvm_obs = _distances(h_obs, pool)
    loo = pool[None] - h_rep
    ks_rep, cvm_rep = _distances(h_rep, loo)
    ok = (h_rep.sum(1) > 0) & (loo.sum(1) > 0)
    charge = {
        "observed_mean": mean_obs,
        "observed_q10_q50_q90": quantiles(h_obs),
        "predictive_mean": float(np.nanmean(mean_rep)) if np.isfinite(mean_rep).any() else np.nan,
        "predictive_mean_sd": float(np.nanstd(mean_rep, ddof=1)) if ok.sum() > 1 else np.nan,
        "predictive_q10_q50_q90": [float(x) for x in np.nanmean(qs_rep, 0)]
        if np.isfinite(qs_rep).any() else [float("nan")] * 3,
        "ks": float(ks_obs),
        "ks_p_value": float(np.mean(ks_rep[ok] >= ks_obs)) if ok.any() and np.isfinite(ks_obs)
        else float("nan"),
        "cvm": float(cvm_obs),
        "cvm_p_value": float(np.mean(cvm_rep[ok] >= cvm_obs)) if ok.any() and np.isfinite(cvm_obs)
        else float("nan"),
        "mean_p_value": _two_sided_p(mean_rep, mean_obs),
    }
    out["charge"] = charge

    # --- per-pixel hit times -------------------------------------------------------------------
    f_obs = _first_tick(obs)
    f_rep = _first_tick(rep)
    hit = np.isfinite(f_obs)
    f_rep_hit = f_rep[:, hit]
    present = np.isfinite(f_rep_hit)
    cnt = present.sum(0)
    pred_mean = np.where(cnt > 0, np.where(present, f_rep_hit, 0.0).sum(0) / np.maximum(cnt, 1),
                         np.nan)
    resid = f_obs[hit] - pred_mean
    rok = np.isfinite(resid)
    tick_us = el.tick_us
    time_pit = _randomized_pit(f_rep_hit, f_obs[hit], rng)
    out["times"] = {
        "channels": int(hit.sum()),
        "channels_with_prediction": int(rok.sum()),
        "mean_residual_ticks": float(resid[rok].mean()) if rok.any() else float("nan"),
        "rms_residual_ticks": float(np.sqrt(np.mean(resid[rok] ** 2))) if rok.any()
        else float("nan"),
        "mean_residual_us": float(resid[rok].mean() * tick_us) if rok.any() else float("nan"),
        "mean_hit_probability": float(present.mean()) if present.size else float("nan"),
        "pit_uniformity_p": _uniformity(time_pit),
    }

    # --- hits per channel (real channels only: padding rows of the plan have event = -1) --------
    M = obs.shape[1]
    real = real_channels(dt)
    hpc_obs, hpc_rep = hpc_obs[real], hpc_rep[:, real]
    hist_obs = np.bincount(hpc_obs, minlength=M + 1)
    hist_rep = np.stack([np.bincount(h, minlength=M + 1) for h in hpc_rep])
    active = (hpc_obs > 0) | np.any(hpc_rep > 0, axis=0)
    count_pit = _randomized_pit(hpc_rep[:, active].astype(float), hpc_obs[active].astype(float),
                                rng)
    out["hits_per_channel"] = {
        "observed_hist": [int(x) for x in hist_obs],
        "predictive_mean_hist": [float(x) for x in hist_rep.mean(0)],
        "predictive_sd_hist": [float(x) for x in hist_rep.std(0, ddof=1)] if S > 1
        else [float("nan")] * (M + 1),
        "active_channels": int(active.sum()),
        "pit_uniformity_p": _uniformity(count_pit),
    }
    return out


def format_ppc(ppc: dict[str, Any]) -> str:
    """The posterior-predictive numbers as text."""
    lines = [f"Posterior-predictive checks ({ppc['n_replicas']} replicas of the stochastic "
             "simulator, parameters and dE/dx from the posterior)"]
    hdr = f"  {'quantity':<26}{'observed':>12}{'pred. mean':>12}{'pred. sd':>12}{'p-value':>10}"
    lines.append(hdr)
    for key, label in (("hit_count", "hits"), ("channels_hit", "channels with hits"),
                       ("total_charge_ke", "total charge [ke-]")):
        d = ppc[key]
        lines.append(f"  {label:<26}{_fmt(d['observed']):>12}{_fmt(d['mean']):>12}"
                     f"{_fmt(d['sd']):>12}{_fmt(d['p_value'], 3):>10}")
    c = ppc["charge"]
    lines.append(f"  {'mean hit charge [ke-]':<26}{_fmt(c['observed_mean']):>12}"
                 f"{_fmt(c['predictive_mean']):>12}{_fmt(c['predictive_mean_sd']):>12}"
                 f"{_fmt(c['mean_p_value'], 3):>10}")
    qo = ", ".join(_fmt(x) for x in c["observed_q10_q50_q90"])
    qp = ", ".join(_fmt(x) for x in c["predictive_q10_q50_q90"])
    lines.append(f"  charge spectrum [ke-] q10/q50/q90: observed {qo}; predictive {qp}")
    lines.append(f"  charge spectrum distance to the predictive: KS {_fmt(c['ks'], 3)} "
                 f"(p = {_fmt(c['ks_p_value'], 3)}), Cramér–von Mises {_fmt(c['cvm'], 3)} "
                 f"(p = {_fmt(c['cvm_p_value'], 3)})")
    t = ppc["times"]
    lines.append(f"  first-hit time, observed - predictive over {t['channels']} hit channels: "
                 f"mean {_fmt(t['mean_residual_ticks'])} ticks ({_fmt(t['mean_residual_us'])} us),"
                 f" rms {_fmt(t['rms_residual_ticks'])} ticks; predicted hit probability "
                 f"{_fmt(t['mean_hit_probability'], 3)}; PIT uniformity p = "
                 f"{_fmt(t['pit_uniformity_p'], 3)}")
    h = ppc["hits_per_channel"]
    ho = " ".join(str(x) for x in h["observed_hist"])
    hp = " ".join(_fmt(x, 3) for x in h["predictive_mean_hist"])
    lines.append(f"  hits per channel 0..M: observed [{ho}]")
    lines.append(f"                      predictive [{hp}]  (PIT uniformity p = "
                 f"{_fmt(h['pit_uniformity_p'], 3)} over {h['active_channels']} channels)")
    return "\n".join(lines)
