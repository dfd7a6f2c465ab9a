"""Cost of the two straggling settings of the likelihood (issue 12), one run side by side.

    .venv/bin/python benchmarks/straggling_cost.py      # -> benchmarks/results/straggling_cost.json

Data: ~150 cm of generated cosmic muons (generator seed 0, default cuts, whole tracks), simulated
at the card's nominal parameters with every noise term; ``build_problem`` with 5 cm latents. For
``LikelihoodConfig(straggling="mark")`` (default) and ``"trigger"``, alternating twice in one
process: the compiled value and gradient of the potential (``LaplaceFitter._value_and_grad``,
six parameters and every latent) at the nominal start, 15 calls after a warm-up; median wall and
process CPU time per call.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import fit_memory as FM

OUT = C.RESULTS / "straggling_cost.json"
LENGTH_CM = 150.0
N_CALLS = 15


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.generator import generate_length
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.infer import LaplaceFitter, enable_compilation_cache
    from lartpc_bayes.model import build_problem

    enable_compilation_cache()
    card = load_card("module0")
    seg = generate_length(card, "muons", LENGTH_CM, 0, n0=4)
    hits, _ = simulate_hits(jax.random.key(0), card, seg,
                            DetectorParams.from_dict(card.nominal()))
    pb = build_problem(card, seg, hits, latent_length_cm=5.0)
    tb = jnp.asarray(pb.table, jnp.int32)
    runs = []
    for mode in ("mark", "trigger", "mark", "trigger"):
        pb.likelihood = replace(pb.likelihood, straggling=mode)
        f = LaplaceFitter(pb)
        jax.block_until_ready(f._value_and_grad(f.x0, tb))
        ts, cs = [], []
        for _ in range(N_CALLS):
            t, c = time.perf_counter(), _cpu()
            jax.block_until_ready(f._value_and_grad(f.x0, tb))
            ts.append(time.perf_counter() - t)
            cs.append(_cpu() - c)
        runs.append({"straggling": mode, "wall_ms_median": 1e3 * float(np.median(ts)),
                     "cpu_ms_median": 1e3 * float(np.median(cs)), "n_calls": N_CALLS})
        print(runs[-1], file=sys.stderr, flush=True)
    doc = {"schema": "lartpc_bayes.benchmarks.straggling_cost/1", "length_cm": float(seg.dx.sum()),
           "n_hits": int(hits.n), "dim": int(f.dim), "runs": runs,
           "machine": C.machine_info(with_jax=False), "git": C.git_state()}
    FM._write_atomic(OUT, doc)
    print(f"written {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
