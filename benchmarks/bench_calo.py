"""Calorimeter benchmarks: generator throughput, mixture-network epoch time, fit and predict cost.

Writes a JSON file (default ``benchmarks/results/calo_cpu.json``) with the machine description and
its load average, because the development machine is shared and wall times move with the load.

    python benchmarks/bench_calo.py [--out PATH] [--events 1000000] [--repeats 3]

Every timing blocks on the result (NumPy is synchronous; JAX results are converted to NumPy) and
excludes JIT compilation where stated (``*_first_s`` includes it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lartpc_bayes.calo.baselines import fit_laplace, fit_nuts
from lartpc_bayes.calo.card import load_card
from lartpc_bayes.calo.generator import simulate
from lartpc_bayes.calo.mdn import train_mdn

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "calo_cpu.json"


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, library versions, JAX devices and the current load average."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_devices": [str(d) for d in jax.devices()],
        "load_average_1_5_15": list(os.getloadavg()),
    }


def _timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench_generator(n_events: int, repeats: int) -> dict[str, Any]:
    """Throughput of :func:`simulate` (photons, log-uniform 1-500 GeV) with 1 and 2 threads."""
    card = load_card()
    res: dict[str, Any] = {"n_events": n_events}
    for workers in (2, 1):
        times = _timed(lambda w=workers: simulate(card, n_events, seed=1, workers=w), repeats)
        res[f"workers_{workers}"] = {
            "times_s": times,
            "best_s": min(times),
            "events_per_s_best": n_events / min(times),
            "events_per_s_median": n_events / statistics.median(times),
        }
    return res


def bench_mdn(n_train: int, epochs: int) -> dict[str, Any]:
    """Epoch time of the card's network (batch 4096) and of the 5-member ensemble, and the cost of
    predicting (mode search, quantiles, PIT) 1e5 events."""
    card = load_card()
    ev = simulate(card, n_train, seed=2)
    test = simulate(card, 100_000, seed=3)
    res: dict[str, Any] = {"n_events": n_train, "batch_size": card.mdn.batch_size}
    for name, members in (("single", 1), ("ensemble", card.mdn.ensemble_members)):
        t0 = time.perf_counter()
        net = train_mdn(ev.layers, ev.e_true, card.mdn, members=members, epochs=epochs)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        net.predict(test.layers, test.e_true)
        first = time.perf_counter() - t1
        t2 = time.perf_counter()
        net.predict(test.layers, test.e_true)
        again = time.perf_counter() - t2
        res[name] = {
            "members": members,
            "epochs": epochs,
            "train_events": net.info["n_train"],
            "steps_per_epoch": net.info["steps_per_epoch"],
            "epoch_time_s": net.info["epoch_time_s"],
            "train_total_s_incl_compile": total,
            "predict_1e5_first_s": first,
            "predict_1e5_s": again,
            "predict_events_per_s": 1e5 / again,
        }
    return res


def bench_baselines(n_laplace: int, n_nuts: int) -> dict[str, Any]:
    """Per-layer robust resolution-likelihood fits: Laplace (Newton MAP + Hessian) and NUTS."""
    card = load_card()
    ev = simulate(card, n_laplace, seed=4)
    t0 = time.perf_counter()
    lap = fit_laplace("perlayer", ev.layers, ev.e_true, card.calibration, "robust")
    t_lap = time.perf_counter() - t0
    sub = ev.select(slice(0, n_nuts))
    t0 = time.perf_counter()
    nuts = fit_nuts("perlayer", sub.layers, sub.e_true, card.calibration, "robust")
    t_nuts = time.perf_counter() - t0
    return {
        "perlayer_laplace": {"n_events": n_laplace, "time_s": t_lap, **lap.diagnostics},
        "perlayer_nuts": {"n_events": n_nuts, "time_s": t_nuts, **nuts.diagnostics},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--events", type=int, default=1_000_000, help="generator events")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mdn-events", type=int, default=450_000)
    parser.add_argument("--mdn-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"machine_start": machine_info()}
    result["generator"] = bench_generator(args.events, args.repeats)
    result["mdn"] = bench_mdn(args.mdn_events, args.mdn_epochs)
    result["baselines"] = bench_baselines(500_000, load_card().calibration.nuts_events)
    result["machine_end"] = machine_info()
    result["total_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out)
    g = result["generator"]["workers_2"]
    print(f"generator: {g['events_per_s_best']:.3g} events/s (2 threads, best of {args.repeats})")
    print(
        f"mdn epoch: {result['mdn']['single']['epoch_time_s']:.2f} s single, "
        f"{result['mdn']['ensemble']['epoch_time_s']:.2f} s ensemble"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
