"""Half-fake data validation (issue 13 item 4; talks 001/002): the same fake data fitted with
(a) the true segments, (b) reconstructed segments with the geometry fixed, (c) reconstructed
segments with geometry latents. One JSON per seed and fit (resumable). MAP + Laplace.

``python -m lartpc_bayes.validation.halffake --seeds 0-19 --length 100 --out out/halffake``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..detector import PARAM_NAMES, load_card

#: the three fits of the campaign
FITS = ("a_true", "b_reco_fixed", "c_reco_latent")


def make_data(seed: int, length_cm: float, min_angle_deg: float, detector: str = "module0"):
    """Muons of >= ``length_cm`` in the published window at a random target; returns
    (card, truth dict, segments, hits)."""
    import jax

    from ..detector.physics import DetectorParams
    from ..forward.generator import SelectionCuts, generate
    from ..forward.simulate import simulate_hits

    card = load_card(detector)
    rng = np.random.default_rng(1000 + seed)
    truth = {}
    for p in card.params:  # inner 80 % of every prior range
        w = p.high - p.low
        truth[p.name] = float(rng.uniform(p.low + 0.1 * w, p.high - 0.1 * w))
    cuts = SelectionCuts(min_angle_to_drift_deg=min_angle_deg)
    n = 4
    while True:
        segs = generate(card, "muons", n, seed, cuts=cuts)
        if segs.dx.sum() >= length_cm:
            break
        n += 2
    hits, _ = simulate_hits(jax.random.key(seed), card, segs, DetectorParams.from_dict(truth))
    return card, truth, segs, hits


def _summ(fit, problem, truth, t_s: float) -> dict:
    out = {"time_s": t_s, "params": {}}
    for p in problem.free:
        x = np.asarray(fit.samples[p]).ravel()
        out["params"][p] = {"mean": float(x.mean()), "sd": float(x.std()),
                            "q05": float(np.quantile(x, 0.05)), "q95": float(np.quantile(x, 0.95)),
                            "truth": truth[p]}
    # per track (u, v, d): offsets in cm, direction changes in mrad
    for site, key, unit, scale in (("geo_shift_cm", "geo_shift", "cm", 1.0),
                                   ("geo_tilt", "geo_tilt", "mrad", 1e3)):
        if site in fit.samples:
            g = scale * np.asarray(fit.samples[site]).reshape(-1, problem.geometry.n_tracks, 3)
            out[f"{key}_mean_{unit}"] = g.mean(0).tolist()
            out[f"{key}_sd_{unit}"] = g.std(0).tolist()
    return out


def run_seed(seed: int, out: Path, length_cm: float, min_angle_deg: float,
             fits: tuple[str, ...] = FITS) -> None:
    from ..infer import run_laplace
    from ..model import build_problem, build_reco_problem
    from ..reco.pipeline import reconstruct

    todo = [f for f in fits if not (out / f"seed{seed:03d}_{f}.json").exists()]
    if not todo:
        return
    card, truth, segs, hits = make_data(seed, length_cm, min_angle_deg)
    res = reconstruct(hits, card)
    meta = {"seed": seed, "length_true_cm": float(segs.dx.sum()),
            "length_reco_cm": float(res.segments.dx.sum()), "n_reco_tracks": len(res.tracks),
            "n_selected": res.attrs["n_selected"]}
    for f in todo:
        t0 = time.perf_counter()
        try:
            if f == "a_true":
                prob = build_problem(card, segs, hits, latent_length_cm=5.0)
            else:
                prob = build_reco_problem(card, res, hits, geometry_latents=(f == "c_reco_latent"),
                                          latent_length_cm=5.0)
            fit = run_laplace(prob, seed=seed, num_samples=2000)
            summ = _summ(fit, prob, truth, time.perf_counter() - t0)
            rec = {**meta, "fit": f, "ok": True, **summ}
        except Exception as exc:  # record failures, not only successes
            rec = {**meta, "fit": f, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "time_s": time.perf_counter() - t0}
        path = out / f"seed{seed:03d}_{f}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=1))
        tmp.replace(path)
        print(f"seed {seed} {f}: ok={rec['ok']} {rec['time_s']:.0f} s", flush=True)


def plot_tracks(seeds: list[int], path: Path, length_cm: float, min_angle_deg: float,
                max_tracks: int = 3) -> Path:
    """One PNG of reconstructed against true tracks of the campaign's data: the ``max_tracks``
    longest selected tracks of each seed stacked (:func:`lartpc_bayes.results.plots.
    plot_reco_vs_true` per seed, then the images joined)."""
    import matplotlib.image as mpimg

    from ..reco.pipeline import reconstruct
    from ..results.plots import _save, plot_reco_vs_true, plt

    parts = []
    for s in seeds:
        card, _, segs, hits = make_data(s, length_cm, min_angle_deg)
        res = reconstruct(hits, card)
        parts.append(plot_reco_vs_true(card, segs, res, path.with_name(f"{path.stem}_{s}.png"),
                                       max_tracks=max_tracks, title=f"half-fake seed {s}"))
    imgs = [mpimg.imread(p) for p in parts]
    width = max(i.shape[1] for i in imgs)
    fig, axs = plt.subplots(len(imgs), 1, figsize=(8.0, sum(i.shape[0] for i in imgs) / 110),
                            squeeze=False)
    for ax, im in zip(axs[:, 0], imgs, strict=True):
        ax.imshow(im[:, :width])
        ax.axis("off")
    fig.subplots_adjust(hspace=0.02, left=0, right=1, top=1, bottom=0)
    out = _save(fig, path)
    for p in parts:
        p.unlink()
    return out


def summarize(out: Path) -> str:
    """Markdown tables of the campaign in ``out``.

    Shifts from the true-segment fit (a): ``(mean_b - mean_a) / sd_a`` and ``(mean_c - mean_a)``
    in sd of (a) and of (c) (a parameter that the geometry latents make less measured has
    sd_c >> sd_a; the shift in sd_c says whether (a) lies inside (c)'s posterior); the median sd
    ratio (c)/(a); the fraction of seeds whose central 90 % interval covers the truth (binomial
    sd ``sqrt(0.09 / n)``: 0.067 at n = 20); and the pulls ``(mean - truth) / sd`` of (a) and
    (c), a closure at this track length with the truth drawn in the prior box."""
    recs: dict[int, dict[str, dict]] = {}
    for p in sorted(out.glob("seed*_*.json")):
        r = json.loads(p.read_text())
        recs.setdefault(r["seed"], {})[r["fit"]] = r
    def with_(*fits):
        return sorted(s for s, d in recs.items() if all(d.get(f, {}).get("ok") for f in fits))

    ac, ab = with_("a_true", "c_reco_latent"), with_("a_true", "b_reco_fixed")
    failed = {f: [s for s, d in recs.items() if f in d and not d[f]["ok"]] for f in FITS}
    times = {f: [d[f]["time_s"] for d in recs.values() if d.get(f, {}).get("ok")] for f in FITS}
    lines = [f"seeds with (a) and (c): {len(ac)}, with (a) and (b): {len(ab)} (of {len(recs)} "
             f"started); failed fits (seeds): {failed}; median fit time (s): "
             + ", ".join(f"{f} {np.median(t):.0f}" for f, t in times.items() if t), "",
             "| param | shift (b)-(a) [sd_a] | shift (c)-(a) [sd_a] | shift (c)-(a) [sd_c] | "
             "max abs (c)-(a) [sd_c] | sd ratio (c)/(a) median | 90 % coverage (a) | (b) | (c) |"
             " pull (a) | pull (c) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def shift(x, y, unit):
        return np.array([(yy["mean"] - xx["mean"]) / uu["sd"]
                         for xx, yy, uu in zip(x, y, unit, strict=True)])

    def ms(v):
        return f"{v.mean():+.2f} +- {v.std():.2f}" if v.size else "-"

    def pull(rs):
        v = np.array([(r["mean"] - r["truth"]) / r["sd"] for r in rs])
        return f"{v.mean():+.2f} +- {v.std(ddof=1) if len(v) > 1 else 0:.2f}"

    def cov(rs):
        return f"{np.mean([r['q05'] <= r['truth'] <= r['q95'] for r in rs]):.2f}" if rs else "-"

    for p in PARAM_NAMES:
        if not ac:
            break
        a, c = ([recs[s][f]["params"][p] for s in ac] for f in ("a_true", "c_reco_latent"))
        a2, b = ([recs[s][f]["params"][p] for s in ab] for f in ("a_true", "b_reco_fixed"))
        sb, sca, scc = shift(a2, b, a2), shift(a, c, a), shift(a, c, c)
        ratio = np.array([y["sd"] / x["sd"] for x, y in zip(a, c, strict=True)])
        lines.append(f"| {p} | {ms(sb)} | {ms(sca)} | {ms(scc)} | "
                     f"{np.abs(scc).max():.2f} | {np.median(ratio):.2f} | {cov(a)} | "
                     f"{cov(b)} | {cov(c)} | {pull(a)} | {pull(c)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-19")
    ap.add_argument("--length", type=float, default=100.0)
    ap.add_argument("--min-angle", type=float, default=60.0)
    ap.add_argument("--out", default="out/halffake")
    ap.add_argument("--fits", default=",".join(FITS),
                    help=f"comma-separated subset of {', '.join(FITS)} (run in this order)")
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--plot", metavar="PNG", help="instead: reconstructed vs true tracks of the "
                    "seeds (e.g. docs/figures/halffake_tracks.png)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lo, _, hi = a.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    if a.plot:
        print(plot_tracks(seeds, Path(a.plot), a.length, a.min_angle))
        return 0
    if a.summary:
        print(summarize(out))
        return 0
    from .records import _atomic_write_json, versions

    fits = tuple(f.strip() for f in a.fits.split(",") if f.strip())
    bad = sorted(set(fits) - set(FITS))
    if bad:
        ap.error(f"--fits: unknown fit(s) {bad}; known: {', '.join(FITS)}")
    # provenance of the campaign: commit and versions, one file per (seeds, fits) start, so that
    # a campaign run in passes keeps every pass's stamp
    tag = "" if fits == FITS else "_" + "-".join(fits)
    _atomic_write_json(out / f"config_seeds{a.seeds}{tag}.json",
                       {"seeds": a.seeds, "fits": list(fits), "length_cm": a.length,
                        "min_angle_deg": a.min_angle, "versions": versions()})
    for s in seeds:
        run_seed(s, out, a.length, a.min_angle, fits)
    print(summarize(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
