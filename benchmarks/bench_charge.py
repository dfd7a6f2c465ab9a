"""Benchmark: expected charge on all pixels for a 100 cm muon, and its gradient.

The track: a straight 100 cm muon inside TPC 0 of Module 0 (75 degrees to the drift axis, drift
distance 3.4 cm to 28.4 cm), 0.4 cm segments of 2.1 MeV/cm. Timed after compilation (median and
spread over ``--repeats`` runs): ``expected_charge`` (all buckets) and ``value_and_grad`` of a
scalar of the charges with respect to the six calibration parameters and every segment's dE/dx.
Also recorded: host planning time, lowering and compile times, plan sizes, peak RSS, machine and
library versions.

    python benchmarks/bench_charge.py             # full: -> benchmarks/results/charge_cpu.json
    python benchmarks/bench_charge.py --quick     # 30 cm track, 5 repeats, JSON to stdout
    python benchmarks/bench_charge.py --out my.json

float32 (the package default) unless ``--float64``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DEDX,
    DIRECTION,
    REPO,
    SEGMENT_CM,
    START,
    git_commit,
    machine_info,
    muon_segments,
    timed_runs,
    versions,
)

DEFAULT_OUT = REPO / "benchmarks" / "results" / "charge_cpu.json"
__all__ = ["muon_segments", "timed_runs"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="30 cm track, 5 repeats, no file unless --out")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs (default 30; quick 5)")
    ap.add_argument("--length", type=float, default=None, help="track length, cm (default 100)")
    ap.add_argument("--card", default="module0")
    ap.add_argument("--step", type=float, default=0.04, help="sub-point step, cm")
    ap.add_argument("--float64", action="store_true", help="run in float64 instead of float32")
    args = ap.parse_args(argv)

    import jax

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from lartpc_bayes.detector import PARAM_NAMES, load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.charge import expected_charge, plan_charge, plan_info, produced_charge

    repeats = args.repeats or (5 if args.quick else 30)
    length = args.length or (30.0 if args.quick else 100.0)
    dtype = jnp.float64 if args.float64 else jnp.float32
    load_start = os.getloadavg()

    card = load_card(args.card)
    segs = muon_segments(length)
    t = time.perf_counter()
    plan = plan_charge(card, segs, step_cm=args.step, dtype=dtype)
    plan_s = time.perf_counter() - t
    info = plan_info(plan)
    plan_dev = (plan.sub, plan.buckets)
    dedx = jnp.asarray(segs.dEdx, dtype)
    params = DetectorParams(*(jnp.asarray(v, dtype) for v in card.nominal().values()))

    def forward(pd, d, p):
        return expected_charge(pd, d, p, card)

    def loss(p, d, pd):
        # a scalar of all charges (sum of the squared cumulative charges, ke^2): every Q[c, j]
        # enters, as in a likelihood
        return sum(jnp.sum((Q * 1e-3) ** 2) for Q, _ in expected_charge(pd, d, p, card))

    res = {}
    for name, fn, call_args in [
        ("forward", forward, (plan_dev, dedx, params)),
        ("value_and_grad", jax.value_and_grad(loss, argnums=(0, 1)), (params, dedx, plan_dev)),
    ]:
        t = time.perf_counter()
        lowered = jax.jit(fn).lower(*call_args)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        jax.block_until_ready(compiled(*call_args))
        t3 = time.perf_counter()
        r = {"lower_s": t1 - t, "compile_s": t2 - t1, "first_call_s": t3 - t2}
        r.update(timed_runs(lambda c=compiled, a=call_args: c(*a), repeats))
        res[name] = r
        print(f"{name:15s} compile {r['compile_s']:.2f} s, median {1e3 * r['median_s']:.2f} ms "
              f"(IQR {1e3 * r['iqr_s']:.2f} ms, min {1e3 * r['min_s']:.2f}, "
              f"max {1e3 * r['max_s']:.2f}) over {repeats}", file=sys.stderr)

    # sanity: charge conservation and finite gradients
    out = jax.jit(forward)(plan_dev, dedx, params)
    collected = float(sum(Q[:, -1].astype(jnp.float64 if args.float64 else jnp.float32).sum()
                          for Q, _ in out))
    produced = float(produced_charge(plan_dev, dedx, params, card))
    (_, (g_p, g_d)) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, dedx, plan_dev)
    finite = bool(all(np.isfinite(float(x)) for x in g_p) and np.all(np.isfinite(np.asarray(g_d))))

    u = DIRECTION / np.linalg.norm(DIRECTION)
    result = {
        "benchmark": "charge",
        "description": "expected cumulative charge on all pixels (collection model) for a straight "
        "muon, and value_and_grad of sum(Q^2) w.r.t. the six parameters and every dE/dx",
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "config": {
            "card": card.name,
            "track_length_cm": length,
            "start_cm": START.tolist(),
            "end_cm": (START + length * u).tolist(),
            "angle_to_drift_axis_deg": math.degrees(math.acos(abs(u[card.geometry.drift_axis]))),
            "segment_cm": SEGMENT_CM,
            "dEdx_MeV_per_cm": DEDX,
            "step_cm": args.step,
            "dtype": "float64" if args.float64 else "float32",
            "params": dict(zip(PARAM_NAMES, card.nominal().values(), strict=True)),
            "repeats": repeats,
            "warmup_runs": 2,
        },
        "plan": {**info._asdict(), "plan_time_s": plan_s},
        "forward": res["forward"],
        "value_and_grad": res["value_and_grad"],
        "checks": {
            "collected_e": collected,
            "produced_e": produced,
            "relative_difference": collected / produced - 1.0,
            "gradients_finite": finite,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "machine": {**machine_info(), "load_average_start": load_start,
                    "load_average_end": list(os.getloadavg())},
        "versions": versions(),
        "git": git_commit(),
    }
    text = json.dumps(result, indent=2)
    out_path = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    if out_path is None:
        print(text)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(text + "\n")
        print(f"wrote {out_path}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
