r"""The block Laplace with importance sampling against the whitened NUTS of
``benchmarks/block_nuts_check.py`` on the same 106 cm sample (issue 14 item 3).

    .venv/bin/python benchmarks/block_nuts_check.py     # first: NUTS -> block_nuts_check.json
    .venv/bin/python benchmarks/block_is_check.py       # then: IS -> block_is_check.json

``LaplaceFitter(batch, hessian="block").fit(seed=0, num_draws=4000, importance=True)``: the block
Laplace's proposal with a multivariate-t (nu = 7) over theta and the exact conditional Gaussian
latents, Pareto-smoothed importance weights against the exact joint posterior
(``lartpc-bayes fit --method laplace-is`` on a run). Printed and written per parameter: the IS
mean and sd against NUTS's (difference in NUTS sd, sd ratio), the PSIS k-hat and the IS ESS.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCHEMA = "lartpc_bayes.benchmarks.block_is_check/1"
NUTS_JSON = C.RESULTS / "block_nuts_check.json"
DEFAULT_OUT = C.RESULTS / "block_is_check.json"


def main() -> int:
    import numpy as np
    import scale_study as SS

    from lartpc_bayes.infer import LaplaceFitter
    from lartpc_bayes.infer.events import build_event_batch

    nuts = json.loads(NUTS_JSON.read_text())
    card, seg, hits, info = SS.sample(100.0, 0)  # block_nuts_check's defaults (--length, --seed)
    if info != nuts["problem"]:
        raise SystemExit(f"{NUTS_JSON} is for another sample ({nuts['problem']}); run "
                         "block_nuts_check.py with its defaults first")
    batch = build_event_batch(card, seg, hits, latent_length_cm=SS.LATENT_LENGTH_CM)
    t = time.perf_counter()
    fit = LaplaceFitter(batch, hessian="block").fit(seed=0, num_draws=4000, importance=True)
    wall = time.perf_counter() - t
    print("ok", fit["ok"], "k_hat", fit.get("pareto_k"), "is_ess", fit.get("is_ess"), "s", wall)
    rows = {}
    for p, r in nuts["parameters"].items():
        x = np.asarray(fit["draws"][p])
        rows[p] = {"is_mean": float(x.mean()), "is_sd": float(x.std()),
                   "nuts_mean": r["nuts_mean"], "nuts_sd": r["nuts_sd"],
                   "mean_diff_in_nuts_sd": float((x.mean() - r["nuts_mean"]) / r["nuts_sd"]),
                   "sd_ratio_is_over_nuts": float(x.std() / r["nuts_sd"])}
        print(f"{p} IS {x.mean():.5g} +- {x.std():.3g}  NUTS {r['nuts_mean']:.5g} +- "
              f"{r['nuts_sd']:.3g}  IS-NUTS/sd_nuts {rows[p]['mean_diff_in_nuts_sd']:.2f}  "
              f"sd ratio IS/NUTS {rows[p]['sd_ratio_is_over_nuts']:.2f}")
    C.write_result(DEFAULT_OUT, SCHEMA, problem=info, fit_s=wall, pareto_k=fit.get("pareto_k"),
                   is_ess=fit.get("is_ess"), parameters=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
