"""Speed and memory benchmarks of lartpc_bayes: one command, one JSON file.

    .venv/bin/python benchmarks/run.py                 # full set -> benchmarks/results/cpu.json
    .venv/bin/python benchmarks/run.py --quick         # small cases (< 2 min), JSON to stdout
    .venv/bin/python benchmarks/run.py --out F.json    # anywhere else
    .venv/bin/python benchmarks/run.py --only loglik_grad --lengths 100 300
    .venv/bin/python benchmarks/plot_scaling.py        # -> docs/figures/performance_scaling.png

Every case of the full set runs in a fresh Python process (``cases.py``), so its peak
memory is its own: the kernel's peak-RSS counter of the child is reset after the untimed setup
(imports, track, simulated hits, plan) and read after compilation and the timed runs. The parent
watches each child: a case that passes ``--max-rss-gb`` (or leaves less than ``--min-free-gb`` of
the machine's memory) or ``--timeout`` is killed and recorded with ``status`` "oom" or "timeout"
and the reason, never dropped. The JSON schema is documented in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCHEMA = "lartpc_bayes.benchmarks/1"
DEFAULT_OUT = C.RESULTS / "cpu.json"
LENGTHS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def full_cases() -> list[dict]:
    cases = []
    for kind in ("charge", "loglik_grad"):
        for length in LENGTHS:
            cases.append({"kind": kind, "track": "muons", "length_cm": length})
        cases.append({"kind": kind, "track": "protons", "length_cm": 100.0})
    cases += [
        {"kind": "svi_step", "track": "muons", "length_cm": 100.0},
        {"kind": "nuts_grad", "track": "muons", "length_cm": 100.0},
        {"kind": "svi_step", "track": "protons", "length_cm": 100.0},
        {"kind": "nuts_grad", "track": "protons", "length_cm": 100.0},
        {"kind": "simulate", "track": "muons", "length_cm": 100.0},
        {"kind": "simulate", "track": "muons", "length_cm": 1000.0},
        {"kind": "simulate", "track": "protons", "length_cm": 100.0},
    ]
    for c in cases:
        c.update(repeats=20, budget_s=40.0)
    return cases


def quick_cases() -> list[dict]:
    cases = [
        {"kind": "charge", "track": "muons", "length_cm": 10.0},
        {"kind": "loglik_grad", "track": "muons", "length_cm": 10.0},
        {"kind": "nuts_grad", "track": "muons", "length_cm": 10.0, "max_tree_depth": 2},
        {"kind": "svi_step", "track": "muons", "length_cm": 10.0},
        {"kind": "simulate", "track": "protons", "length_cm": 10.0},
    ]
    for c in cases:
        c.update(repeats=3, budget_s=2.0)
    return cases


def case_name(c: dict) -> str:
    return f"{c['kind']}/{c['track']}/{c['length_cm']:g}cm"


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (the case runs in one process)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def _available_mb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.inf


def run_child(cases: list[dict], timeout_s: float, max_rss_mb: float,
              min_free_mb: float) -> list[dict]:
    """Run cases in one fresh interpreter (one case per process in the full set); watch its
    memory and time. A killed or failed process marks all of its cases."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cases.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cases),
               "--child-out", str(out)]
        load_start = list(os.getloadavg())
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        killed = {}
        max_seen = 0.0
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True)
        reader.start()
        while proc.poll() is None:
            rss = _rss_mb(proc.pid)
            max_seen = max(max_seen, rss)
            elapsed = time.perf_counter() - t0
            if rss > max_rss_mb:
                killed = {"status": "oom", "reason": f"resident memory {rss / 1024:.1f} GB passed "
                          f"the limit of {max_rss_mb / 1024:.1f} GB after {elapsed:.0f} s"}
            elif _available_mb() < min_free_mb:
                killed = {"status": "oom", "reason": f"machine memory available fell below "
                          f"{min_free_mb / 1024:.1f} GB (case at {rss / 1024:.1f} GB resident "
                          f"after {elapsed:.0f} s)"}
            elif elapsed > timeout_s:
                killed = {"status": "timeout", "reason": f"no result after {timeout_s:.0f} s "
                          f"(resident memory {rss / 1024:.1f} GB)"}
            if killed:
                proc.kill()
                break
            time.sleep(0.2)
        proc.wait()
        reader.join(timeout=5)
        wall = time.perf_counter() - t0
        base = {"wall_s": wall, "load_average_parent_start": load_start,
                "load_average_parent_end": list(os.getloadavg()), "max_rss_seen_mb": max_seen,
                "shared_process": len(cases) > 1}
        done = json.loads(out.read_text()) if out.exists() else []
        res = []
        for i, case in enumerate(cases):
            if i < len(done):
                res.append({**done[i], "name": case_name(case), **base})
            elif killed:
                res.append({**case, "name": case_name(case), **base, **killed})
            else:
                res.append({**case, "name": case_name(case), **base, "status": "failed",
                            "reason": f"exit code {proc.returncode}",
                            "log_tail": "".join(log)[-2000:]})
        return res


def _fit(xs, ys) -> dict | None:
    """Least-squares slope and intercept of log y against log x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx
    return {"exponent": b, "prefactor_at_1cm": math.exp(my - b * mx),
            "lengths_cm": [round(math.exp(p[0]), 3) for p in pts]}


def _linear(xs, ys) -> dict | None:
    """Least-squares y = a + b x (memory: a fixed overhead plus b per cm)."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"intercept": my - b * mx, "slope_per_cm": b}


def scaling(cases: list[dict]) -> dict:
    """Power laws time ~ L^a and memory ~ L^b of the muon charge and likelihood cases.

    Time: median steady-state seconds. Memory: the peak RSS of the case (linear fit: fixed
    overhead + MB per cm), and the working set XLA allocates for the compiled function
    (temporaries + arguments + outputs, ``compiled.memory_analysis()``), which has no fixed
    process overhead and so shows the exponent directly.
    """
    out = {}
    for kind in ("charge", "loglik_grad"):
        ok = sorted((c for c in cases if c["kind"] == kind and c["track"] == "muons"
                     and c.get("status") == "ok"), key=lambda c: c["length_cm"])
        if not ok:
            continue
        L = [c["track_length_cm"] for c in ok]
        t = [c["timing"]["median_s"] for c in ok]
        m = [c["peak_rss_mb"] for c in ok]
        xla = [c.get("xla_temp_mb", 0.0) + c.get("xla_argument_mb", 0.0)
               + c.get("xla_output_mb", 0.0) for c in ok]
        big = [i for i, x in enumerate(L) if x >= 100.0 - 1e-6]

        def sel(v, big=big):
            return [v[i] for i in big]

        out[kind] = {
            "lengths_cm": L,
            "median_s": t,
            "peak_rss_mb": m,
            "xla_working_set_mb": xla,
            "time_fit_all": _fit(L, t),
            "time_fit_ge_100cm": _fit(sel(L), sel(t)),
            "peak_rss_linear_fit": _linear(L, m),
            "peak_rss_fit_ge_100cm": _fit(sel(L), sel(m)),
            "xla_working_set_fit_all": _fit(L, xla),
            "xla_working_set_fit_ge_100cm": _fit(sel(L), sel(xla)),
            "ms_per_cm_at_largest": 1e3 * t[-1] / L[-1],
            "largest_ok_cm": L[-1],
            "not_ok": [{"length_cm": c["length_cm"], "status": c.get("status"),
                        "reason": c.get("reason")}
                       for c in cases if c["kind"] == kind and c["track"] == "muons"
                       and c.get("status") != "ok"],
        }
    return out


def summary_line(c: dict) -> str:
    if c.get("status") != "ok":
        return f"{c['name']:32s} {c.get('status')}: {c.get('reason')}"
    t = c["timing"]
    extra = f", {c['cm_per_s']:.0f} cm/s" if "cm_per_s" in c else ""
    if "cpu_median_s" in t:
        extra += f", CPU {1e3 * t['cpu_median_s']:.1f} ms"
    return (f"{c['name']:32s} compile {c.get('compile_s', float('nan')):6.1f} s, median "
            f"{1e3 * t['median_s']:9.1f} ms (IQR {1e3 * t['iqr_s']:.1f}, n {t['n_runs']}), "
            f"peak RSS {c['peak_rss_mb']:7.0f} MB{extra}, load "
            f"{c['load_average_start'][0]:.1f}")


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small cases only (< 2 min); JSON to stdout unless --out")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    ap.add_argument("--only", nargs="*", default=None,
                    help="kinds to run (charge loglik_grad svi_step nuts_grad simulate)")
    ap.add_argument("--lengths", nargs="*", type=float, default=None,
                    help="keep only cases of these lengths (cm)")
    ap.add_argument("--track", choices=("muons", "protons"), default=None)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="memory limit per case")
    ap.add_argument("--min-free-gb", type=float, default=1.0,
                    help="kill a case when the machine's available memory falls below this")
    ap.add_argument("--merge", action="store_true",
                    help="replace matching cases in the existing output file, keep the others")
    ap.add_argument("--fail-on-error", action="store_true",
                    help="exit with status 1 if any case did not finish (CI)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # inside the fresh process of one case
        from cases import run_case

        done = []
        for case in json.loads(args.child):  # written after every case: a kill keeps the others
            done.append(run_case(case))
            args.child_out.write_text(json.dumps(done))
        return None

    cases = quick_cases() if args.quick else full_cases()
    if args.only:
        cases = [c for c in cases if c["kind"] in args.only]
    if args.lengths:
        cases = [c for c in cases if any(abs(c["length_cm"] - x) < 1e-6 for x in args.lengths)]
    if args.track:
        cases = [c for c in cases if c["track"] == args.track]
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())
    git_start = C.git_state()
    # the full set runs every case in its own process (per-case peak memory); --quick runs its
    # small cases in one process (one interpreter start and shared compilations: < 2 min)
    groups = [cases] if args.quick else [[c] for c in cases]
    results = []
    for group in groups:
        for c in run_child(group, args.timeout * len(group), args.max_rss_gb * 1024,
                           args.min_free_gb * 1024):
            print(summary_line(c), file=sys.stderr, flush=True)
            results.append(c)

    out_path = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    command = " ".join([Path(sys.executable).name, "benchmarks/run.py",
                        *(argv if argv is not None else sys.argv[1:])])
    this_run = {"command": command,
                "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "git": git_start, "cases": [c["name"] for c in results]}
    runs = [this_run]
    if args.merge and out_path is not None and out_path.exists():
        old = json.loads(out_path.read_text())
        runs = old.get("runs") or [{k: old.get(k) for k in ("command", "timestamp_utc", "git")}
                                   | {"cases": [c["name"] for c in old["cases"]]}]
        runs = [*runs, this_run]
        new_names = {c["name"] for c in results}
        results = [c for c in old["cases"] if c["name"] not in new_names] + results
        order = {case_name(c): i for i, c in enumerate(full_cases())}
        results.sort(key=lambda c: order.get(c["name"], len(order)))
    # the machine block of this run's first finished case (merged older cases have none)
    machine = next((c["machine"] for c in results if c.get("status") == "ok" and "machine" in c),
                   None)
    machine = {**(machine or C.machine_info(with_jax=False)),
               "load_average_start": load_start, "load_average_end": list(os.getloadavg())}
    result = {
        "schema": SCHEMA,
        "benchmark": "suite",
        "timestamp_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "command": command,
        "runs": runs,
        "total_wall_s": time.perf_counter() - t0,
        "git": {**git_start, "package_sources_sha1_end": C.package_sources_sha1(),
                "cases_share_sources": len({c.get("package_sources_sha1") for c in results
                                            if c.get("status") == "ok"}) <= 1},
        "versions": C.versions(),
        "machine": machine,
        "limits": {"timeout_s": args.timeout, "max_rss_gb": args.max_rss_gb,
                   "min_free_gb": args.min_free_gb},
        "cases": results,
        "scaling": scaling(results),
    }
    for c in result["cases"]:
        c.pop("machine", None)  # one machine block at the top
    text = json.dumps(result, indent=1)
    if out_path is None:
        print(text)
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_suffix(".json.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out_path)
        print(f"wrote {out_path}", file=sys.stderr)
    bad = [c["name"] for c in results if c.get("status") != "ok"]
    if bad and args.fail_on_error:
        print(f"cases that did not finish: {bad}", file=sys.stderr)
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
