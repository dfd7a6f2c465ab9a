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
from typing import NoReturn

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
    from .forward.simulate import (
        OUTSIDE_WARN_FRACTION,
        account_segments,
        check_physical_params,
        explain_empty,
        simulate_hits,
    )
    from .io import read_segments, write_hits

    overrides = dict(args.param or [])
    check_physical_params(overrides)  # unphysical values are errors before any work
    _check_output_dir(args.output)
    if getattr(args, "packets", None):
        _check_output_dir(args.packets)
    card = load_card(args.detector, getattr(args, "pixel_layout", None))
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
    src = str(args.segments) if args.segments else "generator"
    keep, acc = account_segments(card, segments)
    allow_empty = getattr(args, "allow_empty", False)
    if not keep.any() and not allow_empty:  # one error line, no warning before it
        raise ValueError(f"{src}: nothing to simulate: {explain_empty(acc, None, card)} "
                         f"(--allow-empty writes the empty hit file anyway)")
    if acc.outside_fraction > OUTSIDE_WARN_FRACTION:
        print(
            f"warning: {src}: {acc.length_outside_cm:.1f} of {acc.length_cm:.1f} cm "
            f"({100 * acc.outside_fraction:.1f} %) of the track length lies outside the active "
            f"volume of card {card.name!r} ({card.source}) and is not simulated; check the "
            f"coordinate frame (drift axis, larnd-sim tpc_offsets, the zbeam attribute) and that "
            f"the card describes this detector",
            file=sys.stderr,
        )
    sim_segments = segments.select(keep) if not keep.all() else segments
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    hits, s = simulate_hits(
        key,
        card,
        sim_segments,
        params,
        noise=not args.no_noise,
        step_cm=args.step_cm,
        batch_length_cm=args.batch_length,
        progress=not args.quiet,
    )
    if hits.n == 0 and not allow_empty:
        raise ValueError(f"{src}: 0 hits, no output written: {explain_empty(acc, s, card)} "
                         f"(--allow-empty writes the empty hit file anyway)")
    truth = {} if getattr(args, "no_truth", False) else {  # --no-truth: as a detector writes
        "segments": sim_segments, "true_dEdx": sim_segments.dEdx,
        "true_params": params.to_dict(), "seed": args.seed}
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
            **acc.attrs(),
        },
    )
    light_line = ""
    if getattr(args, "light", None):
        light_line = _simulate_light(args, card, sim_segments, params)
    dt = time.perf_counter() - t_start
    adc_mean = float(np.mean(hits.adc)) if hits.n else float("nan")
    print(
        f"{s.n_tracks} tracks, {s.n_segments} segments ({s.length_cm:.1f} cm), "
        f"{s.n_channels} pixels, {s.n_hits} hits (mean ADC {adc_mean:.1f}), "
        f"charge {s.charge_e / 1e6:.3f} Me- -> {args.output} in {dt:.1f} s; input: {acc.line()}"
        f"{light_line}"
    )
    return 0


def _simulate_light(args: argparse.Namespace, card, segments, params) -> str:
    """``simulate --light CARD``: stochastic photo-electrons per light channel and event from the
    same segments and parameters as the charge (:mod:`lartpc_bayes.light`), written as the
    ``light/`` group of the hit file. Returns the summary-line fragment."""
    from .light import load_light_card, plan_light, simulate_light, write_light

    lc = load_light_card(args.light)
    lt = simulate_light(args.seed, plan_light(lc, segments), segments.dEdx, params, card.physics,
                        lc, noise="none" if args.no_noise else "poisson")
    write_light(args.output, lt, light_card=lc.name)
    return f"; light ({lc.name}): {float(lt.pe.sum()):.0f} pe on {lt.pe.shape[1]} channels"


def _check_output_dir(output: str) -> None:
    """Fail before any work when the output's directory cannot be created (a missing directory is
    created at write time; a file in the way or a read-only ancestor is an error)."""
    import os
    from pathlib import Path

    target = Path(output)
    if target.is_dir():
        raise IsADirectoryError(f"-o {output}: is a directory")
    anc = target.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise NotADirectoryError(f"-o {output}: {anc} is not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise PermissionError(f"-o {output}: directory {anc} is not writable")


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
        hessian=args.hessian,
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
    import warnings

    from .io.common import describe_file
    from .results import check_file

    kind = describe_file(args.result)
    if kind != "netcdf":
        raise ValueError(f"{args.result}: {kind}; 'check' reads the netCDF written by "
                         f"'lartpc-bayes fit' or 'demo'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # xarray/h5netcdf phony_dims notices
        try:
            text = check_file(args.result, outdir=args.plots, quiet=True)
        except (ValueError, KeyError) as exc:
            msg = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
            raise ValueError(msg if str(args.result) in msg else
                             f"{args.result}: not a fit result ({msg})") from exc
    print(text)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .calibrate import run_demo

    print(
        run_demo(
            outdir=args.outdir,
            length_cm=args.length_cm,
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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: message``) and exit code 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lartpc-bayes", description=__doc__.splitlines()[0])
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
    s.add_argument("--pixel-layout", help="larnd-sim pixel-layout YAML, when --detector is a "
                   "larnd-sim detector-properties YAML (the two files are read into a card)")
    s.add_argument("--allow-empty", action="store_true",
                   help="write the hit file even when no hit is produced (else: an error saying "
                   "which cut or bound removed the charge)")
    s.add_argument("--light", metavar="CARD",
                   help="also simulate the light readout with this light card (e.g. "
                   "light_module0); written as the hit file's light/ group")
    s.add_argument("-o", "--output", required=True, help="output hit file (HDF5)")
    s.set_defaults(func=_cmd_simulate)

    f = sub.add_parser("fit", help="calibrate: posterior of the six parameters from hit files")
    f.add_argument("hits", nargs="+", help="hit files (with or without truth), LArPix packets "
                   "or ndlar_flow hits, or glob patterns ('run/*.h5', quoted); several files are "
                   "fitted as one run (events renumbered, one card); files without true segments "
                   "are reconstructed first")
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
    f.add_argument("--hessian", choices=["auto", "dense", "block"], default="auto",
                   help="Hessian: block = events grouped (sharded over devices) and the "
                   "block-arrow Hessian, for metres of track (methods nuts / blackjax then "
                   "sample the joint posterior whitened by it); auto (default) = block for a "
                   "laplace, laplace-is, nuts or blackjax fit of several events with > 64 "
                   "latents, else dense")
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
    d.add_argument("--length-cm", type=float, default=100.0,
                   help="cm of whole muons (90 %%) and stopping protons (10 %%); default 100")
    d.add_argument("--n-tracks", type=int, default=None,
                   help="instead: this many short muon pieces (> 60 deg to the drift axis)")
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
    # SIGINT/SIGTERM: one line and exit 130 from the start, no partial output (_interrupt_guard)
    previous = _sigterm_as_interrupt()
    outputs: list[str] = []
    state = {"command": "command"}
    release = _interrupt_guard(outputs, state)
    try:
        # parallel MCMC chains on CPU need host devices, which must be set before JAX starts
        from .infer import enable_compilation_cache, set_host_devices

        set_host_devices()
        # compiled executables persist across runs ($LARTPC_BAYES_CACHE_DIR=off disables)
        enable_compilation_cache()
        parser = build_parser()
        args = parser.parse_args(argv)
        state["command"] = args.command
        outputs.extend(o for o in (getattr(args, k, None) for k in ("output", "packets",
                                                                     "reco_output"))
                       if isinstance(o, str))
        if getattr(args, "n_tracks", 1) is not None and getattr(args, "n_tracks", 1) < 1:
            parser.error("--n-tracks must be >= 1")
        if getattr(args, "length_cm", 1.0) is not None and getattr(args, "length_cm", 1.0) <= 0:
            parser.error("--length-cm must be > 0")
        return int(args.func(args) or 0)
    except (CardError, ValueError, OSError, KeyError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # no repr quotes
        msg = " ".join(str(text).split())  # one line
        print(f"lartpc-bayes {state['command']}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT, or SIGTERM through _sigterm_as_interrupt
        print(f"lartpc-bayes {state['command']}: interrupted; no output written (outputs are "
              f"written atomically)", file=sys.stderr)
        return 130
    finally:
        if release is not None:
            release()
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


#: Seconds the main thread gets to act on SIGINT/SIGTERM before the guard ends the process.
INTERRUPT_GRACE_S = 2.0


def _interrupt_guard(outputs: list[str], state: dict[str, str]):
    """Make SIGINT/SIGTERM effective while the main thread is inside native code (an XLA
    compilation can take minutes, and Python signal handlers only run between bytecodes).

    The C-level signal handler writes to a wake-up pipe (:func:`signal.set_wakeup_fd`); a daemon
    thread waits on it, gives the main thread ``INTERRUPT_GRACE_S`` to raise KeyboardInterrupt
    (then the atomic writers clean up), and otherwise removes the temporary files of ``outputs``
    (``.<name>.*.tmp`` of the io writers, ``<name>.tmp-*`` of the netCDF writer), prints one
    line and ends the process with exit code 130. The final outputs appear only through
    ``os.replace``, so no partial file is left. ``outputs`` and ``state["command"]`` are read when
    a signal arrives (filled in once the arguments are parsed). Returns a function that removes
    the guard.
    """
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # pragma: no cover - not the main interpreter
        os.close(r)
        os.close(w)
        return None
    done = threading.Event()

    def watch() -> None:
        from pathlib import Path

        try:
            got = os.read(r, 1)
        except OSError:
            return
        if not got or done.wait(INTERRUPT_GRACE_S):
            return
        for out in outputs:
            p = Path(out)
            for tmp in [*p.parent.glob(f".{p.name}.*.tmp"), *p.parent.glob(f"{p.name}.tmp-*")]:
                tmp.unlink(missing_ok=True)
        sys.stderr.write(f"lartpc-bayes {state['command']}: interrupted; no output written "
                         f"(outputs are written atomically)\n")
        sys.stderr.flush()
        os._exit(130)

    threading.Thread(target=watch, name="lartpc-bayes-interrupt", daemon=True).start()

    # A signal handler runs between any two bytecodes, also inside a garbage-collector callback
    # (jax registers one); a KeyboardInterrupt raised there cannot propagate: Python reports it
    # as "Exception ignored in ..." with a traceback and goes on. The watcher above ends the
    # process within INTERRUPT_GRACE_S anyway, so such an interrupt is dropped without a word.
    previous_hook = sys.unraisablehook

    def quiet_interrupt(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous_hook(unraisable)

    sys.unraisablehook = quiet_interrupt

    def release() -> None:
        done.set()
        sys.unraisablehook = previous_hook
        signal.set_wakeup_fd(old_fd)
        os.close(w)  # the watcher's read returns b"" and the thread ends
        os.close(r)

    return release


def _sigterm_as_interrupt() -> object | None:
    """Turn SIGTERM into KeyboardInterrupt so that atomic writers remove their temporary files
    (a plain SIGTERM ends the process without unwinding); returns the previous handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def _raise(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):  # pragma: no cover - not settable here
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
