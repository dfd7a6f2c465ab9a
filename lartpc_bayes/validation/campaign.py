"""Validation campaigns: closure across the six-parameter space and simulation-based calibration.

A *campaign* is a frozen :class:`CampaignConfig` plus a directory. Every replica is an independent
job (:func:`run_replica`): it draws a target, makes fake data, fits them with a compile-once
MAP + Laplace fitter (:class:`LaplaceFitter`) and writes one JSON file, atomically
(``replica_0007.json``). :func:`run_campaign` submits the replicas that have no file yet to any
executor with ``submit(fn, *args) -> future`` (``concurrent.futures`` locally, a Dask
``distributed.Client`` on a cluster), so an interrupted campaign resumes where it stopped.
:func:`collect` gathers the files into one tidy table (one row per replica and parameter: target,
posterior mean/sd/quantiles, rank, PIT, pull, timings), written as CSV and netCDF.

Two kinds of campaign:

* ``sbc`` -- simulation-based calibration (Talts et al. 2018): the free parameters and the dE/dx
  latents are drawn from the model's prior and the hit table from the model's own generative
  process (``LArPixReadout.sample``, the stochastic readout on the model's channels), so the
  posterior is exactly calibrated if the likelihood and the Laplace approximation are right.
* ``closure`` -- targets drawn uniformly over the published ranges, data from the full stochastic
  simulator (:func:`lartpc_bayes.forward.simulate.simulate_hits`, realistic noise, hits on every
  pixel)
  with the generator's Landau-fluctuated dE/dx, all six parameters free with latent dE/dx.

Why Laplace and not NUTS: NUTS costs about 450 s per 19 cm problem on this CPU (docs/inference.md)
against a few seconds per replica here once compiled; its sd agreed with NUTS within 11 % on the
documented problem, and the SBC below is itself the test of the approximation on the SBC problem.

The fitter is the package's one MAP + Laplace fitter, :class:`lartpc_bayes.infer.LaplaceFitter`:
within a campaign the channel plan is the same for every replica, and the fitter takes the hit
table as an argument, so its L-BFGS loop and Hessian compile once per worker. The constant term
``n_outside * log(eps)`` of hits outside the plan's channels does not depend on the parameters and
is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..infer.laplace import LaplaceFitter
from .records import _atomic_write_json, load_records, versions

#: ``docs/validation`` campaign data live beside the doc.
DEFAULT_ROOT = Path("docs/validation")


@dataclass(frozen=True)
class CampaignConfig:
    """Everything that defines a campaign (hashable: workers cache one fitter per config).

    kind : "sbc" (prior draws, data from the model) or "closure" (uniform targets over the card's
        ranges, data from the full stochastic simulator with noise).
    free : the free calibration parameters; the others are fixed at ``fixed`` (default: nominal).
    n_tracks, track_seed, sample, min_angle_deg : the embedded generator's tracks (fixed for the
        whole campaign, so that one compiled fitter serves every replica).
    num_draws : Laplace draws per replica (ranks are counted among them).
    straggling : how the charge straggling below the latent enters the likelihood
        (``LikelihoodConfig.straggling``: "mark", the package default, or "timing", "trigger").
    """

    name: str
    kind: str = "sbc"
    likelihood: str = "ppp"
    free: tuple[str, ...] = ("A_B", "k_B", "E", "tau", "D_L", "D_T")
    fixed: tuple[tuple[str, float], ...] = ()
    n_replicas: int = 100
    seed: int = 0
    detector: str = "module0"
    sample: str = "muons"
    n_tracks: int = 1
    track_seed: int = 2
    min_angle_deg: float = 60.0
    latent_length_cm: float = 5.0
    max_lag: int = 48
    num_draws: int = 999
    maxiter: int = 400
    gtol: float = 1e-3
    hit_margin: float = 2.0
    method: str = "laplace"
    importance: bool = True
    n_proposal: int = 1500
    nuts_warmup: int = 300
    nuts_draws: int = 1000
    nuts_thin: int = 10
    straggling: str = "mark"

    def __post_init__(self):
        if self.kind not in ("sbc", "closure"):
            raise ValueError(f"campaign kind must be 'sbc' or 'closure', got {self.kind!r}")
        if self.likelihood not in ("ppp", "sequential"):
            raise ValueError(f"likelihood must be 'ppp' or 'sequential', got {self.likelihood!r}")
        if self.method not in ("laplace", "nuts"):
            raise ValueError(f"method must be 'laplace' or 'nuts', got {self.method!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["free"] = list(self.free)
        d["fixed"] = [list(x) for x in self.fixed]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CampaignConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["free"] = tuple(d.get("free", ()))
        d["fixed"] = tuple((str(k), float(v)) for k, v in d.get("fixed", ()))
        d.setdefault("importance", False)  # campaigns written before importance sampling
        return cls(**d)


#: The campaigns of docs/validation.md (``lartpc-bayes validate run NAME``).
_SBC3 = ("k_B", "tau", "D_L")


PRESETS: dict[str, CampaignConfig] = {
    # reduced SBC problem: one 7.8 cm muon (generator seed 2) at > 60 deg to the drift axis,
    # 2 latents of 5 cm; three free parameters (the rest at nominal); Laplace + importance
    # sampling
    "sbc-ppp": CampaignConfig("sbc-ppp", "sbc", "ppp", _SBC3, n_replicas=100, seed=11),
    # the same replicas with the plain Laplace approximation (no importance sampling)
    "sbc-ppp-laplace": CampaignConfig("sbc-ppp-laplace", "sbc", "ppp", _SBC3, n_replicas=300,
                                      seed=11, importance=False),
    "sbc-sequential-laplace": CampaignConfig(
        "sbc-sequential-laplace", "sbc", "sequential", _SBC3, n_replicas=300, seed=11,
        importance=False,
    ),
    "sbc-sequential": CampaignConfig(
        "sbc-sequential", "sbc", "sequential", _SBC3, n_replicas=100, seed=11
    ),
    # a steep muon (generator seed 85, 13.9 cm at 23 deg to the drift axis): several hits per
    # pixel, where the PPP and the exact sequential likelihood differ
    "sbc-steep-ppp": CampaignConfig("sbc-steep-ppp", "sbc", "ppp", _SBC3, n_replicas=100,
                                    seed=13, track_seed=85, min_angle_deg=15.0),
    "sbc-steep-sequential": CampaignConfig(
        "sbc-steep-sequential", "sbc", "sequential", _SBC3, n_replicas=100, seed=13,
        track_seed=85, min_angle_deg=15.0,
    ),
    # closure: two muons (seed 3, 18.7 cm after the drift-window cut), all six parameters free,
    # data from the full simulator with noise
    "closure": CampaignConfig(
        "closure", "closure", "ppp", n_replicas=30, seed=21, n_tracks=2, track_seed=3,
        importance=False,
    ),
    # the SBC problem with NUTS instead of Laplace (the check of the approximation)
    "sbc-ppp-nuts": CampaignConfig("sbc-ppp-nuts", "sbc", "ppp", _SBC3, n_replicas=100, seed=11,
                                   method="nuts"),
    # issue 12: the closure re-run with the per-length latent priors and the straggling below the
    # latent (the demo's two muons, 18.7 cm), and a >= 100 cm version (10 muons, generator seed 3)
    "closure-12": CampaignConfig(
        "closure-12", "closure", "ppp", n_replicas=30, seed=21, n_tracks=2, track_seed=3,
        importance=False,
    ),
    "closure-12-long": CampaignConfig(
        "closure-12-long", "closure", "ppp", n_replicas=30, seed=23, n_tracks=10, track_seed=3,
        importance=False,
    ),
    # the same with the trigger-time shift of the straggling in the likelihood (docs/inference.md,
    # "timing": E -0.6 / -1.4 sd instead of -2.4 on two 150 cm samples)
    "closure-12-long-timing": CampaignConfig(
        "closure-12-long-timing", "closure", "ppp", n_replicas=30, seed=23, n_tracks=10,
        track_seed=3, importance=False, straggling="timing",
    ),
    # CI subset (tests/test_validate.py): a tiny SBC
    "ci-sbc": CampaignConfig(
        "ci-sbc", "sbc", "ppp", ("k_B", "D_L"), n_replicas=4, seed=5, maxiter=200,
        num_draws=199, n_proposal=400,
    ),
}


def campaign_segments(cfg: CampaignConfig):
    """The (fixed) generated tracks of a campaign."""
    from ..detector import load_card
    from ..forward.generator import SelectionCuts, generate

    card = load_card(cfg.detector)
    seg = generate(
        card,
        cfg.sample,
        cfg.n_tracks,
        cfg.track_seed,
        cuts=SelectionCuts(min_angle_to_drift_deg=cfg.min_angle_deg),
    )
    if seg.n == 0:
        raise ValueError(f"{cfg.name}: the generator left no segment after the cuts")
    return card, seg


def fixed_values(cfg: CampaignConfig, card) -> dict[str, float]:
    """Values of the parameters that are not free: ``cfg.fixed`` or the card's nominal."""
    from ..detector import PARAM_NAMES

    given = dict(cfg.fixed)
    nom = card.nominal()
    return {p: float(given.get(p, nom[p])) for p in PARAM_NAMES if p not in cfg.free}


@dataclass
class CampaignContext:
    """Per-process state of a campaign: card, segments, problem, fitter (built once)."""

    cfg: CampaignConfig
    card: Any
    segments: Any
    problem: Any
    fitter: LaplaceFitter
    fixed: dict[str, float]
    setup_s: float
    info: dict[str, Any] = field(default_factory=dict)


_CONTEXTS: dict[CampaignConfig, CampaignContext] = {}


def _max_hits_for(plan, tables: Iterable[np.ndarray], margin: float, slots: int
                  ) -> tuple[int, ...]:
    """Static PPP hit-list sizes that hold ``margin`` times the most hits seen in ``tables``."""
    from ..forward.charge import padded_size
    from ..likelihood.point_process import _split

    counts = None
    for t in tables:
        c = np.array([int(np.sum(tb[..., 0] >= 0)) for tb in _split(np.asarray(t), plan.buckets)])
        counts = c if counts is None else np.maximum(counts, c)
    sizes = []
    for b, n in zip(plan.buckets, counts, strict=True):
        cap = b.n_channels * slots
        sizes.append(min(padded_size(max(int(margin * n), 16)), cap))
    return tuple(sizes)


def context(cfg: CampaignConfig) -> CampaignContext:
    """The campaign's problem and compiled fitter, built once per process and cached."""
    if cfg in _CONTEXTS:
        return _CONTEXTS[cfg]
    import jax

    from ..likelihood import LikelihoodConfig
    from ..model import build_problem

    t0 = time.perf_counter()
    card, seg = campaign_segments(cfg)
    fixed = fixed_values(cfg, card)
    problem = build_problem(
        card,
        seg,
        None,
        latent_length_cm=cfg.latent_length_cm,
        likelihood=LikelihoodConfig(kind=cfg.likelihood, max_lag=cfg.max_lag,
                                    straggling=cfg.straggling),
        fixed=fixed,
    )
    M = card.electronics.max_hits_per_pixel
    # static hit-list sizes of the PPP from a batch of data sets of this campaign (seed offset
    # so these are not the replicas themselves)
    probe = [
        _make_data(cfg, card, seg, problem, jax.random.key(10_000_019 + cfg.seed + i), i)[0]
        for i in range(16)
    ]
    sizes = _max_hits_for(problem.plan, probe, cfg.hit_margin, M)
    problem = dataclasses.replace(
        problem, likelihood=dataclasses.replace(problem.likelihood, max_hits=sizes)
    )
    fitter = LaplaceFitter(problem, maxiter=cfg.maxiter, gtol=cfg.gtol)
    ctx = CampaignContext(
        cfg, card, seg, problem, fitter, fixed, time.perf_counter() - t0,
        {"track_length_cm": float(seg.dx.sum()), "n_segments": int(seg.n),
         "n_latent": int(problem.n_latent), "max_hits": list(sizes),
         "n_channels": int(sum(b.n_channels for b in problem.plan.buckets))},
    )
    _CONTEXTS[cfg] = ctx
    return ctx


def _make_data(cfg, card, seg, problem, key, index):
    """(hit table, truth dict, truth dE/dx per latent, extra info) of one replica."""
    import jax

    from ..detector import PARAM_NAMES
    from ..detector.physics import DetectorParams
    from ..likelihood import hits_to_table
    from ..results import latent_truth

    fixed = fixed_values(cfg, card)
    if cfg.kind == "sbc":
        from numpyro.infer import Predictive

        from ..model import calibration_model

        k1, _ = jax.random.split(key)
        out = Predictive(calibration_model, num_samples=1)(k1, problem, hits=None)
        truth = {p: float(np.asarray(out[p])[0]) for p in cfg.free}
        truth_dEdx = np.asarray(out["dEdx"])[0].astype(np.float64)
        table = np.asarray(out["hits"])[0]
        return table, truth, truth_dEdx, {"n_outside": 0}
    # closure: uniform target over the card's ranges for the free parameters
    from ..forward.simulate import simulate_hits

    rng = np.random.default_rng([cfg.seed, index])
    truth = {p: float(rng.uniform(card.param(p).low, card.param(p).high)) for p in cfg.free}
    full = {**fixed, **truth}
    params = DetectorParams(*(full[p] for p in PARAM_NAMES))
    hits, _ = simulate_hits(key, card, seg, params)
    table, n_out = hits_to_table(problem.plan, hits, card.electronics.max_hits_per_pixel)
    truth_dEdx = np.asarray(latent_truth(problem, seg.dEdx, seg.dx), np.float64)
    return table, truth, truth_dEdx, {"n_outside": int(n_out), "n_hits_total": int(hits.n)}


def replica_path(outdir: str | Path, index: int) -> Path:
    """Result file of replica ``index``."""
    return Path(outdir) / f"replica_{index:04d}.json"


def replica_key(cfg: CampaignConfig, index: int):
    """The JAX key of replica ``index`` (independent of execution order and worker)."""
    import jax

    return jax.random.fold_in(jax.random.key(cfg.seed), index)


def run_replica(cfg: CampaignConfig | dict, index: int, outdir: str | Path | None = None
                ) -> dict[str, Any]:
    """Make and fit replica ``index`` of a campaign; write ``replica_XXXX.json`` atomically when
    ``outdir`` is given (skipped, and the file read back, when it exists). Returns the record."""
    if isinstance(cfg, dict):
        cfg = CampaignConfig.from_dict(cfg)
    if outdir is not None and replica_path(outdir, index).exists():
        return json.loads(replica_path(outdir, index).read_text())
    t0 = time.perf_counter()
    ctx = context(cfg)
    t_setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    table, truth, truth_dEdx, extra = _make_data(
        cfg, ctx.card, ctx.segments, ctx.problem, replica_key(cfg, index), index
    )
    t_data = time.perf_counter() - t1
    fseed = cfg.seed * 100_003 + index
    if cfg.method == "nuts":
        fit = ctx.fitter.fit_nuts(table, seed=fseed, num_warmup=cfg.nuts_warmup,
                                  num_draws=cfg.nuts_draws, thin=cfg.nuts_thin)
    else:
        fit = ctx.fitter.fit(table, seed=fseed, num_draws=cfg.num_draws,
                             importance=cfg.importance, n_proposal=cfg.n_proposal)
    n_obs = int(np.sum(np.asarray(table)[..., 0] >= 0))
    rec: dict[str, Any] = {
        "campaign": cfg.name,
        "index": index,
        "ok": bool(fit["ok"]),
        "error": fit.get("error", ""),
        "n_hits": n_obs,
        "iterations": fit["iterations"],
        "newton_steps": fit["newton_steps"],
        "grad_norm": fit["grad_norm"],
        "potential": fit["potential"],
        "newton_decrement": fit.get("newton_decrement", float("nan")),
        "converged": bool(fit.get("newton_decrement", np.inf) < 0.1),
        "timings": {"setup_s": t_setup, "data_s": t_data, "map_s": fit["map_s"],
                    "hessian_s": fit["hessian_s"], "nuts_s": fit.get("nuts_s", 0.0)},
        "divergences": fit.get("divergences", 0),
        "pareto_k": fit.get("pareto_k", float("nan")),
        "is_ess": fit.get("is_ess", float("nan")),
        "truth": truth,
        "truth_dEdx": truth_dEdx.tolist(),
        **extra,
        "params": {},
    }
    if fit["ok"]:
        draws = fit["draws"]
        names = [*cfg.free, *[f"dEdx[{i}]" for i in range(ctx.problem.n_latent)]]
        tvals = [*(truth[p] for p in cfg.free), *truth_dEdx]
        for j, (name, tv) in enumerate(zip(names, tvals, strict=True)):
            d = draws[name] if name in draws else draws["dEdx"][:, j - len(cfg.free)]
            m = fit["map"][name] if name in fit["map"] else fit["map"]["dEdx"][j - len(cfg.free)]
            rec["params"][name] = _summarise(np.asarray(d, np.float64), float(tv), float(m))
    if outdir is not None:
        _atomic_write_json(replica_path(outdir, index), rec)
    return rec


def _summarise(d: np.ndarray, truth: float, map_value: float) -> dict[str, float]:
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    q = np.quantile(d, [0.05, 0.25, 0.5, 0.75, 0.95])
    rank = int(np.sum(d < truth))
    return {
        "truth": truth,
        "map": map_value,
        "mean": mean,
        "sd": sd,
        "q05": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "rank": rank,
        "n_draws": int(d.size),
        "pit": (rank + 0.5) / (d.size + 1),
        "pull": (mean - truth) / sd if sd > 0 else float("nan"),
        "in50": bool(q[1] <= truth <= q[3]),
        "in90": bool(q[0] <= truth <= q[4]),
    }


def campaign_dir(cfg: CampaignConfig, root: str | Path = DEFAULT_ROOT) -> Path:
    """``root/<name>``: replica files and the campaign's ``config.json``."""
    return Path(root) / cfg.name


def _worker_init() -> None:
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                          "intra_op_parallelism_threads=1")


def run_campaign(
    cfg: CampaignConfig,
    outdir: str | Path | None = None,
    *,
    executor: Any = None,
    workers: int = 1,
    indices: Iterable[int] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every replica of ``cfg`` that has no result file in ``outdir`` yet; return all records.

    ``executor``: anything with ``submit(fn, *args)`` returning a future with ``result()``
    (``concurrent.futures``, a Dask ``distributed.Client``; for Ray, ``ray.util.dask`` or an
    adapter). None: a ``ProcessPoolExecutor`` with ``workers`` spawned processes (JAX is not
    fork-safe), or in-process when ``workers == 1``.
    """
    outdir = Path(outdir) if outdir is not None else campaign_dir(cfg)
    outdir.mkdir(parents=True, exist_ok=True)
    cfg_file = outdir / "config.json"
    if cfg_file.exists():
        old = CampaignConfig.from_dict(json.loads(cfg_file.read_text())["config"])
        if replace(old, n_replicas=cfg.n_replicas) != cfg:
            raise ValueError(
                f"{outdir} holds replicas of a different configuration ({old}); "
                "use another directory or remove it"
            )
    else:
        _atomic_write_json(cfg_file, {"config": cfg.to_dict(), "versions": versions()})
    todo = [i for i in (indices if indices is not None else range(cfg.n_replicas))
            if not replica_path(outdir, i).exists()]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=cfg.name, disable=not progress)
    own = None
    if executor is None and workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        own = executor = ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
        )
    try:
        if executor is None:
            for i in todo:
                run_replica(cfg, i, outdir)
                bar.update()
        else:
            futures = [executor.submit(run_replica, cfg.to_dict(), i, str(outdir)) for i in todo]
            for fut in futures:
                fut.result()
                bar.update()
    finally:
        bar.close()
        if own is not None:
            own.shutdown()
    return load_records(outdir)


def with_replicas(cfg: CampaignConfig, n: int) -> CampaignConfig:
    """A copy of ``cfg`` with ``n`` replicas (same seeds: replica i is the same data set)."""
    return replace(cfg, n_replicas=n)

