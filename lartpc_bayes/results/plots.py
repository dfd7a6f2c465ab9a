"""PNG figures of a results DataTree (:mod:`lartpc_bayes.results`): corner/pair plot with the
true values, trace plot, posterior-predictive comparisons and the posterior correlation beside the
Hessian pseudo-correlation; and, for the half-fake validation, reconstructed against true
tracks (:func:`plot_reco_vs_true`).

Matplotlib with the non-interactive "Agg" backend (unless one was chosen already); the
``mplhep`` ROOT style is used if mplhep is installed (it is not a dependency), else a clean
matplotlib style. Every function writes ``path``, closes its figure and returns the path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

# Non-interactive backend for the CLI and tests; a backend already chosen (pyplot imported, or
# MPLBACKEND set, e.g. by Jupyter) is left alone - the figures are written to files either way.
if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from ..detector import DetectorCard
from .datatree import (
    _param_units,
    card_from_datatree,
    correlation_matrix,
    hessian_correlation,
    param_names,
    truth_values,
)
from .ppc import _adc_hist, _first_tick, _hits_per_channel, real_channels

TRUTH_COLOR = "#d62728"


def _style():
    """mplhep ROOT style if available, else matplotlib's default with a light grid."""
    try:  # pragma: no cover - optional
        import mplhep

        return plt.style.context(mplhep.style.ROOT)
    except Exception:
        return plt.style.context({"axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


def _label(dt: xr.DataTree, p: str) -> str:

    u = _param_units(dt).get(p, "")
    return f"{p} [{u}]" if u and u != "1" else p


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_pair(dt: xr.DataTree, path: str | Path) -> Path:
    """Corner plot (arviz_plots.plot_pair) of the free calibration parameters, KDE marginals on
    the diagonal, divergences highlighted when sampler stats exist; true values as red lines."""
    import arviz_plots as azp


    names = param_names(dt)
    n = len(names)
    truth = truth_values(dt)
    has_div = ("sample_stats" in dt.children
               and "diverging" in dt["sample_stats"].data_vars
               and bool(np.asarray(dt["sample_stats"]["diverging"].values).any()))
    n_draws = int(dt["posterior"].sizes["chain"] * dt["posterior"].sizes["draw"])
    with _style():
        pm = azp.plot_pair(
            dt, var_names=names, marginal=True, backend="matplotlib",
            visuals={"scatter": {"size": 10 if n_draws <= 500 else 4, "alpha": 0.3},
                     "divergence": {"color": "k", "size": 10} if has_div else False},
            figure_kwargs={"figsize": (2.1 * n + 1, 2.1 * n + 1)},
        )
        fig = pm.viz["figure"].item()
        axes = pm.viz["plot"]
        ys = [str(v) for v in axes["var_name_y"].values]
        xs = [str(v) for v in axes["var_name_x"].values]
        for i, vy in enumerate(ys):
            for j, vx in enumerate(xs):
                ax = axes.values[i, j]
                if ax is None or j > i:
                    continue
                if i == j:
                    ax.set_yticks([])
                if vx in truth:
                    ax.axvline(truth[vx], color=TRUTH_COLOR, lw=1.0, ls="--")
                if i != j and vy in truth:
                    ax.axhline(truth[vy], color=TRUTH_COLOR, lw=1.0, ls="--")
                    ax.plot(truth[vx], truth[vy], marker="s", color=TRUTH_COLOR, ms=4)
                if i == n - 1:
                    ax.set_xlabel(_label(dt, vx))
        if fig.get_layout_engine() is None:
            fig.subplots_adjust(top=0.95)
        fig.suptitle(f"posterior ({dt.attrs.get('method', '')})"
                     + ("; red: true values" if truth else "")
                     + ("; black: divergent transitions" if has_div else ""))
        return _save(fig, path)


def plot_trace(dt: xr.DataTree, path: str | Path) -> Path:
    """Trace plot (arviz_plots.plot_trace_dist) of the free calibration parameters."""
    import arviz_plots as azp


    names = param_names(dt)
    truth = truth_values(dt)
    with _style():
        pc = azp.plot_trace_dist(dt, var_names=names, backend="matplotlib",
                                 figure_kwargs={"figsize": (10, 1.7 * len(names) + 1)})
        fig = pc.viz["figure"].item() if "figure" in pc.viz.data_vars else plt.gcf()
        if truth:
            try:
                plot = pc.viz["plot"]
                for p in names:
                    if p not in truth or p not in plot.data_vars:
                        continue
                    # column "dist": marginal density (x = value); "trace": y = value
                    plot[p].sel(column="dist").item().axvline(truth[p], color=TRUTH_COLOR,
                                                              lw=1.0, ls="--")
                    plot[p].sel(column="trace").item().axhline(truth[p], color=TRUTH_COLOR,
                                                               lw=1.0, ls="--")
            except Exception:  # pragma: no cover - layout drift in arviz-plots
                pass
        if fig.get_layout_engine() is None:
            fig.subplots_adjust(top=0.93)
        fig.suptitle(f"trace ({dt.attrs.get('method', '')})"
                     + ("; red: true values" if truth else ""))
        return _save(fig, path)


def plot_correlations(dt: xr.DataTree, path: str | Path) -> Path:
    """Posterior correlation and Hessian pseudo-correlation heatmaps side by side."""

    corr = correlation_matrix(dt)
    hc = hessian_correlation(dt)
    mats = [("posterior correlation", corr)]
    if hc is not None:
        mats.append(("Hessian pseudo-correlation (talk 002)",
                     hc[0].reindex(index=corr.index, columns=corr.columns)))
    n = len(corr)
    with _style():
        fig, axs = plt.subplots(1, len(mats), figsize=(4.6 * len(mats) + 0.8, 4.4),
                                squeeze=False, constrained_layout=True)
        im = None
        for ax, (title, m) in zip(axs[0], mats, strict=True):
            v = np.asarray(m.values, np.float64)
            im = ax.imshow(np.ma.masked_invalid(v), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_xticks(range(n), list(m.columns), rotation=45)
            ax.set_yticks(range(n), list(m.index))
            ax.grid(False)
            for i in range(n):
                for j in range(n):
                    txt = "n/a" if not np.isfinite(v[i, j]) else f"{v[i, j]:+.2f}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="white" if np.isfinite(v[i, j]) and abs(v[i, j]) > 0.6
                            else "black")
            ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=axs[0].tolist(), shrink=0.8)
        return _save(fig, path)


def plot_ppc(dt: xr.DataTree, card: DetectorCard | None, path: str | Path) -> Path:
    """Posterior-predictive comparison, 2 x 2: total hit count of the replicas vs observed; hit
    charge spectrum (ke-) observed vs the replicas' 16-84 % band and median; first-hit tick
    residual (observed - predictive mean) per hit channel with the predictive sd; hits per
    channel observed vs predictive."""
    from ..forward.readout import adc_to_charge

    card = card or card_from_datatree(dt)
    el = card.electronics
    obs = np.asarray(dt["observed_data"]["hits"].values)
    rep = np.asarray(dt["posterior_predictive"]["hits"].values)
    rep = rep.reshape((-1, *rep.shape[-3:]))
    K = el.adc_counts
    with _style():
        fig, axs = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)

        # (a) hit counts
        ax = axs[0, 0]
        n_obs = int(np.sum(obs[..., 0] >= 0))
        n_rep = np.sum(rep[..., 0] >= 0, axis=(1, 2))
        lo, hi = min(n_rep.min(), n_obs), max(n_rep.max(), n_obs)
        bins = np.arange(lo - 0.5, hi + 1.5, max(1, int(np.ceil((hi - lo + 1) / 40))))
        ax.hist(n_rep, bins=bins, color="C0", alpha=0.6, label="replicas")
        ax.axvline(n_obs, color="k", lw=2, label=f"observed ({n_obs})")
        ax.set_xlabel("number of hits")
        ax.set_ylabel("replicas")
        ax.legend(fontsize=8)

        # (b) charge spectrum, binned in groups of ADC codes
        ax = axs[0, 1]
        h_obs, h_rep = _adc_hist(obs, K), _adc_hist(rep, K)
        used = np.nonzero((h_obs + h_rep.sum(0)) > 0)[0]
        if used.size:
            c0, c1 = used.min(), used.max() + 1
            group = max(1, int(np.ceil((c1 - c0) / 30)))
            edges_c = np.arange(c0, c1 + group, group)
            idx = np.clip(np.digitize(np.arange(K), edges_c) - 1, 0, len(edges_c) - 2)
            sel = (np.arange(K) >= c0) & (np.arange(K) < edges_c[-1])
            go = np.bincount(idx[sel], weights=h_obs[sel], minlength=len(edges_c) - 1)
            gr = np.stack([np.bincount(idx[sel], weights=h[sel], minlength=len(edges_c) - 1)
                           for h in h_rep])
            # adc_to_charge is linear: bin edges at half-codes
            qe = np.asarray(adc_to_charge(edges_c - 0.5, el), np.float64) / 1e3
            band = np.percentile(gr, [16, 50, 84], axis=0)
            ax.fill_between(qe, np.r_[band[0], band[0][-1]], np.r_[band[2], band[2][-1]],
                            step="post", color="C0", alpha=0.35, label="predictive 16-84 %")
            ax.stairs(band[1], qe, color="C0", label="predictive median")
            ax.stairs(go, qe, color="k", lw=1.5, label="observed")
        ax.set_xlabel("hit charge [ke-]")
        ax.set_ylabel("hits per bin")
        ax.legend(fontsize=8)

        # (c) first-hit tick residual per channel
        ax = axs[1, 0]
        f_obs, f_rep = _first_tick(obs), _first_tick(rep)
        hit = np.nonzero(np.isfinite(f_obs))[0]
        fr = f_rep[:, hit]
        present = np.isfinite(fr)
        cnt = present.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(cnt > 0, np.where(present, fr, 0).sum(0) / np.maximum(cnt, 1), np.nan)
            var = np.where(cnt > 1, np.where(present, (fr - mean) ** 2, 0).sum(0)
                           / np.maximum(cnt - 1, 1), np.nan)
        resid = f_obs[hit] - mean
        ok = np.isfinite(resid)
        ax.errorbar(np.arange(hit.size)[ok], resid[ok], yerr=np.sqrt(var[ok]), fmt="o", ms=3,
                    color="C0", ecolor="0.6", label="observed - predictive mean (bar: pred. sd)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("hit channel (data order)")
        ax.set_ylabel("first-hit tick residual [ticks]")
        ax.set_title(f"{tick_note(el.tick_us)}; {int((~ok).sum())} hit channels never hit "
                     "in replicas", fontsize=8)
        ax.legend(fontsize=8)

        # (d) hits per channel
        ax = axs[1, 1]
        M = obs.shape[1]
        real = real_channels(dt)
        hpc_o, hpc_r = _hits_per_channel(obs)[real], _hits_per_channel(rep)[:, real]
        hist_o = np.bincount(hpc_o, minlength=M + 1)
        hist_r = np.stack([np.bincount(h, minlength=M + 1) for h in hpc_r])
        k = np.arange(M + 1)
        mx = int(max(np.nonzero(hist_o)[0].max(initial=0),
                     np.nonzero(hist_r.sum(0))[0].max(initial=0))) + 1
        lo_b, med, hi_b = np.percentile(hist_r, [16, 50, 84], axis=0)
        sl = slice(1, mx + 1)
        ax.bar(k[sl], hist_r.mean(0)[sl], color="C0", alpha=0.5, label="predictive mean")
        ax.errorbar(k[sl], med[sl], yerr=[med[sl] - lo_b[sl], hi_b[sl] - med[sl]], fmt="_",
                    color="C0", label="predictive median, 16-84 %")
        ax.plot(k[sl], hist_o[sl], "ko", label="observed")
        ax.set_xlabel("hits per channel (channels with >= 1 hit)")
        ax.set_ylabel("channels")
        ax.legend(fontsize=8)
        fig.suptitle(f"posterior-predictive checks: {rep.shape[0]} replicas "
                     f"({dt.attrs.get('method', '')})")
        return _save(fig, path)


def tick_note(tick_us: float) -> str:
    return f"1 tick = {tick_us:g} us"


def plot_reco_vs_true(card: DetectorCard, segments, res, path,
                      max_tracks: int = 6, title: str = ""):
    """PNG of reconstructed against true tracks, one row per matched reconstructed track (at most
    ``max_tracks``, selected first): the hit points and the reco polyline over the true chord, in
    the pixel plane (u, v) and in (u, nominal drift distance d), cm, local frame of the track's
    TPC. The title of each row gives the direction error (deg) and the two end errors (cm)."""
    from ..reco.evaluate import match_tracks

    rows = [r for r in match_tracks(card, segments, res) if r["truth"] is not None]
    rows.sort(key=lambda r: (not r["selected"], -r["length_true"]))
    rows = rows[:max_tracks]
    if not rows:
        raise ValueError("plot_reco_vs_true: no reconstructed track matches a true one")
    with _style():
        fig, axs = plt.subplots(len(rows), 2, figsize=(8.0, 2.6 * len(rows)), squeeze=False)
        for ax2, r in zip(axs, rows, strict=True):
            tr = res.tracks[r["reco"]]
            a, b = r["truth"]["a"], r["truth"]["b"]
            for ax, (i, j, lab) in zip(ax2, ((0, 1, "v"), (0, 2, "d (nominal drift)")),
                                       strict=True):
                pts = np.stack([tr.points.u, tr.points.v, tr.d], 1)
                ax.scatter(pts[:, i], pts[:, j], s=4, c="0.6", label="hit points")
                ax.plot([a[i], b[i]], [a[j], b[j]], "-", color="#d62728", lw=2.5, alpha=0.6,
                        label="true")
                ax.plot(tr.vertices[:, i], tr.vertices[:, j], "--o", color="#1f77b4", ms=3,
                        lw=1.2, label="reco")
                ax.set_xlabel("u [cm]")
                ax.set_ylabel(f"{lab} [cm]")
            e1, e2 = r["end_err_cm"]
            ax2[0].set_title(f"event {tr.event} TPC {tr.tpc}: {r['length_true']:.1f} cm, "
                             f"{'selected' if r['selected'] else 'not selected'}"
                             f"{', stopping' if r['stopping'] else ''}", fontsize=8)
            ax2[1].set_title(f"angle err {r['angle_err_deg']:.2f} deg, ends {e1:.2f} / {e2:.2f} cm",
                             fontsize=8)
        axs[0, 0].legend(fontsize=7, loc="best")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
    return _save(fig, path)
