r"""Whitened NUTS against the block Laplace on ~1 m of track (issue 14 item 3).

    .venv/bin/python benchmarks/block_nuts_check.py                 # 100 cm, seed 0, NumPyro
    .venv/bin/python benchmarks/block_nuts_check.py --sampler blackjax --out FILE

Data as the scale study (``scale_study.sample``: 90 % generated cosmic muons, 10 % stopping
protons, Module 0, nominal parameters, every noise term). Fit: ``build_event_batch`` (latents every
5 cm), ``LaplaceFitter(batch, hessian="block").fit()`` (MAP, block Hessian, 4000 Gaussian draws),
then :func:`lartpc_bayes.infer.block_laplace.whitened_nuts` on the joint posterior whitened by the
same block factor (one chain from the MAP; a dense metric and the step size adapted in warm-up,
trees of at most 63 steps; progress printed every 50 draws).

Criteria (issue 14): for every free parameter, ``|mean_NUTS - mean_Laplace| <= 0.3 sd_Laplace``
and ``|sd_NUTS / sd_Laplace - 1| <= 0.15``. The Monte-Carlo error of the NUTS mean is
``sd / sqrt(ESS)`` (ESS from ArviZ on the chain), reported beside each difference, as is the
sd's relative error ``~1 / sqrt(2 ESS)``. Written atomically to
``benchmarks/results/block_nuts_check.json`` with commit, versions and machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import fit_memory as FM

SCHEMA = "lartpc_bayes.benchmarks.block_nuts_check/1"
DEFAULT_OUT = C.RESULTS / "block_nuts_check.json"
MEAN_TOL_SD = 0.3
SD_TOL = 0.15


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sampler", choices=("numpyro", "blackjax"), default="numpyro")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument("--max-tree-depth", type=int, default=6)
    ap.add_argument("--metric", choices=("identity", "diag", "dense"), default="dense",
                    help="NUTS metric in the whitened space: identity, or adapted in warm-up "
                         "(diagonal or dense; default dense, docs/scale.md)")
    a = ap.parse_args(argv)

    import arviz_stats  # noqa: F401
    import numpy as np
    import scale_study as SS
    import xarray as xr

    from lartpc_bayes.infer import LaplaceFitter
    from lartpc_bayes.infer.block_laplace import whitened_nuts
    from lartpc_bayes.infer.events import build_event_batch

    t0 = time.perf_counter()
    card, seg, hits, info = SS.sample(a.length, a.seed)
    batch = build_event_batch(card, seg, hits, latent_length_cm=SS.LATENT_LENGTH_CM)
    fitter = LaplaceFitter(batch, hessian="block")
    fit = fitter.fit(seed=a.seed, num_draws=4000)
    t1 = time.perf_counter()
    if not fit["ok"]:
        print(f"block Laplace failed: {fit.get('error')}", file=sys.stderr)
        return 1
    print(f"block Laplace: {t1 - t0:.0f} s, dim {fitter.dim}, {info}", flush=True)
    nuts = whitened_nuts(fitter, fit, sampler=a.sampler, seed=a.seed, num_warmup=a.warmup,
                         num_draws=a.draws, max_tree_depth=a.max_tree_depth,
                         adapt_mass_matrix=a.metric != "identity",
                         dense_mass=a.metric == "dense",
                         progress=lambda m: print(m, flush=True))
    steps = nuts["stats"]["n_steps"]
    rows, ok = {}, True
    truth = card.nominal()
    for p in batch.free:
        lap, nu = np.asarray(fit["draws"][p]), np.asarray(nuts["draws"][p])
        ess = float(np.asarray(xr.DataArray(nu[None], dims=["chain", "draw"]).azstats.ess(
            sample_dims=["chain", "draw"])))
        m_l, s_l, m_n, s_n = lap.mean(), lap.std(), nu.mean(), nu.std()
        d_mean, r_sd = (m_n - m_l) / s_l, s_n / s_l
        good = abs(d_mean) <= MEAN_TOL_SD and abs(r_sd - 1) <= SD_TOL
        ok &= good
        rows[p] = {"truth": float(truth[p]), "laplace_mean": float(m_l), "laplace_sd": float(s_l),
                   "nuts_mean": float(m_n), "nuts_sd": float(s_n), "ess": ess,
                   "mean_diff_in_laplace_sd": float(d_mean),
                   "mean_mc_error_in_sd": float(s_n / s_l / np.sqrt(max(ess, 1.0))),
                   "sd_ratio": float(r_sd),
                   "sd_ratio_mc_error": float(1 / np.sqrt(2 * max(ess, 1))),
                   "within_targets": bool(good)}
        print(f"{p:5s} Laplace {m_l:.5g} +- {s_l:.3g}   NUTS {m_n:.5g} +- {s_n:.3g}   "
              f"dmean {d_mean:+.2f} sd   sd ratio {r_sd:.3f}   ESS {ess:.0f}")
    doc = {"schema": SCHEMA, "machine": C.machine_info(), "git": C.git_state(),
           "versions": C.versions(), "problem": info, "dim": int(fitter.dim),
           "sampler": a.sampler, "warmup": a.warmup, "draws": a.draws,
           "max_tree_depth": a.max_tree_depth, "adapt_mass_matrix": a.metric != "identity",
           "dense_mass": a.metric == "dense",
           "laplace_fit_s": t1 - t0, "nuts_s": nuts["nuts_s"], "warmup_s": nuts["warmup_s"],
           "sample_s": nuts["sample_s"], "step_size": nuts["step_size"],
           "divergences": nuts["divergences"], "mean_steps": nuts["mean_steps"],
           "steps_histogram": {str(int(v)): int(c) for v, c in
                               zip(*np.unique(steps, return_counts=True), strict=True)},
           "criteria": {"mean_within_sd": MEAN_TOL_SD, "sd_ratio_within": SD_TOL},
           "parameters": rows, "all_within_targets": bool(ok)}
    FM._write_atomic(a.out, doc)
    print(f"divergences {nuts['divergences']}, mean leapfrog steps {nuts['mean_steps']:.1f}, "
          f"NUTS {nuts['nuts_s']:.0f} s; all within targets: {ok}; -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
