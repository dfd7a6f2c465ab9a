"""Where the time of the log-likelihood + gradient goes: stages timed apart, and an XLA op profile.

    .venv/bin/python benchmarks/profile_likelihood.py [--length 100] [--out FILE]
        # -> benchmarks/results/profile_cpu.json

For the benchmark muon batch of ``--length`` cm (``_common.muon_batch``, hits simulated at the
nominal parameters, 5 cm latents, the package's default likelihood):

1. **Stages**, each jitted on its own and timed after compilation (median of ``--repeats``):
   the charge model forward and forward + VJP; per bucket the readout tensors
   (``readout_prob.readout_tensors``) forward; the log-likelihood given the charges, forward and
   with its gradient w.r.t. the charges; and the whole potential's ``value_and_grad``.
2. **Op profile** of the whole ``value_and_grad``: ``jax.profiler.trace`` over ``--trace-runs``
   calls, the XLA:CPU thunk events read back with ``jax.profiler.ProfileData`` and summed per op
   name over all threads (CPU time, so shares add to 100 %), each op with the shape, the HLO kind
   and the JAX primitive path (``op_name`` metadata) from the optimized HLO; also the time summed
   per JAX primitive path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

DEFAULT_OUT = C.RESULTS / "profile_cpu.json"


def _median_time(fn, repeats: int) -> dict:
    import jax

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0]] * 3
    return {"median_ms": 1e3 * statistics.median(ts), "iqr_ms": 1e3 * (q[2] - q[0]),
            "n_runs": len(ts)}


def _hlo_index(hlo_text: str) -> dict:
    """Instruction name -> (shape, opcode/kind, JAX op_name, source line) of the optimized HLO."""
    idx = {}
    pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*"
                     r"(\S+(?:\[[^\]]*\])?(?:\{[^}]*\})?|\([^=]*?\))\s+([\w\-]+)\(")
    for line in hlo_text.splitlines():
        m = pat.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        kind = re.search(r"kind=(\w+)", line)
        op = re.search(r'op_name="([^"]*)"', line)
        src = re.search(r'source_file="([^"]*)"\s+source_line=(\d+)', line)
        idx[name] = {
            "shape": shape,
            "opcode": opcode + (f"({kind.group(1)})" if kind else ""),
            "jax_op": op.group(1) if op else None,
            "source": (f"{Path(src.group(1)).name}:{src.group(2)}" if src else None),
        }
    return idx


def op_profile(compiled, args, runs: int, top: int) -> dict:
    import jax
    from jax.profiler import ProfileData

    d = tempfile.mkdtemp(prefix="lartpc_profile_")
    jax.block_until_ready(compiled(*args))
    t = time.perf_counter()
    with jax.profiler.trace(d):
        for _ in range(runs):
            jax.block_until_ready(compiled(*args))
    wall = (time.perf_counter() - t) / runs
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    pd = ProfileData.from_file(files[0])
    per_op = defaultdict(float)
    count = defaultdict(int)
    for plane in pd.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for e in line.events:
                n = e.name
                # ThunkExecutor::* events enclose the op events (nested): leaves only
                if n.startswith(("end: ", "ThreadpoolListener", "ThunkExecutor")):
                    continue
                per_op[n] += e.duration_ns * 1e-6
                count[n] += 1
    total = sum(per_op.values())
    hlo = _hlo_index(compiled.as_text())
    rows = []
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        base = name.split(":")[0]
        rows.append({"op": name, "cpu_ms_per_call": ms / runs, "share": ms / total,
                     "calls_per_run": count[name] / runs, **hlo.get(base, {})})
    # group by the JAX primitive path (op_name metadata: transformations and primitive)
    by_src = defaultdict(float)
    for name, ms in per_op.items():
        src = hlo.get(name.split(":")[0], {}).get("jax_op") or "unknown"
        by_src[src] += ms
    return {
        "wall_ms_per_call_traced": 1e3 * wall,
        "cpu_ms_per_call_in_ops": total / runs,
        "n_distinct_ops": len(per_op),
        "top_ops": rows,
        "by_jax_op": [{"jax_op": s, "share": ms / total, "cpu_ms_per_call": ms / runs}
                           for s, ms in sorted(by_src.items(), key=lambda kv: -kv[1])[:top]],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=float, default=100.0, help="cm of muon track")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--trace-runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    from cases import _likelihood_fields, _problem

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.charge import expected_charge
    from lartpc_bayes.infer import potential_and_transforms
    from lartpc_bayes.likelihood import log_likelihood
    from lartpc_bayes.likelihood.readout_prob import readout_tensors

    load_start = list(os.getloadavg())
    card = load_card("module0")
    segs = C.muon_batch(args.length)
    problem, hits = _problem(card, segs)
    plan, el, cfg = problem.plan, card.electronics, problem.likelihood
    dev = plan.device
    dedx = plan.pad_dEdx(jnp.asarray(segs.dEdx, jnp.float32))
    params = DetectorParams(*(jnp.asarray(v, jnp.float32) for v in card.nominal().values()))
    table = jnp.asarray(problem.table)

    charge_f = jax.jit(lambda d, p: expected_charge(dev, d, p, card))
    charges = jax.block_until_ready(charge_f(dedx, params))

    def charge_scalar(d, p):
        return sum(jnp.sum(Q * 1e-3) for Q, _ in expected_charge(dev, d, p, card))

    def ll(ch):
        return log_likelihood(ch, plan.buckets, table, problem.n_outside, el, cfg)

    def ll_grad_q(ch):
        qs = tuple(Q for Q, _ in ch)
        origins = tuple(o for _, o in ch)
        return jax.value_and_grad(
            lambda q: ll(tuple(zip(q, origins, strict=True))))(qs)

    stages = {}
    stages["charge_forward"] = _median_time(lambda: charge_f(dedx, params), args.repeats)
    cg = jax.jit(jax.value_and_grad(charge_scalar, argnums=(0, 1)))
    stages["charge_forward_and_vjp"] = _median_time(lambda: cg(dedx, params), args.repeats)
    for i, (Q, _) in enumerate(charges):
        rt = jax.jit(lambda q: readout_tensors(q, el, cfg.n_nodes, cfg.max_lag))
        stages[f"readout_tensors_bucket{i}_C{Q.shape[0]}_W{Q.shape[1]}"] = _median_time(
            lambda q=Q, rt=rt: rt(q), args.repeats)
    llj = jax.jit(ll)
    stages["loglik_forward_given_charge"] = _median_time(lambda: llj(charges), args.repeats)
    llg = jax.jit(ll_grad_q)
    stages["loglik_value_and_grad_wrt_charge"] = _median_time(lambda: llg(charges),
                                                               args.repeats)
    potential_fn, _, z = potential_and_transforms(problem)
    t = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(potential_fn)).lower(z).compile()
    compile_s = time.perf_counter() - t
    stages["potential_value_and_grad"] = _median_time(lambda: compiled(z), args.repeats)
    prof = op_profile(compiled, (z,), args.trace_runs, args.top)
    result = {
        "benchmark": "profile_likelihood",
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "length_cm": args.length,
        "problem": _likelihood_fields(problem, hits),
        "compile_s_potential_value_and_grad": compile_s,
        "stages": stages,
        "op_profile": prof,
        "machine": {**C.machine_info(), "load_average_start": load_start,
                    "load_average_end": list(os.getloadavg())},
        "versions": C.versions(),
        "git": C.git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in stages.items():
        print(f"{k:48s} {v['median_ms']:9.2f} ms (IQR {v['iqr_ms']:.2f})", file=sys.stderr)
    for r in prof["top_ops"][:15]:
        print(f"{100 * r['share']:5.1f} %  {r['cpu_ms_per_call']:8.2f} ms  {r['op'][:40]:40s} "
              f"{r.get('shape', '')[:40]:40s} {r.get('jax_op')}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
