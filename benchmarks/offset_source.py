r"""Where the E / D_L offset of long fits comes from (issue 12): the same muons fitted with and
without the energy-loss fluctuations below the latent length.

    .venv/bin/python benchmarks/offset_source.py --seeds 0 1 --variants landau flat
    .venv/bin/python benchmarks/offset_source.py --seeds 0 --variants flat-converged

Data: ``forward.generator.generate_length(card, "muons", LENGTH, seed, n0=4)`` (whole generated
cosmic muons, default cuts, ~150 cm), hits simulated at the card's nominal parameters with every
noise term (key = seed). Fit: ``build_problem`` with 5 cm latents, ``LaplaceFitter`` (MAP + dense
Laplace, 2000 draws); pull = (posterior mean - truth) / posterior sd.

Variants:

* ``landau``: the generator's segments (Landau/Vavilov dE per 0.4 cm) and the package default
  (straggling below the latent in the charge mark only);
* ``flat``: every segment's dE replaced by its track's mean dE/dx times its length (the data then
  have no fluctuation below the latent) and the model without the straggling term;
* ``landau-fine``: the generator's segments, fitted with latents of FINE_LATENT_CM (about one
  0.4 cm segment each, the published split-t's scale, with the per-length prior) and no
  straggling term: the fluctuations are then latents themselves, in the trigger and in the mark;
* ``flat-converged``: ``flat`` with the readout likelihood at converged settings (16 Gauss-Hermite
  nodes, no lag band, exact ADC-bin marks), to see whether what is left is the readout's
  approximations.

* ``landau-trigger`` / ``landau-timing``: ``landau`` with the straggling below the latent also
  in the trigger times (``LikelihoodConfig(straggling="trigger")``: one scale shared with the held
  charge; ``"timing"``: the held charge's scale independent of the trigger's).

Each record also has the latent dE/dx pulls (posterior mean minus the true latent mean, in
posterior sd): their mean and sd over the sample's latents.

One fit per (seed, variant), each in this process one after the other; JSON written atomically
to ``benchmarks/results/offset_source.json`` (merged by (seed, variant) with an existing file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import fit_memory as FM

SCHEMA = "lartpc_bayes.benchmarks.offset_source/1"
DEFAULT_OUT = C.RESULTS / "offset_source.json"
LENGTH_CM = 150.0
VARIANTS = ("landau", "flat", "flat-converged", "landau-fine", "landau-trigger", "landau-timing")
#: latent length of the ``landau-fine`` variant, cm: about one generated segment per latent
FINE_LATENT_CM = 0.5


def fit_one(seed: int, variant: str, length_cm: float = LENGTH_CM) -> dict:
    import jax
    import numpy as np

    from lartpc_bayes.detector import PARAM_NAMES, load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.generator import generate_length
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.infer import LaplaceFitter
    from lartpc_bayes.likelihood import LikelihoodConfig
    from lartpc_bayes.model import build_problem
    from lartpc_bayes.results import latent_truth

    card = load_card("module0")
    seg = generate_length(card, "muons", length_cm, seed, n0=4)
    if variant.startswith("flat"):
        key = seg.event_id.astype(np.int64) * 100000 + seg.track_id
        _, inv = np.unique(key, return_inverse=True)
        mean = np.bincount(inv, weights=seg.dE) / np.bincount(inv, weights=seg.dx)
        seg = seg._replace(dE=mean[inv] * seg.dx)
    truth = card.nominal()
    hits, _ = simulate_hits(jax.random.key(seed), card, seg, DetectorParams.from_dict(truth))
    cfg = (LikelihoodConfig(n_nodes=16, max_lag=0, mark="exact")
           if variant == "flat-converged" else None)
    if variant in ("landau-trigger", "landau-timing"):
        cfg = LikelihoodConfig(straggling=variant.split("-")[1])
    fine = variant == "landau-fine"
    problem = build_problem(card, seg, hits, latent_length_cm=FINE_LATENT_CM if fine else 5.0,
                            charge_fluctuations=variant in ("landau", "landau-trigger",
                                                            "landau-timing"),
                            likelihood=cfg)
    t0 = time.perf_counter()
    fit = LaplaceFitter(problem).fit(seed=seed, num_draws=2000)
    out = {"seed": seed, "variant": variant, "length_cm": float(seg.dx.sum()),
           "n_latents": int(problem.n_latent),
           "ok": bool(fit["ok"]), "fit_s": time.perf_counter() - t0, "pulls": {}}
    if fit["ok"]:
        for p in PARAM_NAMES:
            d = np.asarray(fit["draws"][p])
            out["pulls"][p] = float((d.mean() - truth[p]) / d.std())
        if problem.n_latent:
            lt = latent_truth(problem, seg.dEdx, seg.dx)
            d = np.asarray(fit["draws"]["dEdx"]).reshape(-1, problem.n_latent)
            z = (d.mean(0) - lt) / d.std(0)
            z = z[np.isfinite(z)]
            out["latent_pulls"] = {"mean": float(z.mean()), "sd": float(z.std()), "n": int(z.size)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["landau", "flat"])
    ap.add_argument("--length", type=float, default=LENGTH_CM)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    old = json.loads(a.out.read_text()) if a.out.exists() else {"fits": []}
    fits = {(f["seed"], f["variant"]): f for f in old.get("fits", [])}
    for s in a.seeds:
        for v in a.variants:
            r = fit_one(s, v, a.length)
            r["git"] = C.git_state()
            fits[(s, v)] = r
            print(json.dumps({k: r.get(k) for k in ("seed", "variant", "ok", "fit_s", "pulls",
                                                    "latent_pulls")}), flush=True)
            FM._write_atomic(a.out, {"schema": SCHEMA, "machine": C.machine_info(),
                                     "versions": C.versions(), "length_cm": a.length,
                                     "fits": sorted(fits.values(),
                                                    key=lambda f: (f["seed"], f["variant"]))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
