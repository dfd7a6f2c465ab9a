"""The calibration job end to end: hit file -> problem -> MAP/Laplace -> NUTS -> DataTree -> report.

``calibrate_file`` is what ``lartpc-bayes fit`` runs; ``run_demo`` generates fake data at a
non-nominal target on the embedded default and calibrates it (``lartpc-bayes demo``).
"""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .detector import PARAM_NAMES, DetectorCard
from .infer import (
    FitResult,
    predictive_hits,
    prior_samples,
    run_blackjax,
    run_laplace,
    run_laplace_block,
    run_nuts,
    run_nuts_block,
    run_svi,
)
from .likelihood import LikelihoodConfig
from .model import LATENT_SITES, CalibrationProblem, build_problem

#: Demo target: every parameter away from nominal, inside the prior ranges (a fixed, documented
#: point so the demo is comparable across commits; closure over the whole space is issue 4).
DEMO_TARGET = {"A_B": 0.83, "k_B": 0.055, "E": 0.52, "tau": 1500.0, "D_L": 6.0e-6, "D_T": 11.0e-6}


def _parse_fix(
    fix: list[str], card: DetectorCard, truth: dict[str, float] | None
) -> dict[str, float]:
    out = {}
    for item in fix:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in PARAM_NAMES:
            raise ValueError(f"--fix: unknown parameter {name!r}; known: {', '.join(PARAM_NAMES)}")
        if value:
            out[name] = float(value)
        elif truth is not None and name in truth:
            out[name] = float(truth[name])
        else:
            out[name] = card.param(name).nominal
    return out


def stage_printer(enabled: bool) -> Callable[[str], None] | None:
    """A progress line per stage on stderr, ``[  12.3 s] stage: what``, timed from now (None
    when ``enabled`` is False)."""
    if not enabled:
        return None
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", file=sys.stderr, flush=True)

    return say


def calibrate(
    problem: CalibrationProblem,
    *,
    method: str = "nuts",
    draws: int = 300,
    warmup: int = 300,
    chains: int = 2,
    steps: int = 1500,
    ppc_draws: int = 100,
    seed: int = 0,
    truth: dict[str, float] | None = None,
    truth_dEdx: np.ndarray | None = None,
    progress: bool = False,
    batch=None,
):
    """Fit ``problem`` and return the ArviZ DataTree (posterior, sample_stats, observed_data,
    posterior_predictive, prior, truth, hessian).

    Every method starts from the MAP (L-BFGS on the unconstrained potential, with the Laplace
    approximation there), where the Hessian pseudo-correlation of talk 002 is also evaluated.
    ``batch`` (an :class:`~lartpc_bayes.infer.events.EventBatch` of the same events): MAP and
    Laplace with the block-arrow Hessian (:func:`lartpc_bayes.infer.run_laplace_block`; methods
    laplace and laplace-is), and for methods nuts and blackjax NUTS on the joint posterior
    whitened by that block factor (:func:`lartpc_bayes.infer.run_nuts_block`, ``chains`` chains
    one after another); the checks on ``problem`` as always.
    """
    from .results import hessian_at_optimum, to_datatree

    t0 = time.perf_counter()
    say = stage_printer(progress)
    block_nuts = batch is not None and method in ("nuts", "blackjax")
    if block_nuts:
        # block Laplace, then NUTS on the joint posterior whitened by its block factor
        lap = run_nuts_block(batch, sampler="numpyro" if method == "nuts" else "blackjax",
                             seed=seed, num_warmup=warmup, num_samples=draws, num_chains=chains,
                             log=say)
    elif batch is not None:
        if method not in ("laplace", "laplace-is"):
            raise ValueError(f"the block-arrow Hessian serves methods laplace, laplace-is, nuts "
                             f"and blackjax, not {method!r} (use hessian='dense')")
        lap = run_laplace_block(batch, seed=seed, num_samples=2000,
                                importance=method == "laplace-is", log=say)
    else:
        lap = run_laplace(problem, seed=seed, num_samples=2000,
                          importance=method == "laplace-is", log=say)
    init = {
        k: jnp.asarray(v) for k, v in lap.map_values.items() if k in (*problem.free, *LATENT_SITES)
    }
    timings = {"map_laplace_s": lap.timings["fit_s"]}
    hess = hessian_at_optimum(problem, lap.map_values, laplace=lap)
    if block_nuts:
        fit = lap
    elif method in ("nuts", "blackjax"):
        sampler = run_nuts if method == "nuts" else run_blackjax
        if say:
            say(f"sampling: {method} {chains} chains x ({warmup} + {draws})")
        fit = sampler(
            problem,
            seed=seed,
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            init=init,
            progress=progress,
            inverse_mass_matrix=lap.info["cov"],
        )
    elif method in ("laplace", "laplace-is"):
        fit = lap
    elif method in ("svi", "lowrank"):
        if say:
            say(f"sampling: SVI ({method}) {steps} steps")
        fit = run_svi(
            problem,
            guide="normal" if method == "svi" else "lowrank",
            seed=seed,
            steps=steps,
            num_samples=draws * chains,
            init=init,
            progress=progress,
        )
    else:
        raise ValueError(f"unknown method {method!r}")
    timings["fit_s"] = fit.timings["fit_s"]
    t1 = time.perf_counter()
    if say:
        say(f"checks: {ppc_draws} posterior-predictive hit tables and 200 prior draws")
    ppc = predictive_hits(problem, fit.samples, seed=seed + 1, num_draws=ppc_draws)
    prior = prior_samples(problem, seed=seed + 2, num_samples=200)
    timings["ppc_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    fit.timings.update(timings)
    attrs = {
        "seed": seed,
        "method": fit.method,
        "card": problem.card.name,
        "latents": problem.n_latent,
        "fixed": str(problem.fixed),
        "likelihood": str(problem.likelihood),
    }
    return to_datatree(
        fit,
        problem,
        prior=prior,
        posterior_predictive=ppc,
        truth=truth,
        truth_dEdx=truth_dEdx,
        hessian=hess,
        attrs=attrs,
    )


def expand_inputs(inputs: str | Path | Sequence[str | Path]) -> list[str]:
    """Input files of a fit: paths and glob patterns (``run/*.h5``), each pattern sorted; a
    pattern that matches nothing, or a path that does not exist, raises FileNotFoundError naming
    it. Duplicates are kept once, in order."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    out: list[str] = []
    for item in map(str, items):
        if glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise FileNotFoundError(f"{item}: no file matches this pattern")
        elif not Path(item).exists():
            raise FileNotFoundError(f"{item}: no such file")
        else:
            found = [item]
        out += [f for f in found if f not in out]
    if not out:
        raise FileNotFoundError("no input files given")
    return out


def calibrate_file(
    hits_path: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    method: str = "nuts",
    fix: list[str] | None = None,
    latent_length_cm: float = 5.0,
    likelihood: str = "ppp",
    eps: float = 1e-8,
    draws: int = 300,
    warmup: int = 300,
    chains: int = 2,
    steps: int = 1500,
    ppc_draws: int = 100,
    seed: int = 0,
    plots: str | Path | None = None,
    progress: bool = True,
    reco: dict | None = None,
    hessian: str = "auto",
) -> str:
    """``lartpc-bayes fit``: calibrate hit files (with their segments) and write the netCDF.

    ``hits_path``: one file, or several files and glob patterns (:func:`expand_inputs`) fitted as
    one run: events renumbered after each other, one card for all
    (:func:`lartpc_bayes.io.merge_hit_files`). Files without true segments (LArPix packets,
    ndlar_flow hits, hit files without ``truth/segments``) and ``reco={"force": True, ...}`` go
    through the reconstruction (:func:`calibrate_data`; options in ``reco``: card, layout, t0,
    geometry_latents, tpc_offset, reco_output, force). With ``progress`` a line per stage
    (reading, planning, compile, E scan, optimise, Hessian, sampling, checks) goes to stderr.
    ``hessian``: "dense", "block" (events grouped and sharded, block-arrow Laplace:
    :mod:`lartpc_bayes.infer.events`; methods laplace / laplace-is, and nuts / blackjax as
    whitened NUTS on that factor; PPP likelihood) or "auto": block for a fit of several events
    with more than :data:`BLOCK_AUTO_LATENTS` local latents (the dense Hessian costs one product
    per latent, the block one per latent of the largest event), dense otherwise.
    """
    from .io import merge_hit_files
    from .results import format_report, latent_truth, make_plots, save_datatree

    paths = expand_inputs(hits_path)
    say = stage_printer(progress)
    if say:
        say(f"reading: {len(paths)} file{'s' if len(paths) > 1 else ''}")
    reco = dict(reco or {})
    force = reco.pop("force", False)
    hfs = [None if force else _try_read_hits(p) for p in paths]
    hf = None
    if all(h is not None and h.segments is not None for h in hfs):
        hf = hfs[0] if len(hfs) == 1 else merge_hit_files(hfs, paths)
    if hf is None:
        hits_path = paths[0] if len(paths) == 1 else paths

        return calibrate_data(
            hits_path, output, method=method, fix=fix, latent_length_cm=latent_length_cm,
            likelihood=likelihood, eps=eps, seed=seed, plots=plots, progress=progress,
            draws=draws, warmup=warmup, chains=chains, steps=steps, ppc_draws=ppc_draws, **reco,
        )
    card = hf.card
    fixed = _parse_fix(list(fix or []), card, hf.true_params)
    if say:
        say(f"planning: {hf.hits.n} hits, {np.unique(hf.hits.event_id).size} events, "
            f"{hf.segments.n} segments, {float(np.sum(hf.segments.dx)):.1f} cm of track")
    problem = build_problem(
        card,
        hf.segments,
        hf.hits,
        latent_length_cm=latent_length_cm,
        likelihood=LikelihoodConfig(kind=likelihood, eps=eps),
        fixed=fixed,
    )
    truth_dEdx = (
        latent_truth(problem, hf.true_dEdx, hf.segments.dx)
        if hf.true_params and hf.true_dEdx is not None
        else None
    )
    if hessian not in ("auto", "dense", "block"):
        raise ValueError(f"hessian must be 'auto', 'dense' or 'block', got {hessian!r}")
    n_local = problem.n_latent + (problem.stopping.n if problem.stopping is not None else 0)
    if hessian == "auto":
        hessian = ("block" if method in ("laplace", "laplace-is", "nuts", "blackjax")
                   and likelihood == "ppp"
                   and np.unique(hf.segments.event_id).size > 1
                   and n_local > BLOCK_AUTO_LATENTS else "dense")
    batch = None
    if hessian == "block":
        from .infer.events import build_event_batch

        if say:
            say("planning: events in groups for the block-arrow Hessian")
        batch = build_event_batch(card, hf.segments, hf.hits, latent_length_cm=latent_length_cm,
                                  likelihood=LikelihoodConfig(kind=likelihood, eps=eps),
                                  fixed=fixed)
    dt = calibrate(
        problem,
        method=method,
        draws=draws,
        warmup=warmup,
        chains=chains,
        steps=steps,
        ppc_draws=ppc_draws,
        seed=seed,
        truth=hf.true_params,
        truth_dEdx=truth_dEdx,
        progress=progress,
        batch=batch,
    )
    dt.attrs["input_files"] = "; ".join(paths)
    dt.attrs["hessian"] = hessian
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_datatree(dt, output)
    make_plots(dt, Path(plots) if plots else Path(output).parent, Path(output).stem, card)
    return format_report(dt)


def _try_read_hits(path: str | Path):
    """The package's hit file, or None when ``path`` is another detector format (packets, flow)."""
    import h5py

    from .io import read_hits

    try:
        with h5py.File(path, "r") as f:
            own = "format_version" in f.attrs and "hits" in f
    except OSError:
        own = True  # let read_hits name the problem
    return read_hits(path) if own else None


#: ``calibrate_file(hessian="auto")`` takes the block-arrow Hessian above this many local
#: latents (dE/dx latents + stopping end points): the dense Hessian costs one Hessian-vector
#: product per latent, the block one per latent of the largest event (~30 for a metre-long muon)
BLOCK_AUTO_LATENTS = 64


#: Demo sample: muons crossing the published drift window at more than this angle to the drift
#: axis (short readout windows; the steep tracks of the 15-degree default cost several times more
#: per cm and are for the validation campaign).
DEMO_MIN_ANGLE_DEG = 60.0
#: track length of the demo's run (cm): on 106 cm of whole muons and stopping protons at the
#: card's nominal parameters every posterior sd is at most 0.35 of its prior's (scale study,
#: benchmarks/results/scale_study.json), issue 14's "at most half"
DEMO_LENGTH_CM = 100.0


def calibrate_data(
    path: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    card: DetectorCard | str | None = None,
    layout: str | Path | None = None,
    t0: str | float = "file",
    geometry_latents: bool = True,
    tpc_offset: bool = False,
    method: str = "laplace",
    fix: list[str] | None = None,
    latent_length_cm: float = 5.0,
    likelihood: str = "ppp",
    eps: float = 1e-8,
    seed: int = 0,
    plots: str | Path | None = None,
    progress: bool = True,
    reco_output: str | Path | None = None,
    **fit_kwargs: Any,
) -> str:
    """Calibrate from detector data alone: LArPix packets, ndlar_flow hits or a hit file without
    ``truth/segments`` (or any file, for "half-fake data") -> reconstruction and selection
    (:mod:`lartpc_bayes.reco`) -> a problem with the geometry latents
    (:func:`lartpc_bayes.model.build_reco_problem`) -> fit. Writes the netCDF; returns the
    report."""
    from .likelihood import LikelihoodConfig
    from .model import build_reco_problem
    from .reco import load_data_many, reconstruct
    from .results import format_report, make_plots, save_datatree

    paths = expand_inputs(path)
    data = load_data_many(paths, card, layout=layout)
    path = "; ".join(paths)
    res = reconstruct(data.hits, data.card, t0=t0, t0_source=data.t0_source)
    if reco_output is not None:
        from .reco.io import write_reco

        write_reco(reco_output, res, data.card)
    truth = data.hitfile.true_params if data.hitfile is not None else None
    fixed = _parse_fix(list(fix or []), data.card, truth)
    problem = build_reco_problem(
        data.card, res, data.hits, geometry_latents=geometry_latents, tpc_offset=tpc_offset,
        latent_length_cm=latent_length_cm, likelihood=LikelihoodConfig(kind=likelihood, eps=eps),
        fixed=fixed,
    )
    dt = calibrate(problem, method=method, seed=seed, truth=truth, progress=progress,
                   **fit_kwargs)
    dt.attrs.update({f"reco_{k}": (v if isinstance(v, int | float | str) else str(v))
                     for k, v in res.attrs.items()})
    dt.attrs["reco_input"] = f"{data.kind}: {path}"
    dt.attrs["reco_geometry_latents"] = int(geometry_latents)
    dt.attrs["reco_tpc_drift_offset"] = int(tpc_offset)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_datatree(dt, output)
    make_plots(dt, Path(plots) if plots else Path(output).parent, Path(output).stem, data.card)
    head = (f"data: {data.kind} {path}; t0: {res.attrs['t0_source']}; "
            f"{res.attrs['n_selected']} of {res.attrs['n_tracks']} tracks selected "
            f"({res.attrs['n_stopping']} stopping), {res.segments.n} segments, "
            f"{res.attrs['length_cm']:.1f} cm\n")
    return head + format_report(dt)


def demo_sample(detector: str = "module0", n_tracks: int = 2, seed: int = 3):
    """The demo's fake data: ``n_tracks`` generated muons (> :data:`DEMO_MIN_ANGLE_DEG` to the
    drift axis) simulated at :data:`DEMO_TARGET` with every noise term. Returns
    (card, segments, hits, simulation summary)."""
    from .detector import load_card
    from .detector.physics import DetectorParams
    from .forward.generator import SelectionCuts, generate
    from .forward.simulate import simulate_hits

    card = load_card(detector)
    segments = generate(
        card, "muons", n_tracks, seed, cuts=SelectionCuts(min_angle_to_drift_deg=DEMO_MIN_ANGLE_DEG)
    )
    hits, summ = simulate_hits(
        jax.random.key(seed), card, segments, DetectorParams.from_dict(DEMO_TARGET)
    )
    return card, segments, hits, summ


def demo_run_sample(detector: str = "module0", length_cm: float = DEMO_LENGTH_CM, seed: int = 3):
    """The demo's fake run: whole cosmic muons (90 %) and stopping protons (10 %) of
    ``length_cm`` in total (:func:`lartpc_bayes.forward.generator.generate_run`) simulated at
    :data:`DEMO_TARGET` with every noise term. Returns (card, segments, hits, summary)."""
    from .detector import load_card
    from .detector.physics import DetectorParams
    from .forward.generator import generate_run
    from .forward.simulate import simulate_hits

    card = load_card(detector)
    segments = generate_run(card, length_cm, seed)
    hits, summ = simulate_hits(
        jax.random.key(seed), card, segments, DetectorParams.from_dict(DEMO_TARGET)
    )
    return card, segments, hits, summ


def run_demo(
    outdir: str | Path = "out/demo",
    *,
    detector: str = "module0",
    length_cm: float = DEMO_LENGTH_CM,
    n_tracks: int | None = None,
    seed: int = 3,
    method: str = "laplace",
    draws: int = 300,
    warmup: int = 300,
    chains: int = 2,
    ppc_draws: int = 100,
    progress: bool = True,
) -> str:
    """Fake data at :data:`DEMO_TARGET` from the embedded generator, all six parameters and the
    latent dE/dx fitted with ``method`` (default: MAP + Laplace); writes hits, netCDF and plots
    to ``outdir``. The data: ``length_cm`` of whole muons and stopping protons
    (:func:`demo_run_sample`; enough track that each of the six posterior sds is below half its
    prior's, issue 14), or with ``n_tracks`` the short pieces of :func:`demo_sample`."""
    from .io import write_hits

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if n_tracks is not None:
        card, segments, hits, summ = demo_sample(detector, n_tracks, seed)
        what = f"{summ.n_tracks} muons (> {DEMO_MIN_ANGLE_DEG:.0f} deg to the drift axis)"
        sample = "muons"
    else:
        card, segments, hits, summ = demo_run_sample(detector, length_cm, seed)
        n_pr = len({(e, t) for e, t, p in zip(segments.event_id, segments.track_id,
                                              np.abs(segments.pdg_id), strict=True) if p == 2212})
        what = f"{summ.n_tracks - n_pr} whole muons and {n_pr} stopping protons"
        sample = "muons+protons"
    hits_path = out / "hits.h5"
    write_hits(
        hits_path,
        hits,
        card=card,
        segments=segments,
        true_dEdx=segments.dEdx,
        true_params=dict(DEMO_TARGET),
        seed=seed,
        extra_attrs={"sample": sample},
    )
    head = (
        f"demo: {what}, "
        f"{summ.length_cm:.1f} cm, {summ.n_hits} hits on {summ.n_channels} pixels ({card.name}), "
        f"target {DEMO_TARGET}; fit: {method}"
    )
    print(head, flush=True)
    report = calibrate_file(
        hits_path,
        out / "posterior.nc",
        method=method,
        draws=draws,
        warmup=warmup,
        chains=chains,
        ppc_draws=ppc_draws,
        seed=seed,
        plots=out,
        progress=progress,
    )
    return (
        f"{report}\nwritten: {hits_path}, {out / 'posterior.nc'}, plots in {out}\n"
        f"wall time {time.perf_counter() - t0:.0f} s"
    )


__all__ = [
    "DEMO_LENGTH_CM",
    "DEMO_MIN_ANGLE_DEG",
    "DEMO_TARGET",
    "FitResult",
    "calibrate",
    "calibrate_file",
    "demo_run_sample",
    "demo_sample",
    "run_demo",
]
