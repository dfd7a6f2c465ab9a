"""``lartpc-bayes validate {run,collect,report}`` (also ``python -m lartpc_bayes.validation.cli``).
"""

from __future__ import annotations

import time

from .campaign import DEFAULT_ROOT, PRESETS, campaign_dir, run_campaign, with_replicas
from .records import collect
from .report import make_report


def main(argv: list[str] | None = None) -> int:
    """``python -m lartpc_bayes.validation.cli {run,collect,report} ...`` (also ``lartpc-bayes
    validate``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="lartpc-bayes validate", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run_cli(ap.parse_args(argv))


def add_arguments(ap) -> None:
    """Arguments of the ``validate`` command (shared with :mod:`lartpc_bayes.cli`)."""
    sub = ap.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run (or resume) campaigns and collect their tables")
    r.add_argument("names", nargs="+", help=f"campaigns: {', '.join(PRESETS)} or 'all'")
    r.add_argument("--replicas", type=int, default=None, help="override the replica count")
    r.add_argument("--workers", type=int, default=1, help="spawned worker processes")
    r.add_argument("--root", default=str(DEFAULT_ROOT), help="campaign data directory")
    r.add_argument("--executor", choices=("local", "dask", "ray"), default="local",
                   help="local: spawned processes (--workers); dask: a distributed.Client "
                        "(--scheduler ADDRESS, else a LocalCluster of --workers processes); "
                        "ray: ray.init(address=--scheduler) with ray.util's Dask-style pool")
    r.add_argument("--scheduler", default=None,
                   help="address of an existing Dask scheduler (tcp://host:8786) or Ray head")
    c = sub.add_parser("collect", help="gather replica files into results.csv/results.nc")
    c.add_argument("names", nargs="+")
    c.add_argument("--root", default=str(DEFAULT_ROOT))
    p = sub.add_parser("report", help="tables and figures of docs/validation.md from the data")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--figures", default="docs/figures/validation")
    p.add_argument("--doc", default="docs/validation.md",
                   help="markdown file whose validation-tables block is regenerated")


def run_cli(args) -> int:
    """Execute parsed ``validate`` arguments."""
    if args.action in ("run", "collect"):
        names = list(PRESETS) if args.names == ["all"] else args.names
        for n in names:
            if n not in PRESETS:
                raise SystemExit(f"unknown campaign {n!r}; known: {', '.join(PRESETS)}")
            cfg = PRESETS[n]
            if args.action == "run":
                if args.replicas is not None:
                    cfg = with_replicas(cfg, args.replicas)
                t0 = time.perf_counter()
                with _executor(getattr(args, "executor", "local"), args.workers,
                               getattr(args, "scheduler", None)) as ex:
                    run_campaign(cfg, campaign_dir(cfg, args.root), workers=args.workers,
                                 executor=ex)
                print(f"{n}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            df = collect(campaign_dir(cfg, args.root))
            print(f"{n}: {df['replica'].nunique() if len(df) else 0} replicas collected")
        return 0
    print(make_report(args.root, args.figures, args.doc))
    return 0


class _executor:
    """Context manager giving the campaign's executor: None (local), a Dask ``Client`` or a Ray
    pool with ``submit``. Replicas are files, so a killed worker loses only its running replica:
    Dask reschedules it (``distributed.scheduler.allowed-failures``), and a rerun of the same
    command runs only the replicas without a file."""

    def __init__(self, kind: str, workers: int, address: str | None) -> None:
        self.kind, self.workers, self.address = kind, max(1, int(workers)), address
        self._close: list = []

    def __enter__(self):
        if self.kind == "local":
            return None
        if self.kind == "dask":
            try:
                from distributed import Client, LocalCluster
            except ImportError as e:
                raise SystemExit("--executor dask needs dask[distributed] installed") from e
            if self.address:
                client = Client(self.address)
            else:
                cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                       processes=True)
                self._close.append(cluster)
                client = Client(cluster)
            self._close.insert(0, client)
            return client
        try:
            import ray
            from ray.util.multiprocessing import Pool
        except ImportError as e:
            raise SystemExit("--executor ray needs ray installed (pip install ray)") from e
        ray.init(address=self.address)
        pool = Pool(self.workers)
        self._close.append(pool)

        class _Submit:  # ray.util.multiprocessing.Pool -> submit(fn, *args).result()
            def submit(self, fn, *args):
                r = pool.apply_async(fn, args)
                r.result = r.get
                return r

        return _Submit()

    def __exit__(self, *exc) -> None:
        for c in self._close:
            c.close()


if __name__ == "__main__":
    raise SystemExit(main())
