"""The single-problem checks of docs/validation.md: NLL scans (talk 000), the dE/dx-only fit,
robustness (talk 002) and the posterior against the Hessian pseudo-correlation.

Every function writes a JSON (and, where useful, a netCDF) under ``root`` and returns the dict;
:mod:`lartpc_bayes.validation.report` turns them into tables and figures.
``python -m lartpc_bayes.validation.checks {scans,dedx,robustness,hessian} [--root DIR]``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..infer.laplace import LaplaceFitter
from .campaign import DEFAULT_ROOT
from .records import _atomic_write_json, versions

#: the documented problem of docs/inference.md: two muons (generator seed 3) at > 60 degrees to
#: the drift axis, 18.7 cm after the drift-window cut, the demo target
DOC_TRACKS = {"sample": "muons", "n_tracks": 2, "seed": 3, "min_angle_deg": 60.0}


def _card_and_tracks(n_tracks: int = 2, seed: int = 3, min_angle_deg: float = 60.0,
                     sample: str = "muons"):
    from ..detector import load_card
    from ..forward.generator import SelectionCuts, generate

    card = load_card("module0")
    seg = generate(card, sample, n_tracks, seed,
                   cuts=SelectionCuts(min_angle_to_drift_deg=min_angle_deg))
    return card, seg


def _params(card, values: dict[str, float]):
    from ..detector import PARAM_NAMES
    from ..detector.physics import DetectorParams

    full = {**card.nominal(), **values}
    return DetectorParams(*(float(full[p]) for p in PARAM_NAMES))


# --------------------------------------------------------------------------------------------
# item 6: posterior (NUTS) against the Hessian pseudo-correlation
# --------------------------------------------------------------------------------------------


def posterior_vs_hessian(root: str | Path = DEFAULT_ROOT, *, draws: int = 200, warmup: int = 200,
                         chains: int = 2, seed: int = 3) -> dict[str, Any]:
    """NUTS on the documented problem (all six free, latent dE/dx, PPP, ``max_lag=48``) at the
    demo target; the posterior correlation and sd beside the Hessian pseudo-correlation and sd."""
    import jax

    from ..calibrate import DEMO_TARGET, calibrate
    from ..forward.simulate import simulate_hits
    from ..likelihood import LikelihoodConfig
    from ..model import build_problem
    from ..results import correlation_matrix, hessian_correlation, latent_truth, save_datatree

    card, seg = _card_and_tracks()
    hits, _ = simulate_hits(jax.random.key(seed), card, seg, _params(card, DEMO_TARGET))
    problem = build_problem(card, seg, hits, latent_length_cm=5.0,
                            likelihood=LikelihoodConfig(kind="ppp", max_lag=48))
    t0 = time.perf_counter()
    dt = calibrate(problem, method="nuts", draws=draws, warmup=warmup, chains=chains, seed=seed,
                   truth=dict(DEMO_TARGET), truth_dEdx=latent_truth(problem, seg.dEdx, seg.dx),
                   ppc_draws=20)
    wall = time.perf_counter() - t0
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_datatree(dt, root / "posterior_vs_hessian.nc")
    corr = correlation_matrix(dt)
    hc, hsd = hessian_correlation(dt)
    post = dt["posterior"].to_dataset()
    names = list(corr.index)
    out = {
        "params": names,
        "posterior_corr": corr.values.tolist(),
        "hessian_corr": hc.loc[names, names].values.tolist(),
        "posterior_sd": [float(post[p].std()) for p in names],
        "posterior_mean": [float(post[p].mean()) for p in names],
        "hessian_sd": [float(hsd[p]) for p in names],
        "truth": [float(DEMO_TARGET[p]) for p in names],
        "divergences": int(np.asarray(dt["sample_stats"]["diverging"]).sum()),
        "wall_s": wall,
        "config": {"draws": draws, "warmup": warmup, "chains": chains, "seed": seed,
                   "tracks": DOC_TRACKS, "length_cm": float(seg.dx.sum()),
                   "n_hits": int(hits.n), "n_latent": int(problem.n_latent)},
        "versions": versions(),
    }
    _atomic_write_json(root / "posterior_vs_hessian.json", out)
    return out


# --------------------------------------------------------------------------------------------
# item 5: robustness
# --------------------------------------------------------------------------------------------


def _laplace_fit(problem, table, seed: int, fitter_cache: dict, key) -> dict[str, Any]:
    if key not in fitter_cache:
        fitter_cache[key] = LaplaceFitter(problem, maxiter=400)
    return fitter_cache[key].fit(table, seed=seed, num_draws=2000, scan_E=True)


def _with_max_hits(problem, table):
    from ..likelihood import hit_list_sizes

    return dataclasses.replace(
        problem,
        likelihood=dataclasses.replace(problem.likelihood,
                                       max_hits=hit_list_sizes(problem.plan, table, 3.0)),
    )


def robustness(root: str | Path = DEFAULT_ROOT, *, n_seeds: int = 4, seed0: int = 100,
               n_tracks: int = 1, track_seed: int = 2,
               shift_cm: float = 0.3, pion_fraction: float = 0.10, prior_shift: float = 0.05
               ) -> dict[str, Any]:
    """Shifts of the posterior means, in units of the baseline posterior sd, when
    (a) the fitted segments are displaced by ``shift_cm`` along the drift axis,
    (b) pion segments making ``pion_fraction`` of the track length are added to the muon sample
        (and fitted with the muon dE/dx prior),
    (c) the dE/dx prior location is ``1 + prior_shift`` times the published one.
    Data: ``n_tracks`` muons (generator seed ``track_seed``; default the 7.8 cm muon of the SBC)
    at the demo target, full simulator with noise; all six parameters free; MAP + Laplace (the
    Laplace mean is the MAP in the unconstrained space); ``n_seeds`` noise seeds."""
    import jax

    from ..calibrate import DEMO_TARGET
    from ..data import Segments
    from ..detector import PARAM_NAMES
    from ..forward.simulate import simulate_hits
    from ..likelihood import LikelihoodConfig, hits_to_table
    from ..model import build_problem

    card, mu = _card_and_tracks(n_tracks=n_tracks, seed=track_seed)
    _, pi_all = _card_and_tracks(n_tracks=4, seed=7, sample="pions")
    # pion segments (one track, in file order) up to pion_fraction of the muon length
    target_len = pion_fraction * float(mu.dx.sum())
    keep = (np.cumsum(pi_all.dx) - pi_all.dx) < target_len
    pi = pi_all.select(keep)
    pi = pi._replace(event_id=pi.event_id + int(mu.event_id.max()) + 1)
    mixed = Segments.concatenate([mu, pi])
    params = _params(card, DEMO_TARGET)
    lik = LikelihoodConfig(kind="ppp", max_lag=48)
    drift_axis = int(card.geometry.drift_axis)

    def shifted(s: Segments, d: float) -> Segments:
        st, en = np.array(s.start, float), np.array(s.end, float)
        st[:, drift_axis] += d
        en[:, drift_axis] += d
        return s._replace(start=st, end=en)

    variants = {
        "baseline": (mu, mu, {}),
        "drift_shift": (mu, shifted(mu, shift_cm), {}),
        "pions": (mixed, mixed, {}),
        "dEdx_prior_loc": (mu, mu, {"loc_scale": 1.0 + prior_shift}),
    }
    cache: dict = {}
    rows = []
    for i in range(n_seeds):
        key = jax.random.key(seed0 + i)
        data = {}
        for name, (sim_seg, fit_seg, opt) in variants.items():
            sk = id(sim_seg)
            if sk not in data:
                data[sk] = simulate_hits(key, card, sim_seg, params)[0]
            hits = data[sk]
            problem = build_problem(card, fit_seg, None, latent_length_cm=5.0, likelihood=lik)
            if "loc_scale" in opt:
                pr = dict(problem.prior)
                pr["loc"] = pr["loc"] * opt["loc_scale"]
                problem = dataclasses.replace(problem, prior=pr)
            table, n_out = hits_to_table(problem.plan, hits, card.electronics.max_hits_per_pixel)
            if name not in cache:
                problem = _with_max_hits(problem, table)
                cache[name + ":problem"] = problem
            problem = cache[name + ":problem"]
            t0 = time.perf_counter()
            fit = _laplace_fit(problem, table, seed0 + i, cache, name)
            row = {"variant": name, "seed": seed0 + i, "ok": fit["ok"],
                   "wall_s": time.perf_counter() - t0, "n_outside": n_out,
                   "newton_decrement": fit.get("newton_decrement", float("nan"))}
            if fit["ok"]:
                for p in PARAM_NAMES:
                    d = np.asarray(fit["draws"][p], np.float64)
                    row[p + "_mean"], row[p + "_sd"] = float(d.mean()), float(d.std(ddof=1))
            rows.append(row)
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
    out = {"rows": rows, "truth": dict(DEMO_TARGET), "shift_cm": shift_cm,
           "pion_fraction": float(pi.dx.sum() / mu.dx.sum()), "prior_shift": prior_shift,
           "n_seeds": n_seeds, "versions": versions(),
           "shifts": robustness_shifts(rows)}
    _atomic_write_json(Path(root) / "robustness.json", out)
    return out


def robustness_shifts(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per variant and parameter: mean and standard error over seeds of
    (mean_variant - mean_baseline) / sd_baseline (same data set, same seed)."""
    from ..detector import PARAM_NAMES

    by = {(r["variant"], r["seed"]): r for r in rows if r["ok"]}
    seeds = sorted({r["seed"] for r in rows})
    ref_of = {"drift_shift": "baseline", "dEdx_prior_loc": "baseline", "pions": "baseline"}
    out: dict[str, dict[str, list[float]]] = {}
    for v, ref in ref_of.items():
        out[v] = {}
        for p in PARAM_NAMES:
            z = [(by[(v, s)][p + "_mean"] - by[(ref, s)][p + "_mean"]) / by[(ref, s)][p + "_sd"]
                 for s in seeds if (v, s) in by and (ref, s) in by]
            if z:
                out[v][p] = [float(np.mean(z)), float(np.std(z, ddof=1) / np.sqrt(len(z)))
                             if len(z) > 1 else float("nan"), len(z)]
    return out


# --------------------------------------------------------------------------------------------
# item 4a: NLL scans on real stochastic, fake stochastic and analytic (talk 000)
# --------------------------------------------------------------------------------------------


def _nll_parts_fn(problem):
    """jit(params_vector(6), dEdx_seg, table) -> (log L, -sum lambda) of the problem's
    likelihood (PPP or sequential); the constant n_outside log eps is left out."""
    import jax
    import jax.numpy as jnp

    from ..detector.physics import DetectorParams
    from ..likelihood import log_likelihood
    from ..likelihood.readout_prob import readout_tensors
    from ..model import _expected_charge

    card, plan, cfg = problem.card, problem.plan, problem.likelihood
    el = card.electronics

    @jax.jit
    def f(theta, dEdx_seg, table):
        params = DetectorParams(*theta)
        charges = _expected_charge(plan.device, dEdx_seg, params, card)
        ll = log_likelihood(charges, plan.buckets, table, 0, el, cfg)
        count = 0.0
        for (Q, _), b in zip(charges, plan.buckets, strict=True):
            rt = readout_tensors(Q, el, cfg.n_nodes, cfg.max_lag)
            count = count - (rt.expected_hits * b.chan_mask).sum()
        return ll, count

    return f, jnp


def _analytic_fn(problem, theta0, dEdx_seg, wmin: float = 1e-7):
    """Campbell's theorem: E[log L_PPP(theta)] over data with the hit intensity and marks of
    theta0, = sum_(c,t,a) w0 max(log lambda P(a|t; theta), log eps) - sum lambda(theta), w0 the
    intensity x mark probability at theta0 on the (channel, tick, ADC code) grid (exact for any
    point process whose first moment is the model's, in particular the stochastic readout; the
    grid keeps w0 > ``wmin``). Returns jit(theta) -> (E log L, -E sum lambda)."""
    import jax
    import jax.numpy as jnp

    from ..detector.physics import DetectorParams
    from ..likelihood.readout_prob import hit_log_intensity, readout_tensors
    from ..model import _expected_charge

    card, plan, cfg = problem.card, problem.plan, problem.likelihood
    el = card.electronics
    n_codes = 256
    log_eps = cfg.log_eps
    d = jnp.asarray(dEdx_seg, jnp.float32)

    def charges_of(theta):
        return _expected_charge(plan.device, d, DetectorParams(*theta), card)

    ch0 = charges_of(jnp.asarray(theta0, jnp.float32))
    grids = []
    for (Q, _), b in zip(ch0, plan.buckets, strict=True):
        C, W = Q.shape
        rt = readout_tensors(Q, el, cfg.n_nodes, cfg.max_lag)
        c, t, a = np.meshgrid(np.arange(C), np.arange(W), np.arange(n_codes), indexing="ij")
        c, t, a = c.ravel(), t.ravel(), a.ravel()
        li = jax.lax.map(
            lambda x, Q=Q, rt=rt: hit_log_intensity(Q, rt, x[:, 0], x[:, 1], x[:, 2], el,
                                                   cfg.n_nodes, cfg.mark),
            jnp.asarray(np.stack([c, t, a], 1).reshape(-1, 512, 3)),
        ).ravel() if (c.size % 512 == 0) else hit_log_intensity(
            Q, rt, jnp.asarray(c), jnp.asarray(t), jnp.asarray(a), el, cfg.n_nodes, cfg.mark)
        w = np.exp(np.asarray(li, np.float64)) * np.asarray(b.chan_mask)[c]
        keep = w > wmin
        grids.append((jnp.asarray(c[keep]), jnp.asarray(t[keep]), jnp.asarray(a[keep]),
                      jnp.asarray(w[keep], jnp.float32)))

    @jax.jit
    def f(theta):
        total, count = 0.0, 0.0
        for (Q, _), b, (c, t, a, w) in zip(charges_of(theta), plan.buckets, grids, strict=True):
            rt = readout_tensors(Q, el, cfg.n_nodes, cfg.max_lag)
            li = hit_log_intensity(Q, rt, c, t, a, el, cfg.n_nodes, cfg.mark)
            total = total + (w * jnp.maximum(li, log_eps)).sum()
            count = count - (rt.expected_hits * b.chan_mask).sum()
        return total + count, count

    return f


def nll_scans(root: str | Path = DEFAULT_ROOT, *, n_data: int = 8, n_points: int = 13,
              seed0: int = 200) -> dict[str, Any]:
    """NLL and its two PPP parts (-sum lambda and the hit term) as functions of k_B and of tau,
    the other parameters and every segment's dE/dx at their true values (nominal physics), on
    ``n_data`` "real stochastic" data sets (the full simulator with noise), ``n_data`` "fake
    stochastic" ones (the model's own readout, ``LArPixReadout.sample``) and the analytic
    expectation. Also the sequential likelihood on the same data sets."""
    import jax

    from ..detector import PARAM_NAMES
    from ..detector.physics import DetectorParams
    from ..forward.simulate import simulate_hits
    from ..likelihood import LArPixReadout, LikelihoodConfig, hits_to_table
    from ..model import _expected_charge, build_problem

    card, seg = _card_and_tracks()
    nom = card.nominal()
    theta0 = np.array([nom[p] for p in PARAM_NAMES], np.float32)
    d_seg = np.asarray(seg.dEdx, np.float32)
    out: dict[str, Any] = {"truth": {p: float(nom[p]) for p in PARAM_NAMES}, "n_data": n_data,
                           "length_cm": float(seg.dx.sum()), "scans": {}}
    M = card.electronics.max_hits_per_pixel
    problems = {}
    for kind in ("ppp", "sequential"):
        problems[kind] = build_problem(card, seg, None, latent_length_cm=5.0,
                                       likelihood=LikelihoodConfig(kind=kind, max_lag=48))
    plan = problems["ppp"].plan
    # data sets
    tables = {"real": [], "fake": []}
    ch0 = _expected_charge(plan.device, d_seg, DetectorParams(*theta0), card)
    dist = LArPixReadout(ch0, plan.buckets, card.electronics, problems["ppp"].likelihood)
    for i in range(n_data):
        k = jax.random.key(seed0 + i)
        hits, _ = simulate_hits(k, card, seg, DetectorParams(*map(float, theta0)))
        tables["real"].append(hits_to_table(plan, hits, M)[0])
        tables["fake"].append(np.asarray(dist.sample(jax.random.fold_in(k, 1))))
    # full-size PPP hit lists (no compaction: every slot of the table)
    for kind in problems:
        problems[kind] = dataclasses.replace(
            problems[kind], likelihood=dataclasses.replace(problems[kind].likelihood,
                                                           max_hits=()))
    fns = {k: _nll_parts_fn(pr)[0] for k, pr in problems.items()}
    analytic = _analytic_fn(problems["ppp"], theta0, d_seg)
    grids = {"k_B": np.linspace(0.04, 0.07, n_points),
             "tau": np.geomspace(800.0, 5000.0, n_points)}
    for pname, grid in grids.items():
        j = PARAM_NAMES.index(pname)
        res: dict[str, Any] = {"grid": grid.tolist()}
        for kind, fn in fns.items():
            for src, tabs in tables.items():
                ll = np.zeros((n_data, n_points))
                cnt = np.zeros((n_data, n_points))
                for i, tb in enumerate(tabs):
                    for g, v in enumerate(grid):
                        th = theta0.copy()
                        th[j] = v
                        a, b = fn(jax.numpy.asarray(th), jax.numpy.asarray(d_seg),
                                  jax.numpy.asarray(tb))
                        ll[i, g], cnt[i, g] = float(a), float(b)
                res[f"{kind}:{src}"] = {"nll": (-ll).tolist(), "count": (-cnt).tolist()}
        an, ac = [], []
        for v in grid:
            th = theta0.copy()
            th[j] = v
            a, b = analytic(jax.numpy.asarray(th))
            an.append(-float(a))
            ac.append(-float(b))
        res["ppp:analytic"] = {"nll": [an], "count": [ac]}
        out["scans"][pname] = res
        print(f"scan {pname} done", flush=True)
    out["minima"] = scan_minima(out)
    out["versions"] = versions()
    _atomic_write_json(Path(root) / "nll_scans.json", out)
    return out


def _parabola_min(x: np.ndarray, y: np.ndarray) -> float:
    """Minimum of a parabola through the lowest grid point and its neighbours."""
    i = int(np.clip(np.argmin(y), 1, len(y) - 2))
    c = np.polyfit(x[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    return float(-c[1] / (2 * c[0])) if c[0] > 0 else float(x[np.argmin(y)])


def scan_minima(scans: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Per parameter and curve: minimum of the mean curve, and mean and standard error of the
    per-data-set minima (tau scans in log tau)."""
    out: dict[str, dict[str, list[float]]] = {}
    for pname, res in scans["scans"].items():
        x = np.asarray(res["grid"])
        xs = np.log(x) if pname == "tau" else x
        back = np.exp if pname == "tau" else (lambda v: v)
        out[pname] = {}
        for key, cur in res.items():
            if key == "grid":
                continue
            y = np.asarray(cur["nll"])
            per = [back(_parabola_min(xs, yy)) for yy in y]
            out[pname][key] = [float(back(_parabola_min(xs, y.mean(0)))), float(np.mean(per)),
                               float(np.std(per, ddof=1) / np.sqrt(len(per)))
                               if len(per) > 1 else float("nan")]
    return out


# --------------------------------------------------------------------------------------------
# item 4b: dE/dx-only fit at nominal physics
# --------------------------------------------------------------------------------------------


def dedx_only(root: str | Path = DEFAULT_ROOT, *, lengths=(0.4, 1.0, 2.0, 5.0),
              n_seeds: int = 4, seed0: int = 300) -> dict[str, Any]:
    """All six parameters fixed at nominal, only the latent dE/dx free, for several latent
    lengths; one 7.8 cm muon (generator seed 2), full simulator with noise, ``n_seeds`` noise
    seeds. Per latent length: RMS relative error of the MAP and of the posterior mean (Laplace +
    importance sampling) against the true dE/dx of each latent, mean posterior sd, the
    chi^2/latent of the MAP and of the posterior mean in units of the posterior sd, and the 68 %
    coverage."""
    import jax

    from ..detector import PARAM_NAMES
    from ..forward.simulate import simulate_hits
    from ..likelihood import LikelihoodConfig, hits_to_table
    from ..model import build_problem
    from ..results import latent_truth

    card, seg = _card_and_tracks(n_tracks=1, seed=2)
    nom = card.nominal()
    params = _params(card, {})
    M = card.electronics.max_hits_per_pixel
    hits = [simulate_hits(jax.random.key(seed0 + i), card, seg, params)[0]
            for i in range(n_seeds)]
    rows = []
    for L in lengths:
        problem = build_problem(card, seg, None, latent_length_cm=L,
                                likelihood=LikelihoodConfig(kind="ppp", max_lag=48),
                                fixed={p: float(nom[p]) for p in PARAM_NAMES})
        tables = [hits_to_table(problem.plan, h, M)[0] for h in hits]
        problem = _with_max_hits(problem, max(tables, key=lambda t: int((t[..., 0] >= 0).sum())))
        fitter = LaplaceFitter(problem, maxiter=400)
        truth = np.asarray(latent_truth(problem, seg.dEdx, seg.dx), np.float64)
        for i, tb in enumerate(tables):
            fit = fitter.fit(tb, seed=seed0 + i, num_draws=2000, importance=True,
                             n_proposal=4000)
            if not fit["ok"]:
                rows.append({"latent_cm": L, "seed": seed0 + i, "ok": False})
                continue
            d = np.asarray(fit["draws"]["dEdx"], np.float64)
            mapv = np.asarray(fit["map"]["dEdx"], np.float64)
            mean, sd = d.mean(0), d.std(0, ddof=1)
            lo, hi = np.quantile(d, [0.16, 0.84], axis=0)
            rows.append({
                "latent_cm": L, "seed": seed0 + i, "ok": True, "n_latent": int(truth.size),
                "rms_rel_map": float(np.sqrt(np.mean(((mapv - truth) / truth) ** 2))),
                "rms_rel_mean": float(np.sqrt(np.mean(((mean - truth) / truth) ** 2))),
                "mean_sd_rel": float(np.mean(sd / truth)),
                "chi2_map": float(np.mean(((mapv - truth) / sd) ** 2)),
                "chi2_mean": float(np.mean(((mean - truth) / sd) ** 2)),
                "cover68": float(np.mean((lo <= truth) & (truth <= hi))),
                "spread_map": float(np.std(mapv) / np.mean(mapv)),
                "spread_truth": float(np.std(truth) / np.mean(truth)),
                "spread_mean": float(np.std(mean) / np.mean(mean)),
                "pareto_k": fit.get("pareto_k", float("nan")),
            })
            print(json.dumps(rows[-1]), flush=True)
    out = {"rows": rows, "lengths": list(lengths), "track_cm": float(seg.dx.sum()),
           "n_seeds": n_seeds, "versions": versions()}
    _atomic_write_json(Path(root) / "dedx_only.json", out)
    return out


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m lartpc_bayes.validation.checks NAME [--root DIR]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m lartpc_bayes.validation.checks")
    ap.add_argument("names", nargs="+", choices=["hessian", "robustness", "scans", "dedx"])
    ap.add_argument("--root", default=str(DEFAULT_ROOT))
    args = ap.parse_args(argv)
    for n in args.names:
        t0 = time.perf_counter()
        if n == "hessian":
            from ..infer import set_host_devices

            set_host_devices(2)
            posterior_vs_hessian(args.root)
        elif n == "robustness":
            robustness(args.root)
        elif n == "scans":
            nll_scans(args.root)
        elif n == "dedx":
            dedx_only(args.root)
        print(f"{n}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
