"""Benchmark: log-likelihood + gradient of the full NumPyro model (six parameters and every dE/dx
latent) for straight muons of several lengths.

The track is the one of ``bench_charge.py`` (Module 0, 75 degrees to the drift axis, 0.4 cm
segments of 2.1 MeV/cm), cut to each length; hits are simulated with the stochastic readout at the
nominal parameters (seed 0); the potential is NumPyro's (``initialize_model``), i.e. minus the log
posterior in the unconstrained space, latents of 5 cm. Timed after compilation: median and spread
of ``value_and_grad``; also compile time, channels, window lengths and peak RSS.

    python benchmarks/bench_likelihood.py          # 10, 30, 100 cm -> results/likelihood_cpu.json
    python benchmarks/bench_likelihood.py --quick  # 10 cm, 3 repeats, JSON to stdout
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, git_commit, machine_info, muon_segments, timed_runs, versions

DEFAULT_OUT = REPO / "benchmarks" / "results" / "likelihood_cpu.json"


def bench_one(length_cm: float, repeats: int, kind: str, max_lag: int) -> dict:
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import initialize_model

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward.charge import plan_info
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.likelihood import LikelihoodConfig
    from lartpc_bayes.model import build_problem, calibration_model

    card = load_card("module0")
    segs = muon_segments(length_cm)
    hits, _ = simulate_hits(jax.random.key(0), card, segs, nominal_params(card))
    problem = build_problem(card, segs, hits, latent_length_cm=5.0,
                            likelihood=LikelihoodConfig(kind=kind, max_lag=max_lag))
    info = initialize_model(jax.random.key(0), calibration_model, model_args=(problem,),
                            model_kwargs={"hits": jnp.asarray(problem.table)})
    z = info.param_info.z
    vg = jax.value_and_grad(info.potential_fn)
    t = time.perf_counter()
    compiled = jax.jit(vg).lower(z).compile()
    compile_s = time.perf_counter() - t
    value, grad = compiled(z)
    finite = bool(jnp.isfinite(value)) and all(bool(jnp.all(jnp.isfinite(g)))
                                                for g in jax.tree.leaves(grad))
    r = timed_runs(lambda: compiled(z), repeats, warmup=1)
    pi = plan_info(problem.plan)
    return {
        "length_cm": length_cm, "kind": kind, "max_lag": max_lag, "compile_s": compile_s,
        "n_hits": int(hits.n), "n_latents": problem.n_latent, "channels": pi.n_channels,
        "windows": list(pi.windows), "channels_per_bucket": list(pi.channels_per_bucket),
        "potential": float(value), "finite": finite,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **r,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 cm only, 3 repeats, stdout")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)

    lengths = [10.0] if args.quick else [10.0, 30.0, 100.0]
    repeats = args.repeats or (3 if args.quick else 10)
    cases = []
    for length in lengths:
        for kind, max_lag in ([("ppp", 0)] if args.quick else
                              [("ppp", 0), ("ppp", 48), ("sequential", 0)]):
            c = bench_one(length, repeats, kind, max_lag)
            print(f"{length:6.0f} cm {kind:10s} max_lag {max_lag:3d}: compile {c['compile_s']:.1f}"
                  f" s, value+grad median {1e3 * c['median_s']:.1f} ms (IQR "
                  f"{1e3 * c['iqr_s']:.1f}), {c['channels']} channels, windows {c['windows']}",
                  file=sys.stderr)
            cases.append(c)
    result = {
        "benchmark": "likelihood",
        "description": "value_and_grad of the NumPyro potential (PPP or sequential likelihood, "
        "six parameters + dE/dx latents) for a straight Module-0 muon",
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_commit(),
        "cases": cases,
    }
    text = json.dumps(result, indent=1)
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)
    return result


if __name__ == "__main__":
    main()
