"""Fit every calibration method on a training sample and evaluate them on a test sample.

This is the orchestration behind ``lartpc-bayes calo fit`` / ``report`` and the notebook; the
physics and statistics live in :mod:`.generator`, :mod:`.baselines`, :mod:`.mdn` and
:mod:`.metrics`.

Methods (keys of :data:`METHODS`):

* ``sum``: talk-004 sum of cells;
* ``linear_absolute`` / ``linear_relative`` / ``linear_resolution``: ``alpha sum + beta`` with the
  three likelihoods, NUTS on the whole training sample (4-5 parameters fit the budget);
* ``perlayer_absolute``: 51 weights, absolute residuals, Laplace on the whole training sample;
* ``perlayer_gauss``: 51 weights, Gaussian resolution likelihood, Laplace on the whole sample;
* ``perlayer_nuts``: 51 weights, robust resolution likelihood, NUTS on ``calibration.nuts_events``;
* ``perlayer``: 51 weights, robust resolution likelihood, Laplace on the whole training sample;
* ``mdn``: the talk-003 mixture network; ``ensemble``: a deep ensemble of them.

Pulls are "truth minus prediction over predicted width", the width being half the central 68 %
predictive interval: ``(E_true - E_model)/sigma_68`` for the baselines and
``(y_mode - y_true)/sigma_68`` in ``y = log10(E_EM/E)`` for the networks (the same sign, since
``y_mode - y_true = log10(E_true/E_model)``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics as M
from .baselines import CalibrationFit, em_sum, fit_laplace, fit_nuts
from .card import CaloCard
from .generator import CaloEvents, card_resolution
from .io import read_model, write_model
from .mdn import MdnModel, train_mdn

#: method -> (label, baseline kind, likelihood, inference) for the baselines; labels for all.
METHODS: dict[str, dict[str, str]] = {
    "sum": {"label": "sum of layers"},
    "linear_absolute": {
        "label": "alpha*sum+beta, absolute residuals (NUTS)",
        "kind": "linear",
        "likelihood": "absolute",
        "method": "nuts",
    },
    "linear_relative": {
        "label": "alpha*sum+beta, relative residuals (NUTS)",
        "kind": "linear",
        "likelihood": "relative",
        "method": "nuts",
    },
    "linear_resolution": {
        "label": "alpha*sum+beta, resolution likelihood (NUTS)",
        "kind": "linear",
        "likelihood": "resolution",
        "method": "nuts",
    },
    "perlayer_absolute": {
        "label": "per-layer, absolute residuals (Laplace)",
        "kind": "perlayer",
        "likelihood": "absolute",
        "method": "laplace",
    },
    "perlayer_gauss": {
        "label": "per-layer, Gaussian resolution likelihood (Laplace)",
        "kind": "perlayer",
        "likelihood": "resolution",
        "method": "laplace",
    },
    "perlayer_nuts": {
        "label": "per-layer, robust resolution likelihood (NUTS, subsample)",
        "kind": "perlayer",
        "likelihood": "robust",
        "method": "nuts",
        "subsample": "yes",
    },
    "perlayer": {
        "label": "per-layer, robust resolution likelihood (Laplace)",
        "kind": "perlayer",
        "likelihood": "robust",
        "method": "laplace",
    },
    "mdn": {"label": "mixture network (talk 003)"},
    "ensemble": {"label": "mixture-network deep ensemble"},
}


@dataclass
class CaloModels:
    """Fitted calibrations: baselines by method name, the network and the ensemble (or None)."""

    baselines: dict[str, CalibrationFit] = field(default_factory=dict)
    mdn: MdnModel | None = None
    ensemble: MdnModel | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        names = ["sum", *self.baselines]
        names += [n for n, m in (("mdn", self.mdn), ("ensemble", self.ensemble)) if m is not None]
        return names


def fit_all(
    card: CaloCard,
    events: CaloEvents,
    *,
    methods: list[str] | None = None,
    nuts_events: int | None = None,
    epochs: int | None = None,
    ensemble_members: int | None = None,
    ensemble_epochs: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> CaloModels:
    """Fit the requested methods (default: all of :data:`METHODS`) on ``events``."""
    wanted = list(METHODS) if methods is None else methods
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown calo methods {unknown}; choose from {list(METHODS)}")
    cal = card.calibration
    n_sub = min(len(events), cal.nuts_events if nuts_events is None else nuts_events)
    models = CaloModels(info={"n_train": len(events), "nuts_events": n_sub})
    for name in wanted:
        spec = METHODS[name]
        if "kind" not in spec:
            continue
        ev = events.select(slice(0, n_sub)) if spec.get("subsample") else events
        if spec["method"] == "nuts":
            fit = fit_nuts(
                spec["kind"],
                ev.layers,
                ev.e_true,
                cal,
                spec["likelihood"],
                seed=seed,
                progress=progress,
            )
        else:
            fit = fit_laplace(
                spec["kind"], ev.layers, ev.e_true, cal, spec["likelihood"], seed=seed
            )
        models.baselines[name] = fit
    if "mdn" in wanted:
        models.mdn = train_mdn(
            events.layers,
            events.e_true,
            card.mdn,
            epochs=epochs,
            seed=card.mdn.seed + seed,
            progress=progress,
        )
    members = card.mdn.ensemble_members if ensemble_members is None else ensemble_members
    if "ensemble" in wanted and members > 1:
        models.ensemble = train_mdn(
            events.layers,
            events.e_true,
            card.mdn,
            members=members,
            epochs=card.mdn.ensemble_epochs if ensemble_epochs is None else ensemble_epochs,
            seed=card.mdn.seed + seed + 1,
            progress=progress,
        )
    return models


def save_models(path: str | Path, models: CaloModels, card: CaloCard) -> Path:
    """Write all fitted methods to one HDF5 model file (atomically)."""
    tree: dict[str, Any] = {"baselines": {k: f.to_tree() for k, f in models.baselines.items()}}
    if models.mdn is not None:
        tree["mdn"] = models.mdn.to_tree()
    if models.ensemble is not None:
        tree["ensemble"] = models.ensemble.to_tree()
    return write_model(path, tree, card, {"info": models.info, "methods": models.methods})


def load_models(path: str | Path) -> tuple[CaloModels, CaloCard]:
    """Read a model file written by :func:`save_models`."""
    tree, card, meta = read_model(path)
    models = CaloModels(
        baselines={k: CalibrationFit.from_tree(v) for k, v in tree.get("baselines", {}).items()},
        mdn=MdnModel.from_tree(tree["mdn"]) if "mdn" in tree else None,
        ensemble=MdnModel.from_tree(tree["ensemble"]) if "ensemble" in tree else None,
        info=meta.get("info", {}),
    )
    return models, card


def predict_all(models: CaloModels, events: CaloEvents) -> dict[str, dict[str, np.ndarray]]:
    """Per method: ``e_model`` [GeV] and, where the method has an uncertainty, ``pull``, ``pit``
    and ``sigma_rel``, the predicted relative energy uncertainty (``sigma_E/E_model`` for the
    baselines, ``ln(10) sigma_68`` for the networks)."""
    e_true = np.asarray(events.e_true, dtype=np.float64)
    out: dict[str, dict[str, np.ndarray]] = {"sum": {"e_model": em_sum(events.layers)}}
    for name, fit in models.baselines.items():
        mu, sigma68 = fit.predict(events.layers)
        out[name] = {
            "e_model": mu,
            "pull": (e_true - mu) / sigma68,
            "pit": fit.pit(events.layers, e_true),
            "sigma_rel": sigma68 / np.abs(mu),
        }
    for name, net in (("mdn", models.mdn), ("ensemble", models.ensemble)):
        if net is None:
            continue
        p = net.predict(events.layers, e_true)
        out[name] = {
            "e_model": p["e_model"],
            "pull": (p["y_mode"] - p["y_true"]) / p["sigma68"],
            "pit": p["pit"],
            "sigma_rel": np.log(10.0) * p["sigma68"],
            "sigma_stat_rel": np.log(10.0) * p["sigma_stat"],
            "sigma_syst_rel": np.log(10.0) * p["sigma_syst"],
        }
    return out


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items()}


def evaluate(
    card: CaloCard,
    events: CaloEvents,
    predictions: dict[str, dict[str, np.ndarray]],
    *,
    n_boot: int | None = None,
    target_min_energy: float = 5.0,
) -> dict[str, Any]:
    """Binned metrics of every method, the generator's true resolution and the issue-6 targets.

    Targets: per-layer resolution within 10 % of the true resolution in every bin whose lower edge
    is at least ``target_min_energy`` GeV; for the networks, pull widths in [0.9, 1.1] and 68 %
    coverage within 3 points of 68.27 %, per bin and overall.
    """
    t0 = time.perf_counter()
    b = card.beam
    edges = M.energy_bin_edges(b.energy_min_gev, b.energy_max_gev, card.metrics.energy_bins)
    e_true = np.asarray(events.e_true, dtype=np.float64)
    truth_fn = card_resolution(card)
    truth = M.true_resolution_in_bins(e_true, edges, truth_fn)
    boot = card.metrics.bootstrap if n_boot is None else n_boot
    r = card.response
    report: dict[str, Any] = {
        "card": card.name,
        "n_events": len(events),
        "edges": edges.tolist(),
        "truth": {
            "a": r.stochastic_a,
            "b": r.noise_b,
            "c": r.event_gain_c,
            "resolution": truth.tolist(),
        },
        "methods": {},
    }
    for name, pred in predictions.items():
        bins = M.binned_metrics(
            e_true,
            pred["e_model"],
            edges,
            pull=pred.get("pull"),
            pit=pred.get("pit"),
            n_boot=boot,
        )
        bins["resolution_over_truth"] = bins["resolution"] / truth
        entry: dict[str, Any] = {"label": METHODS[name]["label"], "bins": _jsonable(bins)}
        try:
            entry["resolution_fit"] = M.fit_resolution_curve(
                bins["e_median"], bins["resolution"], bins.get("resolution_err")
            )
        except (RuntimeError, ValueError) as exc:  # curve_fit failure is reported, not fatal
            entry["resolution_fit"] = {"error": str(exc)}
        if "pull" in pred:
            chi2, pval = M.pit_chi2(pred["pit"])
            entry["overall"] = {
                "pull_width": M.width68(pred["pull"]),
                "pull_median": float(np.median(pred["pull"])),
                "coverage68": M.coverage(pred["pit"], M.P68),
                "coverage95": M.coverage(pred["pit"], M.P95),
                "calibration_error": M.calibration_error(pred["pit"]),
                "pit_chi2_20bins": chi2,
                "pit_pvalue": pval,
                "median_sigma_rel": float(np.median(pred["sigma_rel"])),
            }
            if "sigma_stat_rel" in pred:
                entry["overall"]["median_sigma_stat_rel"] = float(np.median(pred["sigma_stat_rel"]))
                entry["overall"]["median_sigma_syst_rel"] = float(np.median(pred["sigma_syst_rel"]))
        report["methods"][name] = entry
    report["targets"] = _targets(report, target_min_energy)
    report["evaluation_time_s"] = time.perf_counter() - t0
    return report


def _targets(report: dict[str, Any], e_min: float) -> dict[str, Any]:
    edges = np.asarray(report["edges"])
    above = edges[:-1] >= e_min
    out: dict[str, Any] = {"resolution_bins_from_gev": float(edges[:-1][above][0])}
    for name in ("perlayer", "perlayer_nuts", "perlayer_gauss"):
        if name in report["methods"]:
            ratio = np.asarray(report["methods"][name]["bins"]["resolution_over_truth"])[above]
            out[f"{name}_max_deviation"] = float(np.nanmax(np.abs(ratio - 1.0)))
            out[f"{name}_within_10pct"] = bool(np.all(np.abs(ratio - 1.0) <= 0.10))
    for name in ("mdn", "ensemble"):
        if name not in report["methods"]:
            continue
        m = report["methods"][name]
        pw = np.asarray(m["bins"]["pull_width"])
        cov = np.asarray(m["bins"]["coverage68"])
        out[f"{name}_pull_width_range"] = [float(np.nanmin(pw)), float(np.nanmax(pw))]
        out[f"{name}_pull_width_ok_bins"] = bool(np.all((pw >= 0.9) & (pw <= 1.1)))
        out[f"{name}_pull_width_ok_overall"] = bool(0.9 <= m["overall"]["pull_width"] <= 1.1)
        out[f"{name}_coverage68_range"] = [float(np.nanmin(cov)), float(np.nanmax(cov))]
        out[f"{name}_coverage68_ok_bins"] = bool(np.all(np.abs(cov - M.P68) <= 0.03))
        out[f"{name}_coverage68_ok_overall"] = bool(abs(m["overall"]["coverage68"] - M.P68) <= 0.03)
    return out


def markdown_table(report: dict[str, Any], methods: list[str] | None = None) -> str:
    """Resolution per energy bin for each method beside the generator's truth (a Markdown table)."""
    names = [m for m in (methods or list(report["methods"])) if m in report["methods"]]
    edges = report["edges"]
    head = "| E_true bin [GeV] | truth | " + " | ".join(names) + " |"
    sep = "|---" * (len(names) + 2) + "|"
    rows = [head, sep]
    truth = report["truth"]["resolution"]
    for i in range(len(edges) - 1):
        cells = [f"{edges[i]:.3g}-{edges[i + 1]:.3g}", f"{truth[i]:.4f}"]
        for n in names:
            res = report["methods"][n]["bins"]["resolution"][i]
            lin = report["methods"][n]["bins"]["linearity"][i]
            cells.append(f"{res:.4f} ({lin:+.3f})")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


__all__ = [
    "METHODS",
    "CaloModels",
    "evaluate",
    "fit_all",
    "load_models",
    "markdown_table",
    "predict_all",
    "save_models",
]
