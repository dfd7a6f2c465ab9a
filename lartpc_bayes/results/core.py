"""Fit results as ArviZ 1.x DataTrees: conversion, summary, correlations, posterior-predictive
checks, netCDF persistence and the text report of ``lartpc-bayes demo`` / ``check``.

Layout of the DataTree (``docs/results.md``)::

    /                      attrs: method, card_name, card_yaml, seed, package_version, likelihood,
                           timings, fit_info, free_params, fixed_params, latent_prior, param_units
    /posterior             (chain, draw) free parameters [physical units]; dEdx, z_dEdx (latent)
    /sample_stats          NUTS: diverging, energy, n_steps, acceptance_rate; SVI: empty
    /observed_data         hits (channel, slot, field=[tick, adc]); channel coords event, pixel
    /posterior_predictive  hits (chain=1, draw, channel, slot, field)
    /prior                 (chain=1, draw) parameters, dEdx, z_dEdx
    /prior_predictive      hits
    /truth                 the six true parameters (scalars), dEdx (latent)   -- fake data only
    /hessian               corr (param, param2), sd (param): Hessian pseudo-correlation (talk 002)
    /map                   MAP point (MAP / Laplace fits)
    /optimization          loss (step): SVI loss history

Every group except posterior/observed_data is optional. Empty hit slots are -1 (tick and ADC).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from ..detector import PARAM_NAMES, DetectorCard, card_to_dict, parse_card

#: Results-file format tag and version, stored as root attributes.
FORMAT = "lartpc_bayes.posterior"
FORMAT_VERSION = 1

#: Diagnostic thresholds used by :func:`diagnostics` / :func:`check_file`.
RHAT_MAX = 1.01
ESS_MIN = 400.0
BFMI_MIN = 0.3

HIT_DIMS = ["channel", "slot", "field"]
FIELDS = ["tick", "adc"]


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("lartpc_bayes")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def _jsonable(v: Any) -> Any:
    """Plain JSON value or raise TypeError."""
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.item()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    raise TypeError(type(v).__name__)


def _json_attr(d: dict[str, Any]) -> str:
    """A mapping as a JSON string attribute, silently dropping values that are not plain data
    (arrays, optimiser states)."""
    out = {}
    for k, v in d.items():
        try:
            out[str(k)] = _jsonable(v)
        except TypeError:
            continue
    return json.dumps(out, sort_keys=True)


def _attr_value(v: Any) -> Any:
    """An attribute value netCDF can store: str/number/array; dicts and lists become JSON."""
    if isinstance(v, bool | np.bool_):
        return int(v)
    if isinstance(v, int | float | str | np.integer | np.floating):
        return v
    if isinstance(v, np.ndarray) and v.dtype.kind in "iuf":
        return v
    if isinstance(v, dict):
        return _json_attr(v)
    try:
        return json.dumps(_jsonable(v))
    except TypeError:
        return str(v)


def json_attr(dt: xr.DataTree, key: str, default: Any = None) -> Any:
    """Decode a JSON root attribute of a results DataTree (``timings``, ``fit_info``, ...)."""
    v = dt.attrs.get(key)
    if v is None:
        return default
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def _fmt(x: Any, digits: int = 4) -> str:
    """4 significant digits; NaN/None as 'n/a'."""
    if x is None:
        return "n/a"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(xf):
        return "n/a"
    return f"{xf:.{digits}g}"


def _fmt_int(x: Any) -> str:
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f"{xf:.0f}" if math.isfinite(xf) else "n/a"


def _ds(dt: xr.DataTree, group: str) -> xr.Dataset:
    return dt[group].to_dataset(inherit=False)


def param_names(dt: xr.DataTree, group: str = "posterior") -> list[str]:
    """The calibration parameters present in ``group``, in :data:`PARAM_NAMES` order."""
    if group not in dt.children:
        return []
    vars_ = dt[group].data_vars
    return [p for p in PARAM_NAMES if p in vars_]


def card_from_datatree(dt: xr.DataTree, where: str = "<results>") -> DetectorCard:
    """The detector card stored as YAML text in the root attributes."""
    text = dt.attrs.get("card_yaml")
    if not text:
        raise ValueError(f"{where}: no 'card_yaml' attribute; pass the card explicitly")
    return parse_card(yaml.safe_load(text), f"{where}:card_yaml")


def _param_units(dt: xr.DataTree) -> dict[str, str]:
    u = json_attr(dt, "param_units", {})
    return u if isinstance(u, dict) else {}


def _is_svi(dt: xr.DataTree) -> bool:
    return str(dt.attrs.get("method", "")).startswith("svi")


def _stack(ds: xr.Dataset, names: list[str]) -> np.ndarray:
    """(samples, n) array of the scalar variables ``names`` (chain and draw flattened)."""
    return np.stack([np.asarray(ds[n].values, np.float64).reshape(-1) for n in names], axis=1)


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------


def _with_chain(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[None]


def latent_truth(problem, dEdx_segments: np.ndarray, dx: np.ndarray | None = None) -> np.ndarray:
    """True dE/dx per latent from per-segment truth: sum(dE)/sum(dx) over the latent's segments
    (the length-weighted mean; the plain mean when ``dx`` is None)."""
    d = np.asarray(dEdx_segments, np.float64)
    s2l = np.asarray(problem.seg_to_latent)
    if d.shape != s2l.shape:
        raise ValueError(f"truth dE/dx has {d.shape[0]} entries, the problem {s2l.size} segments")
    w = np.ones_like(d) if dx is None else np.asarray(dx, np.float64)
    mip = s2l >= 0  # stopping-track segments have no MIP latent
    s2l, d, w = s2l[mip], d[mip], w[mip]
    num = np.bincount(s2l, weights=d * w, minlength=problem.n_latent)
    den = np.bincount(s2l, weights=w, minlength=problem.n_latent)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def to_datatree(
    fit,
    problem,
    *,
    prior: dict | None = None,
    posterior_predictive: np.ndarray | None = None,
    truth: dict[str, float] | None = None,
    truth_dEdx: np.ndarray | None = None,
    hessian: tuple | None = None,
    attrs: dict | None = None,
    seed: int | None = None,
) -> xr.DataTree:
    """Convert a :class:`lartpc_bayes.inference.FitResult` into an ArviZ 1.x DataTree.

    fit : FitResult (samples (chains, draws, ...), physical units).
    problem : the CalibrationProblem that was fitted (observed table, card, likelihood).
    prior : :func:`lartpc_bayes.inference.prior_samples` output (draws first); the parameters,
        dEdx, z_dEdx go to ``prior``, ``hits`` to ``prior_predictive``.
    posterior_predictive : (draws, channels, M, 2) hit tables
        (:func:`lartpc_bayes.inference.predictive_hits`) or already (chains, draws, ...).
    truth : true parameter values (fake data); truth_dEdx : per latent (n_latent) or per segment
        (averaged per latent; use :func:`latent_truth` for length weighting).
    hessian : (pseudo-correlation, sd) over ``problem.free`` from
        :func:`lartpc_bayes.inference.hessian_pseudo_correlation` or :func:`hessian_at_optimum`;
        an optional third element names how it was computed.
    attrs : extra root attributes (dicts/lists are stored as JSON strings); a ``timings`` dict is
        merged into the fit's timings (e.g. ``{"ppc_s": 3.2}``).
    seed : random seed of the fit (else ``attrs['seed']`` or ``fit.info['seed']``).
    """
    import arviz_base as azb

    free = list(problem.free)
    n_lat = int(problem.n_latent)
    samples = {k: np.asarray(v) for k, v in fit.samples.items()}
    post: dict[str, np.ndarray] = {}
    for p in free:
        if p not in samples:
            raise KeyError(f"fit has no samples of free parameter {p!r}")
        post[p] = samples[p].astype(np.float64)
    for k in ("dEdx", "z_dEdx", "end_shift_cm"):
        if k in samples:
            post[k] = samples[k].astype(np.float64)
    chains, draws = post[free[0]].shape[:2] if free else next(iter(post.values())).shape[:2]

    data: dict[str, dict[str, np.ndarray]] = {"posterior": post}
    stats = {k: np.asarray(v) for k, v in (fit.stats or {}).items()
             if np.asarray(v).shape[:2] == (chains, draws)}
    data["sample_stats"] = stats
    if problem.table is not None:
        data["observed_data"] = {"hits": np.asarray(problem.table, np.int32)}
    if posterior_predictive is not None:
        pp = np.asarray(posterior_predictive, np.int32)
        data["posterior_predictive"] = {"hits": pp if pp.ndim == 5 else _with_chain(pp)}
    if prior is not None:
        pr = {k: _with_chain(np.asarray(prior[k], np.float64))
              for k in (*free, "dEdx", "z_dEdx", "end_shift_cm") if k in prior}
        if pr:
            data["prior"] = pr
        if "hits" in prior:
            data["prior_predictive"] = {"hits": _with_chain(np.asarray(prior["hits"], np.int32))}

    dims = {"dEdx": ["latent"], "z_dEdx": ["latent"], "end_shift_cm": ["stopping"],
            "hits": HIT_DIMS}
    coords = {"field": FIELDS, "latent": np.arange(n_lat)}
    dt = azb.from_dict(data, dims=dims, coords=coords)
    if not stats:
        dt["sample_stats"].attrs["note"] = (f"{fit.method}: no sampler statistics (not MCMC)")

    # channel identity on the observed table (padding channels have event = -1)
    if "observed_data" in dt.children:
        plan = problem.plan
        ev = np.concatenate([np.asarray(c.event) for c in plan.channels]).astype(np.int64)
        px = np.concatenate([np.asarray(c.pixel) for c in plan.channels]).astype(np.int64)
        ds = _ds(dt, "observed_data")
        if ev.size == ds.sizes["channel"]:
            ds = ds.assign_coords(event=("channel", ev), pixel=("channel", px))
        ds.attrs["n_outside"] = int(problem.n_outside)
        ds.attrs["description"] = ("hit table: per channel (one pixel in one event) up to M hits "
                                   "sorted by tick; field tick = absolute tick, adc = ADC code; "
                                   "-1 = empty slot")
        dt["observed_data"] = xr.DataTree(ds)

    if truth is not None or truth_dEdx is not None:
        tv: dict[str, Any] = {}
        for k, v in (truth or {}).items():
            tv[k] = ((), float(v))
        if truth_dEdx is not None:
            td = np.asarray(truth_dEdx, np.float64)
            if td.shape[0] != n_lat:
                td = latent_truth(problem, td)
            tv["dEdx"] = ("latent", td)
        tds = xr.Dataset(tv, coords={"latent": np.arange(n_lat)} if "dEdx" in tv else None)
        tds.attrs["description"] = "true values of the fake data (physical units; dEdx MeV/cm)"
        dt["truth"] = xr.DataTree(tds)

    if hessian is not None:
        corr, sd = np.asarray(hessian[0], np.float64), np.asarray(hessian[1], np.float64)
        if corr.shape != (len(free), len(free)) or sd.shape != (len(free),):
            raise ValueError(f"hessian shapes {corr.shape}, {sd.shape} do not match the "
                             f"{len(free)} free parameters {free}")
        hds = xr.Dataset(
            {"corr": (("param", "param2"), corr), "sd": ("param", sd)},
            coords={"param": free, "param2": free},
        )
        hds.attrs["definition"] = (
            "talk 002: Hessian of -log posterior in theta/theta_nominal at the optimum, dE/dx "
            "latents held fixed; corr = inverse Hessian scaled to unit diagonal; sd = "
            "sqrt(diag inverse) x nominal (physical units)")
        hds.attrs["method"] = str(hessian[2]) if len(hessian) > 2 else "jax.hessian"
        hds.attrs["finite"] = int(np.all(np.isfinite(corr)) and np.all(np.isfinite(sd)))
        dt["hessian"] = xr.DataTree(hds)

    if fit.map_values:
        mv: dict[str, Any] = {}
        for k, v in fit.map_values.items():
            a = np.asarray(v, np.float64)
            if a.ndim == 0:
                mv[k] = ((), float(a))
            elif a.shape == (n_lat,):
                mv[k] = ("latent", a)
        if mv:
            dt["map"] = xr.DataTree(xr.Dataset(mv))

    losses = (fit.info or {}).get("losses")
    if losses is not None and np.ndim(losses) == 1:
        dt["optimization"] = xr.DataTree(xr.Dataset(
            {"loss": ("step", np.asarray(losses, np.float64))},
            attrs={"description": "SVI loss (negative ELBO) per optimisation step"}))

    card = problem.card
    extra = dict(attrs or {})
    attr_seed = extra.pop("seed", None)
    if seed is None:
        seed = attr_seed if attr_seed is not None else (fit.info or {}).get("seed")
    root = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": fit.method,
        "card_name": card.name,
        "card_yaml": yaml.safe_dump(card_to_dict(card), sort_keys=False),
        "package_version": _package_version(),
        "likelihood": _json_attr(asdict(problem.likelihood)),
        "timings": _json_attr({**(fit.timings or {}), **(extra.pop("timings", None) or {})}),
        "fit_info": _json_attr({k: v for k, v in (fit.info or {}).items() if k != "losses"}),
        "free_params": json.dumps(free),
        "fixed_params": _json_attr(dict(problem.fixed)),
        "latent_prior": _json_attr(dict(problem.prior)),
        "param_units": _json_attr({p.name: p.unit for p in card.params}),
        "n_latent": n_lat,
        "n_chains": int(chains),
        "n_draws": int(draws),
    }
    if seed is not None:
        root["seed"] = int(seed)
    for k, v in extra.items():
        root[str(k)] = _attr_value(v)
    dt.attrs = {k: _attr_value(v) for k, v in root.items()}
    return dt


# ------------------------------------------------------------------------------------------------
# summary and correlations
# ------------------------------------------------------------------------------------------------


def divergences(dt: xr.DataTree) -> int | None:
    """Total divergent transitions, None without sampler statistics."""
    if "sample_stats" not in dt.children or "diverging" not in dt["sample_stats"].data_vars:
        return None
    return int(np.asarray(dt["sample_stats"]["diverging"].values).sum())


def truth_values(dt: xr.DataTree) -> dict[str, float]:
    if "truth" not in dt.children:
        return {}
    ds = _ds(dt, "truth")
    return {k: float(ds[k].values) for k in PARAM_NAMES if k in ds.data_vars}


def summary_table(dt: xr.DataTree, *, ci_prob: float = 0.68, ci_kind: str = "eti"
                  ) -> pd.DataFrame:
    """Per calibration parameter: truth, mean, sd, pull = (mean - truth)/sd, the ``ci_kind``
    interval of probability ``ci_prob`` (68 %: the +-1 sigma analogue), r_hat, ess_bulk, ess_tail,
    mcse_mean (arviz-stats). ``df.attrs``: divergences, n_chains, n_draws, method, ci.

    r_hat is NaN for a single chain and for SVI draws (independent draws of an approximation:
    R-hat and ESS are no convergence diagnostic there)."""
    import arviz_stats as azs

    names = param_names(dt)
    if not names:
        raise ValueError("the posterior holds none of the calibration parameters")
    s = azs.summary(dt, var_names=names, round_to="none", ci_prob=ci_prob, ci_kind=ci_kind)
    s = pd.DataFrame(s).loc[names]
    truth = truth_values(dt)
    out = pd.DataFrame(index=pd.Index(names, name="param"))
    out["truth"] = [truth.get(p, np.nan) for p in names]
    out["mean"] = s["mean"].astype(float)
    out["sd"] = s["sd"].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["pull"] = (out["mean"] - out["truth"]) / out["sd"]
    ci_cols = [c for c in s.columns if c.endswith("_lb") or c.endswith("_ub")]
    for c in ci_cols:
        out[c] = s[c].astype(float)
    for c in ("r_hat", "ess_bulk", "ess_tail", "mcse_mean"):
        out[c] = s[c].astype(float) if c in s.columns else np.nan
    if _is_svi(dt):
        out["r_hat"] = np.nan
    post = dt["posterior"]
    out.attrs = {
        "divergences": divergences(dt),
        "n_chains": int(post.sizes["chain"]),
        "n_draws": int(post.sizes["draw"]),
        "method": str(dt.attrs.get("method", "")),
        "ci": f"{ci_kind} {ci_prob:g}",
        "ci_columns": ci_cols,
    }
    return out


def latent_summary(dt: xr.DataTree) -> dict[str, float] | None:
    """dE/dx latents against their truth: number, mean and rms pull, fraction with |pull| < 1,
    mean posterior sd (MeV/cm). None without true dE/dx."""
    if "truth" not in dt.children or "dEdx" not in dt["truth"].data_vars:
        return None
    if "dEdx" not in dt["posterior"].data_vars:
        return None
    d = np.asarray(dt["posterior"]["dEdx"].values, np.float64)
    d = d.reshape(-1, d.shape[-1])
    t = np.asarray(dt["truth"]["dEdx"].values, np.float64)
    m, s = d.mean(0), d.std(0, ddof=1) if d.shape[0] > 1 else np.full(d.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (m - t) / s
    ok = np.isfinite(pull)
    return {
        "n": int(t.size),
        "mean_pull": float(np.mean(pull[ok])) if ok.any() else np.nan,
        "rms_pull": float(np.sqrt(np.mean(pull[ok] ** 2))) if ok.any() else np.nan,
        "frac_within_1sd": float(np.mean(np.abs(pull[ok]) < 1)) if ok.any() else np.nan,
        "mean_sd": float(np.nanmean(s)),
        "mean_truth": float(np.mean(t)),
        "mean_posterior": float(np.mean(m)),
    }


def correlation_matrix(dt: xr.DataTree) -> pd.DataFrame:
    """Posterior (Pearson) correlation of the free calibration parameters, chains pooled."""
    names = param_names(dt)
    x = _stack(_ds(dt, "posterior"), names)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x, rowvar=False) if x.shape[0] > 1 else np.full((len(names),) * 2, np.nan)
    c = np.atleast_2d(c)
    return pd.DataFrame(c, index=names, columns=names)


def hessian_correlation(dt: xr.DataTree) -> tuple[pd.DataFrame, pd.Series] | None:
    """(pseudo-correlation, sd) from the ``hessian`` group, or None."""
    if "hessian" not in dt.children:
        return None
    ds = _ds(dt, "hessian")
    names = [str(p) for p in ds["param"].values]
    return (pd.DataFrame(np.asarray(ds["corr"].values), index=names, columns=names),
            pd.Series(np.asarray(ds["sd"].values), index=names))


def _sanitize_hessian(corr_sd: tuple[np.ndarray, np.ndarray], scale: np.ndarray | float = 1.0
                      ) -> tuple[np.ndarray, np.ndarray]:
    corr, sd = (np.asarray(a, np.float64) for a in corr_sd)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd * scale, np.nan)
    bad = ~np.isfinite(sd)
    corr = np.where(np.isfinite(corr) & ~bad[:, None] & ~bad[None, :], corr, np.nan)
    return corr, sd


def hessian_at_optimum(problem, map_values: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`lartpc_bayes.inference.hessian_pseudo_correlation` with NaN rows where the Hessian
    is not positive definite; returns (corr, sd, method) ready for ``to_datatree(hessian=...)``."""
    from ..infer import hessian_pseudo_correlation

    corr, sd = hessian_pseudo_correlation(problem, map_values)
    return (*_sanitize_hessian((corr, sd)), "jax.hessian")


# ------------------------------------------------------------------------------------------------
# posterior-predictive checks
# ------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def _matrix_lines(df: pd.DataFrame, title: str) -> list[str]:
    names = list(df.columns)
    w = max(6, *(len(n) for n in names)) + 1
    lines = [title, " " * 5 + "".join(f"{n:>{w}}" for n in names)]
    for r in df.index:
        cells = "".join(f"{'n/a' if not np.isfinite(v) else f'{v:+.3f}':>{w}}"
                        for v in df.loc[r].values)
        lines.append(f"{r:<5}{cells}")
    return lines


def _side_by_side(a: list[str], b: list[str], gap: str = "   |   ") -> list[str]:
    wa = max(len(x) for x in a)
    n = max(len(a), len(b))
    a = a + [""] * (n - len(a))
    b = b + [""] * (n - len(b))
    return [f"{x:<{wa}}{gap}{y}".rstrip() for x, y in zip(a, b, strict=True)]


def diagnostics(dt: xr.DataTree, table: pd.DataFrame | None = None) -> list[str]:
    """Warnings: r_hat > 1.01, ESS < 400, divergences, E-BFMI < 0.3 (MCMC only)."""
    import arviz_stats as azs

    table = summary_table(dt) if table is None else table
    flags = []
    if _is_svi(dt):
        flags.append("SVI posterior: draws of the variational approximation; R-hat/ESS/"
                     "divergences do not apply and its sd may understate the true posterior sd "
                     "(DESIGN.md section 6) - report NUTS uncertainties")
        return flags
    bad_r = table.index[table["r_hat"] > RHAT_MAX].tolist()
    if bad_r:
        flags.append(f"r_hat > {RHAT_MAX}: " + ", ".join(
            f"{p} ({table.loc[p, 'r_hat']:.3f})" for p in bad_r))
    if table.attrs.get("n_chains", 1) < 2:
        flags.append("single chain: r_hat not computed")
    elif table["r_hat"].isna().any():
        flags.append("r_hat not available (too few draws?): "
                     + ", ".join(table.index[table["r_hat"].isna()]))
    if table[["ess_bulk", "ess_tail"]].isna().any(axis=None):
        flags.append("ESS not available (too few draws?)")
    ess_min = table[["ess_bulk", "ess_tail"]].min(axis=1)
    bad_e = table.index[ess_min < ESS_MIN].tolist()
    if bad_e:
        flags.append(f"ESS < {ESS_MIN:.0f}: " + ", ".join(
            f"{p} ({ess_min[p]:.0f})" for p in bad_e))
    div = divergences(dt)
    if div:
        flags.append(f"{div} divergent transitions")
    if "sample_stats" in dt.children and "energy" in dt["sample_stats"].data_vars:
        try:
            b = np.asarray(azs.bfmi(dt)["energy"].values).ravel()
            low = [f"chain {i}: {v:.2f}" for i, v in enumerate(b) if v < BFMI_MIN]
            if low:
                flags.append(f"E-BFMI < {BFMI_MIN}: " + ", ".join(low))
        except Exception:  # pragma: no cover - arviz-stats API drift
            pass
    return flags


def format_report(dt: xr.DataTree, *, ci_prob: float = 0.68) -> str:
    """The text report: parameter table (truth / posterior mean / sd / pull / interval / r_hat /
    ESS), dE/dx latents, posterior correlation beside the Hessian pseudo-correlation, posterior sd
    beside the Hessian sd, diagnostics and timings."""
    tab = summary_table(dt, ci_prob=ci_prob)
    units = _param_units(dt)
    method = dt.attrs.get("method", "?")
    at = tab.attrs
    lines = [
        f"lartpc_bayes posterior: method {method}, card {dt.attrs.get('card_name', '?')}, "
        f"{at['n_chains']} chain(s) x {at['n_draws']} draws, {dt.attrs.get('n_latent', '?')} "
        f"dE/dx latents, package {dt.attrs.get('package_version', '?')}",
    ]
    fixed = json_attr(dt, "fixed_params", {})
    if fixed:
        lines.append("fixed: " + ", ".join(f"{k} = {_fmt(v)}" for k, v in fixed.items()))
    lines.append("")
    lo, hi = at["ci_columns"] if len(at["ci_columns"]) == 2 else (None, None)
    kind, prob = at["ci"].split()
    ci_lab = f"{100 * float(prob):g} % {kind.upper()}"
    hdr = (f"{'param':<6}{'unit':<22}{'truth':>11}{'mean':>11}{'sd':>11}{'pull':>8}"
           f"{'lo':>11}{'hi':>11}{'r_hat':>7}{'ess_bulk':>9}{'ess_tail':>9}")
    lines += [f"Calibration parameters (pull = (mean - truth)/sd; lo/hi: {ci_lab})", hdr,
              "-" * len(hdr)]
    for p, r in tab.iterrows():
        lines.append(
            f"{p:<6}{units.get(p, ''):<22}{_fmt(r['truth']):>11}{_fmt(r['mean']):>11}"
            f"{_fmt(r['sd']):>11}{_fmt(r['pull'], 3):>8}"
            f"{_fmt(r[lo] if lo else None):>11}{_fmt(r[hi] if hi else None):>11}"
            f"{_fmt(r['r_hat'], 4):>7}{_fmt_int(r['ess_bulk']):>9}{_fmt_int(r['ess_tail']):>9}")
    lat = latent_summary(dt)
    if lat:
        lines.append(
            f"dE/dx latents [MeV/cm]: {lat['n']}, mean truth {_fmt(lat['mean_truth'])}, mean "
            f"posterior {_fmt(lat['mean_posterior'])}, mean sd {_fmt(lat['mean_sd'])}; pulls: "
            f"mean {_fmt(lat['mean_pull'], 3)}, rms {_fmt(lat['rms_pull'], 3)}, "
            f"|pull| < 1: {_fmt(100 * lat['frac_within_1sd'], 3)} %")
    elif "dEdx" in dt["posterior"].data_vars:
        d = np.asarray(dt["posterior"]["dEdx"].values)
        lines.append(f"dE/dx latents [MeV/cm]: {d.shape[-1]}, posterior mean over latents "
                     f"{_fmt(d.mean())}, mean sd {_fmt(d.reshape(-1, d.shape[-1]).std(0).mean())}")
    lines.append("")

    corr = correlation_matrix(dt)
    hc = hessian_correlation(dt)
    left = _matrix_lines(corr, "Posterior correlation")
    if hc is not None:
        how = dt["hessian"].attrs.get("method", "")
        right = _matrix_lines(hc[0].reindex(index=corr.index, columns=corr.columns),
                              "Hessian pseudo-correlation (talk 002)")
        lines += _side_by_side(left, right)
        if how and how != "jax.hessian":
            lines.append(f"(Hessian: {how})")
        flat = [p for p in corr.index if not (np.isfinite(hc[1].get(p, np.nan))
                                              and hc[1].get(p, np.nan) > 0)]
        if flat:
            lines.append("(Hessian not positive definite along " + ", ".join(flat) + ": flat or "
                         "negative curvature - optimum not reached, or a direction degenerate "
                         "with dE/dx held fixed, e.g. A_B-k_B at one dE/dx)")
        lines.append("")
        lines.append(f"{'param':<6}{'posterior sd':>14}{'Hessian sd':>14}{'ratio':>9}")
        for p in corr.index:
            ps, hs = tab.loc[p, "sd"], hc[1].get(p, np.nan)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = ps / hs
            lines.append(f"{p:<6}{_fmt(ps):>14}{_fmt(hs):>14}{_fmt(ratio, 3):>9}")
        lines.append("(Hessian: curvature in the six parameters at the optimum with dE/dx held "
                     "fixed - a conditional, not a marginal, width; not a posterior correlation)")
    else:
        lines += left
        lines.append("(no Hessian pseudo-correlation stored)")
    lines.append("")

    div = at["divergences"]
    n_tot = at["n_chains"] * at["n_draws"]
    lines.append("Diagnostics: " + (f"{div} divergences / {n_tot} draws" if div is not None
                                    else "no sampler statistics"))
    flags = diagnostics(dt, tab)
    lines += [f"  ! {f}" for f in flags] if flags else ["  all r_hat <= 1.01, ESS >= 400, "
                                                         "no divergences"]
    tim = json_attr(dt, "timings", {})
    if tim:
        lines.append("Timings: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tim.items()))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# persistence
# ------------------------------------------------------------------------------------------------


def save_datatree(dt: xr.DataTree, path: str | Path) -> Path:
    """Write ``dt`` to netCDF-4 (h5netcdf) atomically: a temporary file in the same directory,
    then ``os.replace``; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        dt.to_netcdf(tmp, mode="w", engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_datatree(path: str | Path) -> xr.DataTree:
    """Read a results file written by :func:`save_datatree`, fully into memory (file closed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file")
    with xr.open_datatree(path, engine="h5netcdf") as t:
        dt = t.load().copy(deep=True)
    return dt


# ------------------------------------------------------------------------------------------------
# check
# ------------------------------------------------------------------------------------------------


def make_plots(dt: xr.DataTree, outdir: str | Path, stem: str = "posterior",
               card: DetectorCard | None = None) -> list[Path]:
    """Write ``<stem>_pair.png``, ``_trace.png``, ``_corr.png`` and (with a card and a
    posterior-predictive group) ``_ppc.png`` into ``outdir``; return the paths written."""
    from . import plots

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    made = [plots.plot_pair(dt, outdir / f"{stem}_pair.png"),
            plots.plot_trace(dt, outdir / f"{stem}_trace.png"),
            plots.plot_correlations(dt, outdir / f"{stem}_corr.png")]
    if card is not None and "posterior_predictive" in dt.children:
        made.append(plots.plot_ppc(dt, card, outdir / f"{stem}_ppc.png"))
    return [p for p in made if p is not None]


def check_file(path: str | Path, outdir: str | Path | None = None, quiet: bool = False) -> str:
    """Load a results file, print (unless ``quiet``) and return the report, the PPC numbers and
    the diagnostic flags; write ``<stem>_pair.png``, ``_trace.png``, ``_corr.png`` and ``_ppc.png``
    into ``outdir`` (default: next to the file)."""
    path = Path(path)
    dt = load_datatree(path)
    outdir = Path(outdir) if outdir is not None else path.parent
    stem = path.stem
    parts = [f"results file {path}", format_report(dt)]
    card = None
    try:
        card = card_from_datatree(dt, str(path))
    except ValueError as exc:
        parts.append(f"(card: {exc})")
    if card is not None and "posterior_predictive" in dt.children:
        parts.append(format_ppc(ppc_checks(dt, card)))
    made = make_plots(dt, outdir, stem, card)
    parts.append("plots: " + ", ".join(str(p) for p in made))
    text = "\n\n".join(parts)
    if not quiet:
        print(text)
    return text
