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
                run_campaign(cfg, campaign_dir(cfg, args.root), workers=args.workers)
                print(f"{n}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            df = collect(campaign_dir(cfg, args.root))
            print(f"{n}: {df['replica'].nunique() if len(df) else 0} replicas collected")
        return 0
    print(make_report(args.root, args.figures, args.doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
