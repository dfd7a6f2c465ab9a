"""The text report of ``lartpc-bayes demo`` / ``check``: the summary table (target / mean / sd /
pull), latent dE/dx summary, diagnostics (r_hat, ESS, divergences, BFMI), the posterior
correlation beside the Hessian pseudo-correlation, the posterior-predictive table; and
:func:`check_file`, which loads a netCDF fit, prints the report and writes the plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from ..detector import DetectorCard
from .datatree import (
    _fmt,
    _fmt_int,
    _is_svi,
    _param_units,
    card_from_datatree,
    correlation_matrix,
    divergences,
    hessian_correlation,
    json_attr,
    load_datatree,
    param_names,
    truth_values,
)
from .ppc import format_ppc, ppc_checks

#: Diagnostic thresholds used by :func:`diagnostics` / :func:`check_file`.
RHAT_MAX = 1.01


ESS_MIN = 400.0


BFMI_MIN = 0.3


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
