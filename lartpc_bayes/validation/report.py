"""Tables and figures of docs/validation.md from the campaign data in ``docs/validation/``.

``lartpc-bayes validate report`` (or ``python -m lartpc_bayes.validation.cli report``) reads
whatever campaigns and checks have data, writes the PNG figures to ``docs/figures/validation/``
and the tables to ``docs/validation/tables.md`` (included by hand in docs/validation.md), and
prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

UNITS = {"A_B": "", "k_B": "(kV/cm)(g/cm^2)/MeV", "E": "kV/cm", "tau": "us", "D_L": "cm^2/us",
         "D_T": "cm^2/us"}


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


# --------------------------------------------------------------------------------------------
# SBC
# --------------------------------------------------------------------------------------------


def sbc_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per parameter: replicas, POT-C uniformity p-value of the PITs (arviz-stats), 50 % and
    90 % central-interval coverage, pull mean and sd, failed fits."""
    import arviz_stats  # noqa: F401
    import xarray as xr

    ok = df[df["ok"] & (df["param"] != "")]
    rows = {}
    for p, g in ok.groupby("param", sort=False):
        pit = xr.DataArray(g["pit"].to_numpy(float), dims=["replica"])
        pv = pit.azstats.uniformity_test(dim="replica")
        pv = float(np.asarray(pv[0] if isinstance(pv, tuple) else pv))
        rows[p] = {
            "n": len(g),
            "p_uniform": pv,
            "cover50": float(g["in50"].mean()),
            "cover90": float(g["in90"].mean()),
            "pull_mean": float(g["pull"].mean()),
            "pull_sd": float(g["pull"].std(ddof=1)),
        }
    out = pd.DataFrame(rows).T
    out["failed"] = int((~df.drop_duplicates("replica")["ok"]).sum())
    return out


def sbc_table(summ: pd.DataFrame, title: str) -> str:
    """Markdown table of :func:`sbc_summary`."""
    lines = [f"**{title}**", "",
             "| parameter | replicas | rank uniformity p (POT-C) | 50 % coverage | 90 % coverage "
             "| pull mean | pull sd |", "|---|---|---|---|---|---|---|"]
    for p, r in summ.iterrows():
        lines.append(f"| {p} | {int(r['n'])} | {r['p_uniform']:.3f} | {r['cover50']:.3f} | "
                     f"{r['cover90']:.3f} | {r['pull_mean']:+.3f} | {r['pull_sd']:.3f} |")
    return "\n".join(lines)


def sbc_datatree(df: pd.DataFrame):
    """PIT values as a DataTree group ``prior_sbc`` (chain=1, draw=replica), the layout simuk
    writes and ``arviz_plots.plot_ecdf_pit`` reads."""
    from arviz_base import from_dict

    ok = df[df["ok"] & (df["param"] != "")]
    data = {}
    for p, g in ok.groupby("param", sort=False):
        data[p.replace("[", "_").replace("]", "")] = g.sort_values("replica")["pit"].to_numpy(
            float)[None, :]
    return from_dict({"prior_sbc": data})


def sbc_figures(df: pd.DataFrame, name: str, figdir: Path) -> list[Path]:
    """Rank histograms (with the 99 % band of a uniform histogram), PIT-ECDF difference plots
    and coverage plots (arviz-plots ``plot_ecdf_pit``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    ok = df[df["ok"] & (df["param"] != "")]
    params = list(dict.fromkeys(ok["param"]))
    out = []
    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 2.8), squeeze=False)
    nb = 10
    for ax, p in zip(axes[0], params, strict=True):
        g = ok[ok["param"] == p]
        n = len(g)
        ax.hist(g["pit"], bins=nb, range=(0, 1), color="C0", alpha=0.8)
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / nb)
        ax.axhspan(lo, hi, color="grey", alpha=0.25, lw=0)
        ax.axhline(n / nb, color="k", lw=0.8)
        ax.set_title(p)
        ax.set_xlabel("normalised rank")
    axes[0][0].set_ylabel("replicas")
    fig.suptitle(f"{name}: rank histograms ({ok['replica'].nunique()} replicas, 99 % band)")
    fig.tight_layout()
    path = figdir / f"{name}_ranks.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    out.append(path)
    try:
        import arviz_plots as azp

        dt = sbc_datatree(df)
        for cov in (False, True):
            pc = azp.plot_ecdf_pit(dt, group="prior_sbc", coverage=cov, backend="matplotlib")
            path = figdir / f"{name}_{'coverage' if cov else 'pit_ecdf'}.png"
            pc.savefig(path, dpi=100) if hasattr(pc, "savefig") else pc.viz["chart"].item(
            ).savefig(path, dpi=100)
            plt.close("all")
            out.append(path)
    except Exception as exc:  # plotting is a convenience; the table is the record
        print(f"{name}: plot_ecdf_pit failed: {exc!r}")
    return out


# --------------------------------------------------------------------------------------------
# closure
# --------------------------------------------------------------------------------------------


def closure_summary(df: pd.DataFrame, params=("A_B", "k_B", "E", "tau", "D_L", "D_T")
                    ) -> pd.DataFrame:
    """Per parameter (and every latent dE/dx pooled): replicas (rows), mean bias (posterior mean -
    target), the same in % of the target, pull mean and sd, max |pull|, posterior sd in % of the
    target, 90 % coverage."""
    ok = df[df["ok"]]
    groups = {p: ok[ok["param"] == p] for p in params}
    # every latent dE/dx of every replica pooled (issue 12: their pulls, mean and sd)
    groups["dEdx (all latents)"] = ok[ok["param"].astype(str).str.startswith("dEdx[")]
    rows = {}
    for p, g in groups.items():
        if not len(g):
            continue
        rows[p] = {
            "n": len(g),
            "bias": float((g["mean"] - g["truth"]).mean()),
            "bias_pct": float((100 * (g["mean"] - g["truth"]) / g["truth"]).mean()),
            "pull_mean": float(g["pull"].mean()),
            "pull_sd": float(g["pull"].std(ddof=1)),
            "max_abs_pull": float(g["pull"].abs().max()),
            "sd_pct": float((100 * g["sd"] / g["truth"]).median()),
            "cover90": float(g["in90"].mean()),
        }
    return pd.DataFrame(rows).T


def closure_table(summ: pd.DataFrame) -> str:
    """Markdown table of :func:`closure_summary`."""
    lines = ["| parameter | replicas | bias (mean - target) | bias % | pull mean | pull sd | "
             "max abs pull | posterior sd % of target (median) | 90 % coverage |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p, r in summ.iterrows():
        lines.append(
            f"| {p} | {int(r['n'])} | {_fmt(r['bias'])} | {r['bias_pct']:+.2f} | "
            f"{r['pull_mean']:+.2f} | {r['pull_sd']:.2f} | {r['max_abs_pull']:.2f} | "
            f"{r['sd_pct']:.2f} | {r['cover90']:.2f} |")
    return "\n".join(lines)


def closure_figure(df: pd.DataFrame, figdir: Path, name: str = "closure") -> Path:
    """Fitted (posterior mean +- sd) against the target, one panel per parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = df[df["ok"] & (df["param"] != "") & ~df["param"].str.startswith("dEdx")]
    params = list(dict.fromkeys(ok["param"]))
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.5))
    for ax, p in zip(axes.ravel(), params, strict=False):
        g = ok[ok["param"] == p]
        ax.errorbar(g["truth"], g["mean"], yerr=g["sd"], fmt="o", ms=3, lw=0.8)
        lo, hi = min(g["truth"].min(), g["mean"].min()), max(g["truth"].max(), g["mean"].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{p} {UNITS.get(p, '')}")
        ax.set_xlabel("target")
        ax.set_ylabel("posterior mean +- sd")
    fig.suptitle(f"closure: {ok['replica'].nunique()} targets, realistic noise, latent dE/dx")
    fig.tight_layout()
    path = figdir / f"{name}_fit_vs_target.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# single-problem checks
# --------------------------------------------------------------------------------------------


def scans_figure(scans: dict[str, Any], figdir: Path) -> Path:
    """NLL - min (mean over data sets) against k_B and tau: real, fake, analytic; PPP parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    truth = scans["truth"]
    for col, (pname, res) in enumerate(scans["scans"].items()):
        x = np.asarray(res["grid"])
        for key, style in (("ppp:real", "C0-o"), ("ppp:fake", "C1-s"), ("ppp:analytic", "k--"),
                           ("sequential:real", "C2:^"), ("sequential:fake", "C3:v")):
            if key not in res:
                continue
            y = np.asarray(res[key]["nll"]).mean(0)
            axes[0][col].plot(x, y - y.min(), style, ms=3, label=key)
            if key.startswith("ppp"):
                c = np.asarray(res[key]["count"]).mean(0)
                h = y - c
                color = style[:2] if style[0] == "C" else style[0]
                axes[1][col].plot(x, c - c.min(), color=color, ls="-", marker=".",
                                  label=f"{key}: sum lambda")
                axes[1][col].plot(x, h - h.min(), color=color, ls=":", marker=".",
                                  label=f"{key}: -hit term")
        for r in (0, 1):
            axes[r][col].axvline(truth[pname], color="grey", lw=0.8)
            axes[r][col].set_xlabel(pname)
            if pname == "tau":
                axes[r][col].set_xscale("log")
        axes[0][col].set_ylabel("NLL - min (mean over data sets)")
        axes[1][col].set_ylabel("part - min")
        axes[0][col].set_ylim(0, None)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=6)
    fig.suptitle(f"NLL scans, {scans['n_data']} data sets each, dE/dx and other parameters true")
    fig.tight_layout()
    path = figdir / "nll_scans.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scans_table(scans: dict[str, Any]) -> str:
    """Minima of the scans (mean curve; mean +- s.e. of per-data-set minima)."""
    lines = ["| scan | curve | minimum of the mean curve | per-data-set minima (mean +- s.e.) |",
             "|---|---|---|---|"]
    for pname, d in scans["minima"].items():
        for key, (m, mm, se) in d.items():
            lines.append(f"| {pname} (true {_fmt(scans['truth'][pname], 4)}) | {key} | "
                         f"{_fmt(m, 4)} | {_fmt(mm, 4)} +- {_fmt(se, 2)} |")
    return "\n".join(lines)


def hessian_table(h: dict[str, Any]) -> str:
    """Posterior correlation beside the Hessian pseudo-correlation, posterior sd beside the
    Hessian sd."""
    names = h["params"]
    pc, hc = np.asarray(h["posterior_corr"]), np.asarray(h["hessian_corr"])
    head = "| | " + " | ".join(names) + " |"
    sep = "|---" * (len(names) + 1) + "|"
    lines = ["Posterior correlation (NUTS) below the diagonal, Hessian pseudo-correlation above:",
             "", head, sep]
    for i, a in enumerate(names):
        cells = []
        for j in range(len(names)):
            cells.append("1" if i == j else f"{(pc if j < i else hc)[i, j]:+.2f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "| parameter | truth | posterior mean | posterior sd (NUTS) | Hessian sd | "
              "ratio Hessian/NUTS |", "|---|---|---|---|---|---|"]
    for i, a in enumerate(names):
        ps, hs = h["posterior_sd"][i], h["hessian_sd"][i]
        lines.append(f"| {a} | {_fmt(h['truth'][i], 4)} | {_fmt(h['posterior_mean'][i], 4)} | "
                     f"{_fmt(ps)} | {_fmt(hs)} | {_fmt(hs / ps if ps else np.nan)} |")
    return "\n".join(lines)


def robustness_table(r: dict[str, Any]) -> str:
    """Shifts in units of the baseline posterior sd (mean +- s.e. over noise seeds)."""
    params = ["A_B", "k_B", "E", "tau", "D_L", "D_T"]
    lines = ["| perturbation | " + " | ".join(params) + " |", "|---" * 7 + "|"]
    for v, d in r["shifts"].items():
        cells = [f"{d[p][0]:+.2f} +- {d[p][1]:.2f}" if p in d else "-" for p in params]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dedx_table(r: dict[str, Any]) -> str:
    """dE/dx-only fit: MAP against posterior per latent length (means over noise seeds)."""
    df = pd.DataFrame([x for x in r["rows"] if x.get("ok")])
    lines = ["| latent length (cm) | latents | RMS rel. error MAP | RMS rel. error posterior mean "
             "| posterior sd (rel.) | chi2/latent MAP | chi2/latent post. mean | 68 % coverage "
             "| spread MAP / truth / post. mean | PSIS k-hat max |", "|---" * 10 + "|"]
    for L, g in df.groupby("latent_cm"):
        lines.append(
            f"| {L:g} | {int(g['n_latent'].iloc[0])} | {g['rms_rel_map'].mean():.3f} | "
            f"{g['rms_rel_mean'].mean():.3f} | {g['mean_sd_rel'].mean():.3f} | "
            f"{g['chi2_map'].mean():.2f} | {g['chi2_mean'].mean():.2f} | "
            f"{g['cover68'].mean():.2f} | {g['spread_map'].mean():.3f} / "
            f"{g['spread_truth'].mean():.3f} / {g['spread_mean'].mean():.3f} | "
            f"{g['pareto_k'].max():.2f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


START, END = "<!-- validation-tables:start -->", "<!-- validation-tables:end -->"


def make_report(root: str | Path = "docs/validation",
                figdir: str | Path = "docs/figures/validation",
                doc: str | Path | None = "docs/validation.md") -> str:
    """Write every figure and ``root/tables.md`` from the data present, and replace the block
    between the ``validation-tables`` markers of ``doc`` (if present) with the same tables;
    return the tables."""
    from .campaign import PRESETS, campaign_segments
    from .records import collect

    root, figdir = Path(root), Path(figdir)
    figdir.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    for name, cfg in PRESETS.items():
        d = root / name
        if not (d / "config.json").exists() or name.startswith("ci-"):
            continue
        df = collect(d)
        if not len(df):
            continue
        nrep = df["replica"].nunique()
        ver = json.loads((d / "config.json").read_text()).get("versions", {})
        dirty = ver.get("git_dirty_package_files", "")
        stamp = (f"commit {str(ver.get('git_commit', '?'))[:10]}"
                 + (f" + uncommitted {dirty}" if dirty else "")
                 + f", jax {ver.get('jax', '?')}, numpyro {ver.get('numpyro', '?')}")
        lik = cfg.likelihood + ("" if cfg.straggling == "mark" else f", {cfg.straggling}")
        t = df.drop_duplicates("replica")  # one row per replica: timings, hits, convergence
        if cfg.kind == "sbc":
            summ = sbc_summary(df)
            how = cfg.method + (" + importance sampling"
                                if cfg.importance and cfg.method == "laplace" else "")
            parts.append(sbc_table(summ, f"{name}: {nrep} replicas of {cfg.n_replicas} planned "
                                         f"({lik}, {how}; {stamp})"))
            sbc_figures(df, name, figdir)
        else:
            _, seg = campaign_segments(cfg)
            what = (f"{float(seg.dx.sum()):.0f} cm of track in {cfg.n_tracks} {cfg.sample}, "
                    f"median {t['n_hits'].median():.0f} hits, {lik}, {cfg.method}")
            parts.append(f"**{name}: {nrep} targets of {cfg.n_replicas} planned ({what}; "
                         f"{stamp})**\n\n" + closure_table(closure_summary(df)))
            closure_figure(df, figdir, name)
        parts.append(
            f"\n{name}: fit time per replica median "
            f"{t['map_s'].median() + t['hessian_s'].median():.1f} s "
            f"(MAP {t['map_s'].median():.2f} s, Hessian {t['hessian_s'].median():.2f} s"
            + (f", NUTS {t['nuts_s'].median():.1f} s" if "nuts_s" in t and t["nuts_s"].max() > 0
               else "")
            + f"); not converged (Newton decrement > 0.1 sd): {int((~t['converged']).sum())}; "
            f"failed: {int((~t['ok']).sum())}"
            + (f"; PSIS k-hat median {t['pareto_k'].median():.2f}, max {t['pareto_k'].max():.2f}"
               if "pareto_k" in t and np.isfinite(t["pareto_k"]).any() else "")
        )
    for fname, title, fn in (("nll_scans.json", "NLL scans", scans_table),
                             ("posterior_vs_hessian.json", "Posterior vs Hessian",
                              hessian_table),
                             ("robustness.json", "Robustness", robustness_table),
                             ("dedx_only.json", "dE/dx-only fit", dedx_table)):
        f = root / fname
        if f.exists():
            data = json.loads(f.read_text())
            parts.append(f"**{title}**\n\n" + fn(data))
            if fname == "nll_scans.json":
                scans_figure(data, figdir)
    text = "\n\n".join(parts) + "\n"
    (root / "tables.md").write_text(text)
    if doc is not None and Path(doc).exists():
        d = Path(doc).read_text()
        if START in d and END in d:
            head, rest = d.split(START, 1)
            _, tail = rest.split(END, 1)
            Path(doc).write_text(f"{head}{START}\n\n{text}\n{END}{tail}")
    return text
