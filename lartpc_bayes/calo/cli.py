"""``lartpc-bayes calo {simulate,fit,report}``: the calorimeter study from the command line.

The main ``lartpc-bayes`` parser calls :func:`register` with its sub-parsers; each handler takes the
parsed :class:`argparse.Namespace` and returns the process exit code (0 success, 2 bad input).

Typical session::

    lartpc-bayes calo simulate -n 500000 --seed 1 -o train.h5
    lartpc-bayes calo simulate -n 500000 --seed 2 -o test.h5
    lartpc-bayes calo fit --data train.h5 -o calo_model.h5
    lartpc-bayes calo report --model calo_model.h5 --data test.h5 --out-dir calo_report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .card import PARTICLES, CaloCardError, load_card


def _add_card(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--card", default=None, help=f"calorimeter card YAML ({default_help})")


def register(subparsers: Any) -> None:
    """Add the ``calo`` command with ``simulate``, ``fit`` and ``report`` to ``subparsers``."""
    calo = subparsers.add_parser(
        "calo",
        help="toy ECAL energy calibration with uncertainties (talks 003/004)",
        description="Toy sampling-ECAL generator, Bayesian talk-004 baselines and the talk-003 "
        "Gaussian-mixture network, with linearity, resolution, pulls and coverage.",
    )
    sub = calo.add_subparsers(dest="calo_command", metavar="{simulate,fit,report}")
    sub.required = True

    sim = sub.add_parser("simulate", help="simulate events into an HDF5 file")
    _add_card(sim, "default: models/calo_ecal.yaml")
    sim.add_argument("-n", "--n-events", type=int, default=100_000, help="events (default 1e5)")
    sim.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    sim.add_argument("--particle", choices=PARTICLES, default=None, help="override beam.particle")
    sim.add_argument("--energy", type=float, default=None, help="fixed energy [GeV]")
    sim.add_argument("--e-min", type=float, default=None, help="override beam.energy_min_gev")
    sim.add_argument("--e-max", type=float, default=None, help="override beam.energy_max_gev")
    sim.add_argument("--workers", type=int, default=2, help="threads (default 2)")
    sim.add_argument("-o", "--out", required=True, help="output HDF5 file")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)

    fit = sub.add_parser("fit", help="fit the baselines and train the mixture networks")
    fit.add_argument("--data", required=True, help="training events (HDF5 from simulate)")
    _add_card(fit, "default: the card stored in --data")
    fit.add_argument("-o", "--out", required=True, help="output model file (HDF5)")
    fit.add_argument(
        "--methods", default=None, help="comma-separated subset of: " + ", ".join(_method_names())
    )
    fit.add_argument("--nuts-events", type=int, default=None, help="events for per-layer NUTS")
    fit.add_argument("--epochs", type=int, default=None, help="override mdn.epochs")
    fit.add_argument("--ensemble-members", type=int, default=None, help="override ensemble size")
    fit.add_argument("--ensemble-epochs", type=int, default=None, help="override ensemble epochs")
    fit.add_argument("--seed", type=int, default=0, help="offset to all fit seeds (default 0)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")
    fit.set_defaults(func=cmd_fit)

    rep = sub.add_parser("report", help="metrics, comparison table and figures on test events")
    rep.add_argument("--model", required=True, help="model file from fit")
    rep.add_argument("--data", required=True, help="test events (HDF5 from simulate)")
    rep.add_argument("--out-dir", required=True, help="directory for JSON, table and figures")
    rep.add_argument("--bootstrap", type=int, default=None, help="override metrics.bootstrap")
    rep.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    rep.set_defaults(func=cmd_report)


def _method_names() -> list[str]:
    from .pipeline import METHODS

    return list(METHODS)


def _error(msg: str) -> int:
    print(f"lartpc-bayes calo: error: {msg}", file=sys.stderr)
    return 2


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate ``--n-events`` events and write them (with card and seed) to ``--out``."""
    from .generator import simulate
    from .io import write_events

    try:
        card = load_card(args.card)
        beam: dict[str, Any] = {}
        if args.particle is not None:
            beam["particle"] = args.particle
        if args.e_min is not None:
            beam["energy_min_gev"] = args.e_min
        if args.e_max is not None:
            beam["energy_max_gev"] = args.e_max
        if beam:
            card = card.replace(beam=beam)
        if card.beam.energy_max_gev <= card.beam.energy_min_gev:
            return _error("--e-max must exceed --e-min")
        t0 = time.perf_counter()
        events = simulate(
            card,
            args.n_events,
            args.seed,
            energies=args.energy,
            workers=args.workers,
            progress=not args.no_progress,
        )
        dt = time.perf_counter() - t0
        path = write_events(args.out, events, card, args.seed)
    except (CaloCardError, ValueError, OSError) as exc:
        return _error(str(exc))
    print(f"wrote {len(events)} events to {path} ({dt:.1f} s, {len(events) / dt:.3g} events/s)")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit the calibration methods on ``--data`` and write them to ``--out``."""
    from .io import read_events
    from .pipeline import fit_all, save_models

    try:
        events, data_card, _ = read_events(args.data)
        card = load_card(args.card) if args.card else data_card
        methods = None if args.methods is None else [m.strip() for m in args.methods.split(",")]
        t0 = time.perf_counter()
        models = fit_all(
            card,
            events,
            methods=methods,
            nuts_events=args.nuts_events,
            epochs=args.epochs,
            ensemble_members=args.ensemble_members,
            ensemble_epochs=args.ensemble_epochs,
            seed=args.seed,
            progress=not args.no_progress,
        )
        models.info["fit_time_s"] = time.perf_counter() - t0
        path = save_models(args.out, models, card)
    except (CaloCardError, ValueError, OSError, KeyError) as exc:
        return _error(str(exc))
    for name, fit in models.baselines.items():
        d = fit.diagnostics
        print(f"{name:20s} {fit.method:8s} {int(d['n_events']):8d} events {d['runtime_s']:7.1f} s")
    for name, net in (("mdn", models.mdn), ("ensemble", models.ensemble)):
        if net is not None:
            i = net.info
            print(
                f"{name:20s} {int(i['members'])} x {int(i['epochs'])} epochs "
                f"{int(i['n_train']):8d} events {i['runtime_s']:7.1f} s"
            )
    print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Evaluate a model file on ``--data``; write JSON, a Markdown table and figures."""
    from .io import read_events
    from .pipeline import evaluate, load_models, markdown_table, predict_all

    try:
        models, card = load_models(args.model)
        events, _, _ = read_events(args.data)
        predictions = predict_all(models, events)
        report = evaluate(card, events, predictions, n_boot=args.bootstrap)
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "calo_report.json").write_text(json.dumps(report, indent=1))
        table = markdown_table(report)
        (out / "calo_table.md").write_text(table)
        figures = []
        if not args.no_figures:
            from .plots import save_report_figures

            pairs = (("mdn", models.mdn), ("ensemble", models.ensemble))
            networks = {k: v for k, v in pairs if v is not None}
            figures = save_report_figures(
                out, report, predictions, models.baselines, networks, events.layer_gains, card
            )
    except (CaloCardError, ValueError, OSError, KeyError) as exc:
        return _error(str(exc))
    print(table)
    print(json.dumps(report["targets"], indent=1))
    print(f"wrote {out / 'calo_report.json'}, {out / 'calo_table.md'} and {len(figures)} figures")
    return 0


__all__ = ["cmd_fit", "cmd_report", "cmd_simulate", "register"]
