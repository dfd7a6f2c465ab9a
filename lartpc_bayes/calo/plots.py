"""Figures of the calorimeter study (matplotlib ``Figure`` objects, no global pyplot state).

Each ``plot_*`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_report_figures`
writes the standard set as ``calo_*.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import metrics as M
from .baselines import CalibrationFit
from .card import CaloCard
from .generator import CaloEvents, card_resolution, profile_moments, simulate, sum_moments
from .mdn import MdnModel

_STYLE: dict[str, dict[str, Any]] = {
    "sum": {"color": "0.5", "marker": "x"},
    "linear_absolute": {"color": "tab:red", "marker": "v"},
    "linear_relative": {"color": "tab:orange", "marker": "^"},
    "linear_resolution": {"color": "tab:brown", "marker": "<"},
    "perlayer_absolute": {"color": "tab:pink", "marker": ">"},
    "perlayer_gauss": {"color": "tab:olive", "marker": "h"},
    "perlayer_nuts": {"color": "tab:cyan", "marker": "s"},
    "perlayer": {"color": "tab:blue", "marker": "o"},
    "mdn": {"color": "tab:green", "marker": "D"},
    "ensemble": {"color": "tab:purple", "marker": "P"},
}


def _bins(report: dict[str, Any], name: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in report["methods"][name]["bins"].items()}


def _present(report: dict[str, Any], names: list[str]) -> list[str]:
    return [n for n in names if n in report["methods"]]


def plot_linearity(report: dict[str, Any]) -> Figure:
    """Linearity ``Delta_E = median(E_model/E_true) - 1`` vs true energy: (left) the three
    likelihoods of ``alpha sum + beta`` -- why relative residuals matter at low energy -- and
    (right) the per-layer and network calibrations."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    groups = [
        ["sum", "linear_absolute", "linear_relative", "linear_resolution"],
        ["perlayer_absolute", "perlayer_gauss", "perlayer_nuts", "perlayer", "mdn", "ensemble"],
    ]
    for ax, names in zip(fig.subplots(1, 2, sharey=False), groups, strict=True):
        for n in _present(report, names):
            b = _bins(report, n)
            ax.errorbar(
                b["e_median"],
                b["linearity"],
                yerr=b.get("response_err"),
                ls="-",
                ms=4,
                label=report["methods"][n]["label"],
                **_STYLE[n],
            )
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("E_true [GeV]")
        ax.set_ylabel("Delta_E = median(E_model/E_true) - 1")
        ax.legend(fontsize=7)
    return fig


def plot_resolution(report: dict[str, Any], min_energy: float = 5.0) -> Figure:
    """Relative resolution (68 % interquantile / 2 median) per method against the generator's true
    resolution ``a/sqrt(E) (+) b/E (+) c``, and the ratio to the truth with the +-10 % band."""
    fig = Figure(figsize=(7.5, 7), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    truth = np.asarray(report["truth"]["resolution"])
    names = _present(report, list(_STYLE))
    e_ref = None
    for n in names:
        b = _bins(report, n)
        e_ref = b["e_median"]
        kw = {"ls": "-", "ms": 4, **_STYLE[n]}
        top.errorbar(
            b["e_median"],
            b["resolution"],
            yerr=b.get("resolution_err"),
            label=report["methods"][n]["label"],
            **kw,
        )
        bottom.errorbar(
            b["e_median"],
            b["resolution"] / truth,
            yerr=b.get("resolution_err", 0 * truth) / truth,
            **kw,
        )
    if e_ref is not None:
        t = report["truth"]
        top.plot(
            e_ref,
            truth,
            "k--",
            lw=1.5,
            label=f"truth {t['a']:.2f}/sqrt(E) (+) {t['b']:.2f}/E (+) {t['c']:.3f}",
        )
    bottom.axhspan(0.9, 1.1, color="0.85", zorder=0)
    bottom.axhline(1.0, color="k", lw=0.8)
    bottom.axvline(min_energy, color="k", ls=":", lw=0.8)
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel("sigma_rel = (Q84 - Q16) / (2 median)")
    bottom.set_ylabel("ratio to truth")
    bottom.set_xlabel("E_true [GeV]")
    bottom.set_ylim(0.8, 2.1)
    top.legend(fontsize=7)
    return fig


def plot_pulls(
    report: dict[str, Any],
    predictions: dict[str, dict[str, np.ndarray]],
    names: tuple[str, ...] = ("perlayer", "mdn", "ensemble"),
) -> Figure:
    """Pull distributions (all events) against N(0, 1), and the 68 % pull width per energy bin."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    grid = np.linspace(-5, 5, 101)
    for n in _present(report, list(names)):
        t = predictions[n]["pull"]
        left.hist(
            np.clip(t, -5, 5),
            bins=grid,
            density=True,
            histtype="step",
            lw=1.5,
            color=_STYLE[n]["color"],
            label=f"{n}: width68 = {M.width68(t):.3f}",
        )
        b = _bins(report, n)
        right.plot(b["e_median"], b["pull_width"], ls="-", ms=4, label=n, **_STYLE[n])
    centres = 0.5 * (grid[1:] + grid[:-1])
    left.plot(centres, np.exp(-0.5 * centres**2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    left.set_yscale("log")
    left.set_ylim(1e-4, 1.0)
    left.set_xlabel("pull (truth - prediction) / sigma")
    left.legend(fontsize=7)
    right.axhspan(0.9, 1.1, color="0.85", zorder=0)
    right.axhline(1.0, color="k", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("E_true [GeV]")
    right.set_ylabel("pull width (Q84 - Q16)/2")
    right.legend(fontsize=7)
    return fig


def plot_pit(
    report: dict[str, Any],
    predictions: dict[str, dict[str, np.ndarray]],
    names: tuple[str, ...] = ("perlayer", "mdn", "ensemble"),
) -> Figure:
    """PIT histograms (flat when calibrated) and 68 % / 95 % coverage per energy bin."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    for n in _present(report, list(names)):
        dens, edges = M.pit_histogram(predictions[n]["pit"], 20)
        left.stairs(dens, edges, lw=1.5, color=_STYLE[n]["color"], label=n)
        b = _bins(report, n)
        right.plot(b["e_median"], b["coverage68"], ls="-", ms=4, label=f"{n} 68 %", **_STYLE[n])
        right.plot(b["e_median"], b["coverage95"], ls="--", ms=4, label=f"{n} 95 %", **_STYLE[n])
    left.axhline(1.0, color="k", lw=0.8)
    left.set_xlabel("PIT u = F_pred(truth)")
    left.set_ylabel("density")
    left.set_ylim(0.0, 1.6)
    left.legend(fontsize=7)
    for p in (M.P68, M.P95):
        right.axhline(p, color="k", lw=0.8)
    right.axhspan(M.P68 - 0.03, M.P68 + 0.03, color="0.85", zorder=0)
    right.set_xscale("log")
    right.set_xlabel("E_true [GeV]")
    right.set_ylabel("coverage of the central interval")
    right.legend(fontsize=6, ncol=2)
    return fig


def plot_weights(fits: dict[str, CalibrationFit], layer_gains: np.ndarray | None = None) -> Figure:
    """Posterior mean and 95 % band of the per-layer weights for each per-layer fit; the inverse
    frozen gains ``1/g_i`` show what undoing the gain spread alone would need."""
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, (name, fit) in enumerate(fits.items()):
        w = fit.samples["w"]
        lo, mid, hi = np.quantile(w, [0.025, 0.5, 0.975], axis=0)
        x = np.arange(w.shape[1]) + 0.15 * (i - (len(fits) - 1) / 2)
        ax.errorbar(
            x,
            mid,
            yerr=[mid - lo, hi - mid],
            fmt="o",
            ms=3,
            capsize=1.5,
            color=_STYLE.get(name, {}).get("color"),
            label=f"{name} ({fit.method}, {int(fit.diagnostics.get('n_events', 0))} ev.)",
        )
    if layer_gains is not None:
        ax.step(
            np.arange(len(layer_gains)),
            1.0 / np.asarray(layer_gains),
            where="mid",
            color="k",
            lw=0.8,
            label="1 / g_i (frozen gains)",
        )
    ax.axhline(1.0, color="0.6", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("weight w_i (posterior median, 95 % interval)")
    ax.legend(fontsize=7)
    return fig


def plot_training(models: dict[str, MdnModel]) -> Figure:
    """Training and validation negative log-likelihood per epoch of the networks."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, net in models.items():
        hist = net.history
        ep = np.arange(1, hist["train_nll"].shape[0] + 1)
        color = _STYLE.get(name, {}).get("color")
        for j in range(hist["train_nll"].shape[1]):
            lab = name if j == 0 else None
            ax.plot(ep, hist["train_nll"][:, j], color=color, lw=0.8, alpha=0.5)
            ax.plot(ep, hist["val_nll"][:, j], color=color, lw=1.5, label=lab and f"{lab} (val)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL of log10 R (thin: train, thick: validation)")
    every = np.concatenate(
        [
            np.concatenate([n.history["train_nll"].ravel(), n.history["val_nll"].ravel()])
            for n in models.values()
        ]
    )
    low, high = np.nanmin(every), np.nanpercentile(every, 95)
    ax.set_ylim(low - 0.05 * (high - low), high)
    ax.legend(fontsize=7)
    return fig


def plot_profiles(card: CaloCard, samples: dict[float, CaloEvents]) -> Figure:
    """Generator check at fixed energies: mean layer fractions ``E[x_i]/E`` against the quadrature
    expectation ``g_i E[f_i]`` (left), and the sd/mean of the layer sum against the quadrature
    :func:`~lartpc_bayes.calo.generator.sum_moments` and the ideal resolution (right)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    layers = np.arange(card.geometry.n_layers)
    energies = sorted(samples)
    sampled, expected_res = [], []
    for e in energies:
        ev = samples[e]
        mom = profile_moments(e, card)
        line = left.plot(layers, ev.layers.mean(axis=0) / e, "o", ms=3, label=f"{e:g} GeV")
        gains = np.asarray(ev.layer_gains, dtype=float)
        left.plot(layers, gains * mom["mean_frac"], "-", color=line[0].get_color(), lw=1)
        s = ev.e_em.astype(np.float64)
        sampled.append(np.std(s) / np.mean(s))
        mean, var = sum_moments(e, card, gains=gains, moments=mom)
        expected_res.append(np.sqrt(var) / mean)
    left.set_xlabel("layer")
    left.set_ylabel("mean energy fraction per layer")
    left.set_title("points: generator, lines: quadrature", fontsize=9)
    left.legend(fontsize=7)
    e = np.asarray(energies)
    grid = np.geomspace(e.min(), e.max(), 100)
    right.plot(grid, card_resolution(card)(grid), "k--", label="ideal a/sqrt(E) (+) b/E (+) c")
    right.plot(e, expected_res, "s", mfc="none", ms=8, label="sum of layers, quadrature")
    right.plot(e, sampled, "o", label="sum of layers, generator (sd/mean)")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("E [GeV]")
    right.set_ylabel("sigma_E / E")
    right.legend(fontsize=7)
    return fig


def save_report_figures(
    out_dir: str | Path,
    report: dict[str, Any],
    predictions: dict[str, dict[str, np.ndarray]],
    fits: dict[str, CalibrationFit] | None = None,
    networks: dict[str, MdnModel] | None = None,
    layer_gains: np.ndarray | None = None,
    card: CaloCard | None = None,
    dpi: int = 110,
) -> list[Path]:
    """Write ``calo_linearity``, ``calo_resolution``, ``calo_pulls``, ``calo_pit`` and, when
    given, ``calo_weights``, ``calo_training`` and (with ``card``) the generator check
    ``calo_generator`` (2e4 events at 2, 20 and 200 GeV, seed 7) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = {
        "calo_linearity": plot_linearity(report),
        "calo_resolution": plot_resolution(report),
        "calo_pulls": plot_pulls(report, predictions),
        "calo_pit": plot_pit(report, predictions),
    }
    perlayer = {k: v for k, v in (fits or {}).items() if v.kind == "perlayer"}
    if perlayer:
        figs["calo_weights"] = plot_weights(perlayer, layer_gains)
    if networks:
        figs["calo_training"] = plot_training(networks)
    if card is not None:
        fixed = {e: simulate(card, 20000, seed=7, energies=e) for e in (2.0, 20.0, 200.0)}
        figs["calo_generator"] = plot_profiles(card, fixed)
    paths = []
    for name, fig in figs.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


__all__ = [
    "plot_linearity",
    "plot_pit",
    "plot_profiles",
    "plot_pulls",
    "plot_resolution",
    "plot_training",
    "plot_weights",
    "save_report_figures",
]
