"""Command line: ``lartpc-bayes {simulate, fit, check, demo, calo}``.

``lartpc-bayes simulate --detector module0 --sample muons --n-tracks 50 --seed 1 -o hits.h5``
generates tracks with the embedded generator (or reads ``--segments FILE``, a larnd-sim segments
file), runs the forward chain with the stochastic LArPix readout at the nominal parameters (or
``--param tau=1500`` overrides) and writes a hit file with the full truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .detector import PARAM_NAMES, CardError


def _parse_param(text: str) -> tuple[str, float]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    name = name.strip()
    if name not in PARAM_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}"
        )
    try:
        return name, float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--param {name}: {value!r} is not a number") from exc


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    import jax
    import numpy as np

    from .detector import load_card
    from .detector.physics import nominal_params
    from .forward.generator import generate
    from .forward.simulate import simulate_hits
    from .io import read_segments, write_hits

    card = load_card(args.detector)
    overrides = dict(args.param or [])
    for name, value in overrides.items():
        spec = card.param(name)
        if not spec.low <= value <= spec.high:
            print(
                f"warning: {name}={value} outside the prior range [{spec.low}, {spec.high}] "
                f"of card {card.name}",
                file=sys.stderr,
            )
    params = nominal_params(card, **overrides)
    t_start = time.perf_counter()
    if args.segments:
        segments = read_segments(args.segments)
    else:
        segments = generate(
            card,
            args.sample,
            args.n_tracks,
            args.seed,
            multiple_scattering=args.multiple_scattering,
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    hits, s = simulate_hits(
        key,
        card,
        segments,
        params,
        noise=not args.no_noise,
        step_cm=args.step_cm,
        batch_length_cm=args.batch_length,
        progress=not args.quiet,
    )
    truth = {} if getattr(args, "no_truth", False) else {  # --no-truth: as a detector writes
        "segments": segments, "true_dEdx": segments.dEdx, "true_params": params.to_dict(),
        "seed": args.seed}
    if getattr(args, "packets", None):
        from .io import write_packets

        write_packets(args.packets, hits, card)
    write_hits(
        args.output,
        hits,
        card=card,
        **truth,
        extra_attrs={
            "sample": args.sample if not args.segments else str(args.segments),
            "noise": int(not args.no_noise),
        },
    )
    dt = time.perf_counter() - t_start
    adc_mean = float(np.mean(hits.adc)) if hits.n else float("nan")
    print(
        f"{s.n_tracks} tracks, {s.n_segments} segments ({s.length_cm:.1f} cm), "
        f"{s.n_channels} pixels, {s.n_hits} hits (mean ADC {adc_mean:.1f}), "
        f"charge {s.charge_e / 1e6:.3f} Me- -> {args.output} in {dt:.1f} s"
    )
    return 0


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="nuts",
        choices=["nuts", "blackjax", "svi", "laplace", "laplace-is", "lowrank"],
        help="nuts/blackjax: NUTS (reported uncertainties); laplace (MAP + Laplace), laplace-is "
        "(Laplace corrected by Pareto-smoothed importance sampling); svi (mean-field), lowrank: "
        "quick looks",
    )
    p.add_argument(
        "--fix",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="fix a parameter (at VALUE, default the truth of fake data or nominal)",
    )
    p.add_argument("--latent-length", type=float, default=5.0, help="cm of track per dE/dx latent")
    p.add_argument("--likelihood", default="ppp", choices=["ppp", "sequential"])
    p.add_argument("--eps", type=float, default=1e-8, help="per-hit likelihood floor")
    p.add_argument("--draws", type=int, default=300, help="posterior draws per chain")
    p.add_argument("--warmup", type=int, default=300, help="NUTS warm-up iterations per chain")
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--steps", type=int, default=1500, help="SVI / MAP optimisation steps")
    p.add_argument("--ppc-draws", type=int, default=100, help="posterior-predictive replicas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plots", help="directory for PNG plots (default: beside the output)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _cmd_fit(args: argparse.Namespace) -> int:
    from .calibrate import calibrate_file

    reco = {"force": args.reconstruct, "t0": _parse_t0(args.t0), "card": args.card,
            "layout": args.layout, "geometry_latents": not args.no_geometry_latents,
            "tpc_offset": args.tpc_drift_offset, "reco_output": args.reco_output}
    report = calibrate_file(
        args.hits,
        args.output,
        method=args.method,
        fix=args.fix,
        latent_length_cm=args.latent_length,
        likelihood=args.likelihood,
        eps=args.eps,
        draws=args.draws,
        warmup=args.warmup,
        chains=args.chains,
        steps=args.steps,
        ppc_draws=args.ppc_draws,
        seed=args.seed,
        plots=args.plots,
        progress=not args.quiet,
        reco=reco,
    )
    print(report)
    return 0


def _parse_t0(text: str) -> str | float:
    if text in ("file", "crossing"):
        return text
    try:
        return float(text)
    except ValueError as exc:
        raise ValueError(f"--t0 must be 'file', 'crossing' or a number (us), got {text!r}") from exc


def _reco_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--t0", default="file", help="event t0: 'file' (trigger packets / flow event "
                   "t0 / the hit file's event t = 0), 'crossing' (from anode-cathode-crossing "
                   "tracks' drift-time span) or a number in us")
    p.add_argument("--card", help="detector card for packets / flow files (default: the name "
                   "stored in the file, else module0)")
    p.add_argument("--layout", help="larnd-sim pixel layout YAML of a packets file")


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from .reco import load_data, reconstruct
    from .reco.io import write_reco

    data = load_data(args.data, args.card, layout=args.layout)
    res = reconstruct(data.hits, data.card, t0=_parse_t0(args.t0), t0_source=data.t0_source)
    write_reco(args.output, res, data.card)
    a = res.attrs
    print(f"{data.kind} {args.data}: {a['n_tracks']} tracks, {a['n_selected']} selected "
          f"({a['n_stopping']} stopping), {a['n_segments']} segments, {a['length_cm']:.1f} cm; "
          f"t0: {a['t0_source']} -> {args.output}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .results import check_file

    print(check_file(args.result, outdir=args.plots, quiet=True))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .calibrate import run_demo

    print(
        run_demo(
            outdir=args.outdir,
            n_tracks=args.n_tracks,
            seed=args.seed,
            method=args.method,
            draws=args.draws,
            warmup=args.warmup,
            chains=args.chains,
            ppc_draws=args.ppc_draws,
            progress=not args.quiet,
            detector=args.detector,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lartpc-bayes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate LArPix hits from generated or larnd-sim segments")
    s.add_argument("--detector", default="module0", help="card name in models/ or a YAML path")
    s.add_argument("--sample", default="muons", choices=["muons", "protons", "pions"])
    s.add_argument("--n-tracks", type=int, default=20)
    s.add_argument("--segments", help="larnd-sim segments HDF5 file instead of the generator")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        metavar="NAME=VALUE",
        help=f"override a calibration parameter ({', '.join(PARAM_NAMES)})",
    )
    s.add_argument("--no-noise", action="store_true", help="switch every readout noise term off")
    s.add_argument("--multiple-scattering", action="store_true")
    s.add_argument("--step-cm", type=float, default=0.04, help="sub-point step, cm")
    s.add_argument("--batch-length", type=float, default=1000.0, help="cm of track per batch")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument("--no-truth", action="store_true",
                   help="write the hit file as a detector would: no truth group")
    s.add_argument("--packets", help="also write the hits as LArPix packets (HDF5) to this path")
    s.add_argument("-o", "--output", required=True, help="output hit file (HDF5)")
    s.set_defaults(func=_cmd_simulate)

    f = sub.add_parser("fit", help="calibrate: posterior of the six parameters from a hit file")
    f.add_argument("hits", help="hit file (with or without truth), LArPix packets or "
                   "ndlar_flow hits; files without true segments are reconstructed first")
    f.add_argument("-o", "--output", required=True, help="output netCDF (ArviZ DataTree)")
    _fit_args(f)
    _reco_args(f)
    f.add_argument("--reconstruct", action="store_true",
                   help="reconstruct the tracks even when the file has true segments")
    f.add_argument("--no-geometry-latents", action="store_true",
                   help="fix the reconstructed geometry (no per-track offset latents)")
    f.add_argument("--tpc-drift-offset", action="store_true",
                   help="add a per-TPC drift offset latent (sd: card geometry.drift_offset_sd_cm)")
    f.add_argument("--reco-output", help="also write the reconstructed segments (HDF5)")
    f.set_defaults(func=_cmd_fit)

    r = sub.add_parser("reconstruct", help="hits/packets/flow -> reconstructed segments (HDF5)")
    r.add_argument("data", help="hit file, LArPix packets or ndlar_flow file")
    r.add_argument("-o", "--output", required=True, help="output HDF5")
    _reco_args(r)
    r.set_defaults(func=_cmd_reconstruct)

    c = sub.add_parser("check", help="diagnostics, posterior-predictive checks and plots")
    c.add_argument("result", help="netCDF written by 'fit' or 'demo'")
    c.add_argument("--plots", help="directory for PNG plots (default: beside the file)")
    c.set_defaults(func=_cmd_check)

    d = sub.add_parser("demo", help="end-to-end calibration on the embedded default")
    d.add_argument("--outdir", default="out/demo")
    d.add_argument("--detector", default="module0")
    d.add_argument("--n-tracks", type=int, default=2)
    d.add_argument("--seed", type=int, default=3)
    d.add_argument(
        "--method",
        default="laplace",
        choices=["laplace", "laplace-is", "nuts", "blackjax", "svi", "lowrank"],
        help="laplace (default; its sd agrees with NUTS on this problem, docs/inference.md)",
    )
    d.add_argument("--ppc-draws", type=int, default=100)
    d.add_argument("--draws", type=int, default=300)
    d.add_argument("--warmup", type=int, default=300)
    d.add_argument("--chains", type=int, default=2)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=_cmd_demo)

    from .validation.cli import add_arguments as validate_arguments
    from .validation.cli import run_cli as validate_run

    v = sub.add_parser("validate", help="validation campaigns (SBC, closure) and their report")
    validate_arguments(v)
    v.set_defaults(func=validate_run)

    try:
        from .calo.cli import register as register_calo
    except ImportError:  # pragma: no cover - the calorimeter extension is part of the package
        register_calo = None
    if register_calo is not None:
        register_calo(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # parallel MCMC chains on CPU need host devices, which must be set before JAX starts
    from .infer import enable_compilation_cache, set_host_devices

    set_host_devices()
    # compiled executables persist across runs ($LARTPC_BAYES_CACHE_DIR=off disables)
    enable_compilation_cache()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "n_tracks", 1) is not None and getattr(args, "n_tracks", 1) < 1:
        parser.error("--n-tracks must be >= 1")
    try:
        return int(args.func(args) or 0)
    except (CardError, ValueError, OSError, KeyError) as exc:
        print(f"lartpc-bayes {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
