"""Fit results as ArviZ 1.x DataTrees: conversion from a FitResult, the accessors (parameter
names, truth, correlations, the Hessian pseudo-correlation) and netCDF persistence.


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


HIT_DIMS = ["channel", "slot", "field"]


FIELDS = ["tick", "adc"]


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


#: sites besides the free parameters kept in ``posterior`` and ``prior``: the dE/dx latents, the
#: stopping-track end points and the reconstructed geometry (offsets (u, v, d) cm and direction
#: changes (u, v, d) rad per track, per-TPC drift offsets cm)
POSTERIOR_SITES = ("dEdx", "z_dEdx", "end_shift_cm", "geo_shift_cm", "geo_tilt",
                   "tpc_drift_offset_cm")


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
    """Convert a :class:`lartpc_bayes.infer.FitResult` into an ArviZ 1.x DataTree.

    fit : FitResult (samples (chains, draws, ...), physical units).
    problem : the CalibrationProblem that was fitted (observed table, card, likelihood).
    prior : :func:`lartpc_bayes.infer.prior_samples` output (draws first); the parameters,
        dEdx, z_dEdx go to ``prior``, ``hits`` to ``prior_predictive``.
    posterior_predictive : (draws, channels, M, 2) hit tables
        (:func:`lartpc_bayes.infer.predictive_hits`) or already (chains, draws, ...).
    truth : true parameter values (fake data); truth_dEdx : per latent (n_latent) or per segment
        (averaged per latent; use :func:`latent_truth` for length weighting).
    hessian : (pseudo-correlation, sd) over ``problem.free`` from
        :func:`lartpc_bayes.infer.hessian_pseudo_correlation` or :func:`hessian_at_optimum`;
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
    for k in POSTERIOR_SITES:
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
              for k in (*free, *POSTERIOR_SITES) if k in prior}
        if pr:
            data["prior"] = pr
        if "hits" in prior:
            data["prior_predictive"] = {"hits": _with_chain(np.asarray(prior["hits"], np.int32))}

    dims = {"dEdx": ["latent"], "z_dEdx": ["latent"], "end_shift_cm": ["stopping"],
            "geo_shift_cm": ["track", "uvd"], "geo_tilt": ["track", "uvd"],
            "tpc_drift_offset_cm": ["tpc"], "hits": HIT_DIMS}
    coords = {"field": FIELDS, "latent": np.arange(n_lat), "uvd": ["u", "v", "d"]}
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


def hessian_at_optimum(problem, map_values: dict[str, Any], laplace=None
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`lartpc_bayes.infer.hessian_pseudo_correlation` with NaN rows where the Hessian
    is not positive definite; returns (corr, sd, method) ready for ``to_datatree(hessian=...)``.

    ``laplace``: a :func:`lartpc_bayes.infer.run_laplace` result at ``map_values``; its Hessian
    gives the same matrix by the chain rule
    (:func:`lartpc_bayes.infer.pseudo_correlation_from_hessian`) without compiling a
    second Hessian of the likelihood."""
    if laplace is not None and "hessian_pseudo" in laplace.info:
        return (*_sanitize_hessian(laplace.info["hessian_pseudo"]), "laplace hessian, chain rule")
    from ..infer import hessian_pseudo_correlation

    corr, sd = hessian_pseudo_correlation(problem, map_values)
    return (*_sanitize_hessian((corr, sd)), "jax.hessian")


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
