r"""Memory and start-up time of one MAP + Laplace fit of ~200 cm of cosmic muons (issue 16 item 3).

    .venv/bin/python benchmarks/fit_memory.py        # -> benchmarks/results/fit_memory.json
    .venv/bin/python benchmarks/fit_memory.py --length-cm 50 --out /tmp/f.json
    .venv/bin/python benchmarks/fit_memory.py --variants fit   # only the end-to-end fit

Targets (issue 16): peak RSS <= 4 GB and set-up + compile <= 60 s on 2 cores for the fit that
``lartpc-bayes fit --method laplace`` runs on 200 cm of track (the peer's ``input_0.h5``: 199.6 cm,
47 latents, which took 21.6 GB and 148 s of gradient compilation before the chunked Hessian).
The fit's set-up is what ``fit`` does on a hit file (imports, ``build_problem``, the fitter:
``fit_setup_s``); the generation and simulation of the fake data are recorded beside it
(``setup_s`` includes them) but are not part of a user's fit.

Data: cosmic muons from the embedded generator on the ``module0`` card (default selection cuts,
0.4 cm segments, whole tracks until the total length reaches ``--length-cm``), simulated at the
card's nominal parameters with every noise term; latents every 5 cm (``calibrate_file``'s default).

Every variant runs in a fresh Python process (its peak RSS is its own; the persistent compilation
cache is switched off with ``LARTPC_BAYES_CACHE_DIR=off`` so that compile times are real):

* ``fit`` -- the end-to-end fit as the package runs it: set-up (imports, generator, simulation,
  ``build_problem``, ``LaplaceFitter`` construction), then ``LaplaceFitter.fit`` twice on the same
  table: the first call includes every compilation, the second is the same work compiled, so
  ``compile_s = fit1_s - fit2_s``. Peak RSS (``getrusage`` ``ru_maxrss``, monotone) is read after
  every phase, so the phase that sets the peak is the first one whose value reaches it.
* ``pieces`` -- where the memory goes, without running anything big: each jitted piece of the fit
  (value and gradient, the chunked Hessian at several chunk sizes, the dense ``jax.hessian`` that
  the fitter used before, the batched potential of the E scan, the L-BFGS loop) is lowered and
  compiled ahead of time; XLA's ``memory_analysis`` gives its temporary buffers (the working set
  of the executable beyond arguments and outputs), and its compile time is recorded.

The parent polls each child's resident memory and kills it above ``--max-rss-gb`` (recorded as
``status: "oom"``), so the benchmark cannot take the shared machine down. The JSON is written
atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

T_PROCESS = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SCHEMA = "lartpc_bayes.benchmarks.fit_memory/1"
DEFAULT_OUT = C.RESULTS / "fit_memory.json"
#: latent dE/dx length of ``calibrate_file`` / ``lartpc-bayes fit`` (cm)
LATENT_LENGTH_CM = 5.0
#: issue 16 targets
TARGET_RSS_GB = 4.0
TARGET_SETUP_COMPILE_S = 60.0
VARIANTS = ("fit", "pieces")
#: Hessian chunk sizes compiled by the ``pieces`` variant (1 is LaplaceFitter's default)
CHUNKS = (1, 4, 16, 64)

__all__ = ["main", "muon_sample", "run_child", "spawn_child"]


# -- child side --------------------------------------------------------------------------------


def _peak_mb() -> float:
    """Peak resident set of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _progress(phase: str) -> None:
    """One line per phase on stderr (the parent passes it through): wall, CPU, peak RSS."""
    print(f"  [{phase}] wall {time.perf_counter() - T_PROCESS:.0f} s, cpu {_cpu_s():.0f} s, "
          f"peak {_peak_mb():.0f} MiB", file=sys.stderr, flush=True)


def muon_sample(length_cm: float, seed: int = 0, detector: str = "module0"):
    """Whole generated cosmic muons (default cuts) until their total length reaches
    ``length_cm``; simulated at the card's nominal parameters. Returns (card, segments, hits,
    summary, timings)."""
    import jax

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.generator import generate_length
    from lartpc_bayes.forward.simulate import simulate_hits

    t0 = time.perf_counter()
    card = load_card(detector)
    segs = generate_length(card, "muons", length_cm, seed, n0=4)
    t1 = time.perf_counter()
    hits, summ = simulate_hits(jax.random.key(seed), card, segs,
                               DetectorParams.from_dict(card.nominal()))
    t2 = time.perf_counter()
    return card, segs, hits, summ, {"generate_s": t1 - t0, "simulate_s": t2 - t1}


def _problem(length_cm: float, seed: int):
    import numpy as np

    from lartpc_bayes.model import build_problem

    card, segs, hits, summ, tm = muon_sample(length_cm, seed)
    t0 = time.perf_counter()
    problem = build_problem(card, segs, hits, latent_length_cm=LATENT_LENGTH_CM)
    tm["build_problem_s"] = time.perf_counter() - t0
    info = {
        "n_tracks": int(np.unique(segs.event_id.astype(np.int64) * 100000 + segs.track_id).size),
        "n_segments": int(segs.dx.size), "length_cm": float(np.sum(segs.dx)),
        "n_hits": int(summ.n_hits), "n_channels_hit": int(summ.n_channels),
        "n_latent": int(problem.n_latent), "free": list(problem.free),
        "table_shape": list(np.shape(problem.table)),
        "n_stopping": int(problem.stopping.n) if problem.stopping is not None else 0,
    }
    return problem, info, tm


def child_fit(length_cm: float, seed: int) -> dict:
    """The ``fit`` variant (module docstring)."""
    t_imp = time.perf_counter()
    import jax
    import numpy as np

    from lartpc_bayes.infer import LaplaceFitter
    from lartpc_bayes.infer.laplace import HESSIAN_CHUNK

    rec: dict = {"import_s": time.perf_counter() - t_imp + (t_imp - T_PROCESS)}
    peaks = {"after_import_mb": _peak_mb()}
    problem, info, tm = _problem(length_cm, seed)
    rec.update(tm)
    rec["problem"] = info
    peaks["after_problem_mb"] = _peak_mb()
    rec["problem_cpu_s"] = _cpu_s()
    _progress(f"problem {info}")
    t0 = time.perf_counter()
    fitter = LaplaceFitter(problem)
    rec["fitter_init_s"] = time.perf_counter() - t0
    rec["dim"] = fitter.dim
    rec["hessian_chunk"] = HESSIAN_CHUNK
    peaks["after_fitter_init_mb"] = _peak_mb()
    rec["setup_cpu_s"] = _cpu_s()
    _progress("fitter init")
    rec["setup_s"] = (rec["import_s"] + tm["generate_s"] + tm["simulate_s"]
                      + tm["build_problem_s"] + rec["fitter_init_s"])
    c0 = _cpu_s()
    t0 = time.perf_counter()
    f1 = fitter.fit(problem.table, seed=seed, num_draws=1000)
    rec["fit1_s"] = time.perf_counter() - t0
    rec["fit1_cpu_s"] = _cpu_s() - c0
    peaks["after_fit1_mb"] = _peak_mb()
    _progress("fit 1 (compile + run)")
    t0 = time.perf_counter()
    f2 = fitter.fit(problem.table, seed=seed, num_draws=1000)
    rec["fit2_s"] = time.perf_counter() - t0
    rec["fit2_cpu_s"] = _cpu_s() - c0 - rec["fit1_cpu_s"]
    peaks["after_fit2_mb"] = _peak_mb()
    rec["compile_s"] = rec["fit1_s"] - rec["fit2_s"]
    rec["setup_plus_compile_s"] = rec["setup_s"] + rec["compile_s"]
    # what ``lartpc-bayes fit --method laplace HITS`` does before its first L-BFGS step on a file
    # of hits: imports, build_problem and the fitter (reading the file: milliseconds); the fake
    # data's generation and simulation above are not part of a user's fit
    rec["fit_setup_s"] = rec["import_s"] + tm["build_problem_s"] + rec["fitter_init_s"]
    rec["fit_setup_plus_compile_s"] = rec["fit_setup_s"] + rec["compile_s"]
    # CPU seconds (this process, all threads): on a shared machine the load inflates the wall
    # times above; CPU time is what the fit costs (on 2 idle cores wall >= cpu / 2)
    rec["compile_cpu_s"] = rec["fit1_cpu_s"] - rec["fit2_cpu_s"]
    rec["setup_plus_compile_cpu_s"] = rec["setup_cpu_s"] + rec["compile_cpu_s"]
    rec["map_s"], rec["hessian_s"] = f2["map_s"], f2["hessian_s"]
    rec["fit1_map_s"], rec["fit1_hessian_s"] = f1["map_s"], f1["hessian_s"]
    rec["ok"] = bool(f1["ok"] and f2["ok"])
    rec["error"] = f1.get("error") or f2.get("error")
    rec["iterations"], rec["newton_steps"] = int(f1["iterations"]), int(f1["newton_steps"])
    if f1["ok"]:
        m = f1["map"]
        sd = {p: float(np.std(f1["draws"][p])) for p in problem.free}
        rec["map"] = {p: float(m[p]) for p in problem.free}
        rec["laplace_sd"] = sd
        rec["truth"] = {p: float(problem.card.nominal()[p]) for p in problem.free}
        rec["pull"] = {p: (rec["map"][p] - rec["truth"][p]) / sd[p] for p in problem.free}
    rec["peak_rss_mb"] = _peak_mb()
    rec["peaks_mb"] = peaks
    rec["cpu_s"] = _cpu_s()
    rec["wall_s"] = time.perf_counter() - T_PROCESS
    rec["jax_version"] = jax.__version__
    return rec


def child_pieces(length_cm: float, seed: int) -> dict:
    """The ``pieces`` variant (module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lartpc_bayes.infer import LaplaceFitter
    from lartpc_bayes.infer.laplace import _chunked_hessian

    problem, info, _ = _problem(length_cm, seed)
    fitter = LaplaceFitter(problem)
    x = fitter.x0
    tb = jnp.asarray(problem.table, jnp.int32)
    U = fitter._U
    rec: dict = {"problem": info, "dim": fitter.dim, "pieces": {}}
    xs = jnp.tile(x, (fitter.n_grid, 1))
    cases = {
        "value": (jax.jit(U), (x, tb)),
        "value_and_grad": (jax.jit(jax.value_and_grad(U)), (x, tb)),
        "E_scan_batch": (fitter._U_batch, (xs, tb)),
        "lbfgs_loop": (fitter._minimise, (x, tb)),
        "hessian_dense_jax": (jax.jit(jax.hessian(U)), (x, tb)),
    }
    for c in CHUNKS:
        cases[f"hessian_chunk{c}"] = (jax.jit(_chunked_hessian(U, c)), (x, tb))
    for name, (fn, args) in cases.items():
        r: dict = {}
        try:
            t0 = time.perf_counter()
            lowered = fn.lower(*args)
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            r.update(lower_s=t1 - t0, compile_s=t2 - t1)
            m = compiled.memory_analysis()
            if m is not None:
                mb = 2.0**-20
                r.update(xla_temp_mb=m.temp_size_in_bytes * mb,
                         xla_argument_mb=m.argument_size_in_bytes * mb,
                         xla_output_mb=m.output_size_in_bytes * mb,
                         xla_generated_code_mb=m.generated_code_size_in_bytes * mb)
            del compiled, lowered
        except Exception as e:  # recorded, never dropped
            r["error"] = f"{type(e).__name__}: {e}"[:500]
        r["peak_rss_mb_so_far"] = _peak_mb()
        _progress(f"{name}: {r}")
        rec["pieces"][name] = r
    # one gradient tape: bytes of the residuals jax saves for the reverse pass
    try:
        _, vjp = jax.vjp(lambda v: U(v, tb), x)
        leaves = jax.tree_util.tree_leaves(vjp)
        rec["grad_residuals_mb"] = float(sum(np.asarray(a).nbytes for a in leaves
                                             if hasattr(a, "nbytes")) / 2**20)
    except Exception as e:
        rec["grad_residuals_error"] = f"{type(e).__name__}: {e}"[:300]
    rec["peak_rss_mb"] = _peak_mb()
    rec["cpu_s"] = _cpu_s()
    rec["wall_s"] = time.perf_counter() - T_PROCESS
    return rec


def run_child(variant: str, length_cm: float, seed: int) -> dict:
    """Run one variant in this process and return its record."""
    if variant == "fit":
        return child_fit(length_cm, seed)
    if variant == "pieces":
        return child_pieces(length_cm, seed)
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


# -- parent side -------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def spawn_child(cmd: list[str], max_rss_gb: float, timeout_s: float) -> dict:
    """Run ``cmd`` (a child that prints its JSON record as the last stdout line) with the
    persistent compilation cache off, polling its resident memory: killed above ``max_rss_gb``
    (status "oom") or after ``timeout_s`` ("timeout"). Returns the record with ``status``,
    ``wall_parent_s`` and ``polled_max_rss_mb``."""
    env = dict(os.environ, LARTPC_BAYES_CACHE_DIR="off", JAX_PLATFORMS=os.environ.get(
        "JAX_PLATFORMS", "cpu"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env)
    state = {"max_mb": 0.0, "killed": None}

    def watch():
        while proc.poll() is None:
            mb = _rss_mb(proc.pid)
            state["max_mb"] = max(state["max_mb"], mb)
            if mb > max_rss_gb * 1024:
                state["killed"] = f"RSS {mb:.0f} MiB above --max-rss-gb {max_rss_gb}"
                proc.kill()
            elif time.perf_counter() - t0 > timeout_s:
                state["killed"] = f"ran past --timeout {timeout_s} s"
                proc.kill()
            time.sleep(0.2)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    rec = {"wall_parent_s": time.perf_counter() - t0, "polled_max_rss_mb": state["max_mb"]}
    if state["killed"]:
        rec.update(status="oom" if "RSS" in state["killed"] else "timeout",
                   reason=state["killed"])
    elif proc.returncode != 0:
        rec.update(status="error", reason=f"exit code {proc.returncode} (traceback on stderr)")
    else:
        rec.update(status="ok", **json.loads(out.strip().splitlines()[-1]))
    return rec


def _spawn(variant: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant,
           "--length-cm", str(args.length_cm), "--seed", str(args.seed)]
    return {"variant": variant, **spawn_child(cmd, args.max_rss_gb, args.timeout)}


def _write_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=float)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length-cm", type=float, default=200.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--max-rss-gb", type=float, default=8.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.length_cm > 0:
        ap.error(f"--length-cm must be > 0, got {args.length_cm}")
    if args.child:
        print(json.dumps(run_child(args.child, args.length_cm, args.seed), default=float))
        return 0
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results = {}
    for v in args.variants:
        print(f"fit_memory: {v} ({args.length_cm:g} cm) ...", file=sys.stderr, flush=True)
        results[v] = _spawn(v, args)
        r = results[v]
        print(f"  {r['status']}: peak {r.get('peak_rss_mb', r['polled_max_rss_mb']):.0f} MiB, "
              f"wall {r['wall_parent_s']:.0f} s", file=sys.stderr, flush=True)
    fit = results.get("fit", {})
    targets = {}
    if fit.get("status") == "ok":
        targets = {
            "peak_rss_gb": fit["peak_rss_mb"] / 1024, "peak_rss_target_gb": TARGET_RSS_GB,
            "peak_rss_met": fit["peak_rss_mb"] / 1024 <= TARGET_RSS_GB,
            "setup_plus_compile_s": fit["setup_plus_compile_s"],
            "fit_setup_plus_compile_s": fit.get("fit_setup_plus_compile_s"),
            "setup_plus_compile_target_s": TARGET_SETUP_COMPILE_S,
            # the target is the fit's own start-up (fit_setup_plus_compile_s: no data simulation)
            "setup_plus_compile_met": (fit.get("fit_setup_plus_compile_s") or float("inf"))
            <= TARGET_SETUP_COMPILE_S,
            "setup_plus_compile_cpu_s": fit.get("setup_plus_compile_cpu_s"),
            "load_average_at_end": list(os.getloadavg()),
        }
    doc = {
        "schema": SCHEMA, "started": started, "length_cm_requested": args.length_cm,
        "seed": args.seed, "latent_length_cm": LATENT_LENGTH_CM,
        "machine": C.machine_info(with_jax=False), "git": C.git_state(), "targets": targets,
        "results": results,
    }
    _write_atomic(args.out, doc)
    print(f"written {args.out}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
