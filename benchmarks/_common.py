"""Shared pieces of the benchmarks: machine and version block, timing, the benchmark tracks.

Tracks (Module 0, TPC 0: anode z = -30.431 cm, cathode z = -0.159 cm, x in +-31.038 cm, y in
[-83.9, 40.252] cm):

* :func:`muon_segments` — one straight muon of up to about 100 cm (75 degrees to the drift axis,
  drift distance 3.4-28.4 cm for 100 cm), 0.4 cm segments of 2.1 MeV/cm (a MIP).
* :func:`muon_batch` — ``length_cm`` of track per batch: ``ceil(length / 100)`` such muons, each its
  own readout event (events never share channels), each shifted in x and y inside the TPC so that
  the pixels differ; the total length is exactly ``length_cm``.
* :func:`proton_batch` — stopping protons from the embedded generator (published selection cuts),
  whole tracks, one event each, until the total length reaches ``length_cm``.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

START = np.array([-17.0, -60.0, -27.0])
DIRECTION = np.array([0.33, 0.90, 0.25])
SEGMENT_CM = 0.4
DEDX = 2.1  # MeV/cm, a MIP
#: longest single muon of the batches (the straight track above stays inside TPC 0 up to ~105 cm)
MUON_MAX_CM = 100.0


def muon_segments(length_cm: float, shift_cm=(0.0, 0.0, 0.0), event_id: int = 0,
                  track_id: int = 0):
    """One straight muon of ``length_cm`` from ``START + shift_cm`` along ``DIRECTION``."""
    from lartpc_bayes.data import make_segments

    u = DIRECTION / np.linalg.norm(DIRECTION)
    n = math.ceil(length_cm / SEGMENT_CM - 1e-9)
    f = np.linspace(0.0, 1.0, n + 1)[:, None]
    pts = START + np.asarray(shift_cm, float) + f * (length_cm * u)
    dx = np.linalg.norm(pts[1:] - pts[:-1], axis=1)
    return make_segments(pts[:-1], pts[1:], DEDX * dx, t0=0.0, track_id=track_id,
                         event_id=event_id)


def muon_shift(i: int) -> tuple[float, float, float]:
    """Deterministic (x, y) shift of the i-th muon of a batch (the track stays inside TPC 0)."""
    if i == 0:
        return (0.0, 0.0, 0.0)
    return (float((7 * i) % 27 - 13), float((5 * i) % 29 - 20), 0.0)


def muon_batch(length_cm: float):
    """``length_cm`` of straight muons: ceil(length/100) tracks in separate events."""
    from lartpc_bayes.data import Segments

    n = max(1, math.ceil(length_cm / MUON_MAX_CM - 1e-9))
    each = length_cm / n
    return Segments.concatenate(
        [muon_segments(each, muon_shift(i), event_id=i, track_id=i) for i in range(n)])


def proton_batch(card, length_cm: float, seed: int = 0):
    """Whole stopping-proton tracks (generator, published cuts) until ``length_cm`` is reached."""
    from lartpc_bayes.forward.generator import generate_length

    return generate_length(card, "protons", length_cm, seed)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> dict:
    """Commit of the working tree read from .git (no git process is started)."""
    g = REPO / ".git"
    try:
        if g.is_file():  # worktree: "gitdir: <path>"
            g = Path(g.read_text().split(":", 1)[1].strip())
        head = (g / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return {"commit": head, "ref": None}
        ref = head.split(":", 1)[1].strip()
        f = g / ref
        if f.exists():
            return {"commit": f.read_text().strip(), "ref": ref}
        packed = g / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return {"commit": line.split()[0], "ref": ref}
        return {"commit": None, "ref": ref}
    except (OSError, IndexError):
        return {"commit": None, "ref": None}


def package_sources_sha1() -> str:
    """SHA-1 over the package's Python sources as they are on disk now (names and contents)."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted((REPO / "lartpc_bayes").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def git_state() -> dict:
    """Commit, plus the package files that differ from it (the numbers belong to the working
    tree: a non-empty ``package_modified`` means uncommitted changes were measured)."""
    import subprocess

    state = git_commit()
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "lartpc_bayes", "models"],
                             cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
        state["package_modified"] = sorted(line[3:] for line in out.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        state["package_modified"] = None
    state["package_sources_sha1"] = package_sources_sha1()
    return state


def version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def total_memory_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def gpu_info() -> list[dict]:
    """GPUs JAX can see (empty on a CPU-only machine); JAX is imported only if already loaded."""
    import sys

    if "jax" not in sys.modules:
        return []
    import jax

    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        return []
    out = []
    for d in gpus:
        stats = d.memory_stats() or {}
        out.append({"device": str(d), "kind": d.device_kind,
                    "memory_mb": stats.get("bytes_limit", 0) / 2**20 or None})
    return out


def machine_info(with_jax: bool = True) -> dict:
    """The machine block of every benchmark JSON (the same keys in every file)."""
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else None),
        "memory_mb": total_memory_mb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "jax_platforms": os.environ.get("JAX_PLATFORMS"),
    }
    if with_jax:
        import jax

        devices = jax.devices()
        info.update({
            "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in devices],
            "device_kind": devices[0].device_kind,
            "gpus": gpu_info(),
        })
    return info


def versions() -> dict:
    return {p: version(p) for p in ("lartpc_bayes", "jax", "jaxlib", "numpyro", "numpy",
                                     "optax", "blackjax")}


def write_result(path: Path, schema: str, **payload) -> None:
    """Write a study's JSON atomically with the provenance every result file carries: schema,
    machine, package versions and git state, then ``payload``."""
    import fit_memory  # the atomic writer; imported here because it imports this module

    fit_memory._write_atomic(path, {"schema": schema, "machine": machine_info(),
                                    "versions": versions(), "git": git_state(), **payload})


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def summarize(ts: list[float], cpu: list[float] | None = None) -> dict:
    """Median and spread of wall times ``ts``; with ``cpu`` also the median CPU time of the process
    per run (user + system, all threads): on a shared machine it grows far less with the load
    than the wall time does, and wall ~ cpu / (cores used) on a quiet one."""
    n = len(ts)
    q = statistics.quantiles(ts, n=4) if n >= 2 else [ts[0]] * 3
    return {
        "n_runs": n,
        "median_s": statistics.median(ts),
        "iqr_s": q[2] - q[0],
        "q1_s": q[0],
        "q3_s": q[2],
        "min_s": min(ts),
        "max_s": max(ts),
        "mean_s": statistics.fmean(ts),
        "std_s": statistics.stdev(ts) if n >= 2 else 0.0,
        "runs_s": ts,
        **({"cpu_median_s": statistics.median(cpu), "cpu_runs_s": cpu} if cpu else {}),
    }


def timed_runs(fn, n: int, warmup: int = 2, budget_s: float | None = None,
               min_runs: int = 3) -> dict:
    """Median and spread of ``fn()`` (blocked until ready) over ``n`` runs after ``warmup``.

    With ``budget_s``, stop early once ``min_runs`` runs are done and the budget is spent (long
    cases get fewer repeats; ``n_runs`` says how many).
    """
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    ts, cpu = [], []
    t_start = time.perf_counter()
    for _ in range(n):
        c = time.process_time()
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if (budget_s is not None and len(ts) >= min_runs
                and time.perf_counter() - t_start > budget_s):
            break
    return summarize(ts, cpu)
