"""Log-log plot of time and memory against cm of track per batch, from the benchmark JSON.

    .venv/bin/python benchmarks/plot_scaling.py [benchmarks/results/cpu.json]
        [--out docs/figures/performance_scaling.png] [--table]   # --table: Markdown to stdout

Left: median steady-state wall time (bars: interquartile range; open markers: the process's CPU
time per run, where recorded) of the expected charge and of the log-likelihood + gradient for
batches of straight muons, with a slope-1 (linear) reference through the 100 cm point, the fitted
exponent in the legend, and the 100 cm stopping-proton batch.
Right: the peak RSS of each case (fresh process) and the working set XLA allocates for the
compiled function (``memory_analysis``: temporaries + arguments + outputs), with the same
reference. Cases that did not finish are marked at the top with their status.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IN = REPO / "benchmarks" / "results" / "cpu.json"
DEFAULT_OUT = REPO / "docs" / "figures" / "performance_scaling.png"

STYLE = {"charge": ("tab:blue", "o", "expected charge (forward)"),
         "loglik_grad": ("tab:red", "s", "log-likelihood + gradient")}


def _ok(cases, kind, track):
    return sorted((c for c in cases if c["kind"] == kind and c["track"] == track
                   and c.get("status") == "ok"), key=lambda c: c["length_cm"])


def _reference(ax, xs, y100, x100, color):
    lo, hi = min(xs), max(xs)
    ax.plot([lo, hi], [y100 * lo / x100, y100 * hi / x100], ls=":", color=color, lw=1)


def plot(data: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = data["cases"]
    fits = data.get("scaling", {})
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
    for kind, (color, marker, label) in STYLE.items():
        ok = _ok(cases, kind, "muons")
        if not ok:
            continue
        L = [c["track_length_cm"] for c in ok]
        t = [1e3 * c["timing"]["median_s"] for c in ok]
        q1 = [1e3 * c["timing"]["q1_s"] for c in ok]
        q3 = [1e3 * c["timing"]["q3_s"] for c in ok]
        fit = (fits.get(kind) or {}).get("time_fit_all")
        lab = f"{label}" + (f", ~L^{fit['exponent']:.2f}" if fit else "")
        ax_t.errorbar(L, t, yerr=[[a - b for a, b in zip(t, q1, strict=True)],
                                   [b - a for a, b in zip(t, q3, strict=True)]],
                      color=color, marker=marker, label=lab, capsize=2)
        cpu = [(c["track_length_cm"], 1e3 * c["timing"]["cpu_median_s"]) for c in ok
               if "cpu_median_s" in c["timing"]]
        if cpu:
            ax_t.plot(*zip(*cpu, strict=True), color=color, marker=marker, mfc="none", ls="none",
                      label=f"{label}: CPU time (all threads)")
        i100 = min(range(len(L)), key=lambda i: abs(math.log(L[i] / 100.0)))
        _reference(ax_t, L, t[i100], L[i100], color)
        rss = [c["peak_rss_mb"] for c in ok]
        xla = [c.get("xla_temp_mb", 0) + c.get("xla_argument_mb", 0) + c.get("xla_output_mb", 0)
               for c in ok]
        ax_m.plot(L, rss, color=color, marker=marker, label=f"{label}: peak RSS")
        fx = (fits.get(kind) or {}).get("xla_working_set_fit_all")
        ax_m.plot(L, xla, color=color, marker=marker, ls="--", mfc="none",
                  label=f"{label}: XLA working set"
                  + (f", ~L^{fx['exponent']:.2f}" if fx else ""))
        _reference(ax_m, L, xla[i100], L[i100], color)
        for p in _ok(cases, kind, "protons"):
            ax_t.plot([p["track_length_cm"]], [1e3 * p["timing"]["median_s"]], marker="*",
                      color=color, ms=12, ls="none", label=f"{label}, stopping protons")
            ax_m.plot([p["track_length_cm"]], [p["peak_rss_mb"]], marker="*", color=color,
                      ms=12, ls="none")
        for c in cases:
            if c["kind"] == kind and c["track"] == "muons" and c.get("status") != "ok":
                for ax in (ax_t, ax_m):
                    ax.annotate(f"{c['length_cm']:g} cm: {c.get('status')}",
                                xy=(c["length_cm"], 1.0), xycoords=("data", "axes fraction"),
                                xytext=(0, -12), textcoords="offset points", ha="center",
                                fontsize=7, color=color)
    ax_t.plot([], [], ls=":", color="gray", label="linear reference (through 100 cm)")
    ax_t.set(xscale="log", yscale="log", xlabel="track length per batch (cm)",
             ylabel="median time after compilation (ms)", title="time")
    ax_m.set(xscale="log", yscale="log", xlabel="track length per batch (cm)",
             ylabel="memory (MB)", title="memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    m = data.get("machine", {})
    commit = (data.get("git", {}).get("commit") or "unknown")[:10]
    fig.suptitle(f"{m.get('cpu_model', '?')} ({m.get('cpu_count', '?')} cores, "
                 f"{m.get('jax_backend', '?')}), jax {data.get('versions', {}).get('jax')}, "
                 f"commit {commit}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def markdown_table(data: dict) -> str:
    """The cases as a Markdown table (the one in docs/performance.md)."""
    rows = ["| case | tracks | channels | compile (s) | median (ms) | IQR (ms) | CPU (ms) | runs "
            "| ms/cm | peak RSS (MB) | XLA working set (MB) | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in data["cases"]:
        if c.get("status") != "ok":
            rows.append(f"| {c['name']} | | | | {c.get('status')}: {c.get('reason')} "
                        "| | | | | | | |")
            continue
        t = c["timing"]
        xla = c.get("xla_temp_mb", 0) + c.get("xla_argument_mb", 0) + c.get("xla_output_mb", 0)
        extra = f" ({c['cm_per_s']:.0f} cm/s)" if "cm_per_s" in c else ""
        cpu = f"{1e3 * t['cpu_median_s']:.1f}" if "cpu_median_s" in t else ""
        rows.append(
            f"| {c['name']}{extra} | {c.get('n_tracks', '')} | {c.get('n_channels', '')} "
            f"| {c.get('compile_s', float('nan')):.1f} | {1e3 * t['median_s']:.1f} "
            f"| {1e3 * t['iqr_s']:.1f} | {cpu} | {t['n_runs']} | {c['ms_per_cm']:.3f} "
            f"| {c['peak_rss_mb']:.0f} | {xla:.0f} | {c['load_average_start'][0]:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="?", type=Path, default=DEFAULT_IN)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--table", action="store_true", help="also print the cases as Markdown")
    args = ap.parse_args(argv)
    data = json.loads(args.json.read_text())
    out = plot(data, args.out)
    if args.table:
        print(markdown_table(data))
    print(f"wrote {out}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
