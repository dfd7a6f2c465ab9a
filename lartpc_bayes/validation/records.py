"""Campaign records: atomic JSON writes of one replica, the tidy table of all replicas (one row per
replica and parameter), its CSV/netCDF, and the software versions stamped on every table.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def load_records(outdir: str | Path) -> list[dict[str, Any]]:
    """All replica records of a campaign directory, by index."""
    files = sorted(Path(outdir).glob("replica_*.json"))
    return [json.loads(f.read_text()) for f in files]


def tidy_table(records: list[dict[str, Any]]):
    """One row per (replica, parameter): truth, posterior summary, rank, PIT, pull, coverage,
    timings and convergence (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in records:
        base = {
            "campaign": r["campaign"],
            "replica": r["index"],
            "ok": r["ok"],
            "converged": r["converged"],
            "iterations": r["iterations"],
            "grad_norm": r["grad_norm"],
            "newton_decrement": r.get("newton_decrement", float("nan")),
            "pareto_k": r.get("pareto_k", float("nan")),
            "is_ess": r.get("is_ess", float("nan")),
            "divergences": r.get("divergences", 0),
            "n_hits": r["n_hits"],
            "n_outside": r.get("n_outside", 0),
            **{k: v for k, v in r["timings"].items()},
        }
        if not r["ok"]:
            rows.append({**base, "param": "", "error": r["error"]})
            continue
        for name, s in r["params"].items():
            rows.append({**base, "param": name, **s, "error": ""})
    return pd.DataFrame(rows)


def to_dataset(df):
    """The tidy table as an xarray Dataset on (replica, param) for netCDF."""
    d = df[df["param"] != ""].set_index(["replica", "param"])
    return d.to_xarray()


def collect(outdir: str | Path, *, write: bool = True):
    """Gather a campaign's replica files into the tidy table; write ``results.csv`` and
    ``results.nc`` beside them when ``write``. Returns the DataFrame."""
    outdir = Path(outdir)
    df = tidy_table(load_records(outdir))
    if write and len(df):
        df.to_csv(outdir / "results.csv", index=False)
        try:
            ds = to_dataset(df)
            cfg = json.loads((outdir / "config.json").read_text())
            ds.attrs["config"] = json.dumps(cfg["config"])
            ds.attrs["versions"] = json.dumps(cfg.get("versions", {}))
            for v in ds.data_vars:
                if ds[v].dtype == object:
                    ds[v] = ds[v].astype(str)
            ds.to_netcdf(outdir / "results.nc", engine="h5netcdf")
        except Exception as exc:  # the CSV is the primary record
            print(f"netCDF not written: {exc}")
    return df


def versions() -> dict[str, str]:
    """Versions of the packages and the platform a campaign ran with."""
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        here = Path(__file__).resolve().parent
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True, text=True,
        ).stdout.split("\n")
        out["git_dirty_package_files"] = " ".join(x[3:] for x in dirty if x.strip())
    except OSError:
        pass
    for pkg in ("lartpc_bayes", "jax", "jaxlib", "numpyro", "optax", "numpy", "arviz-base",
                "arviz-stats", "arviz-plots", "simuk", "xarray", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
