"""Where the later-row lag grid of the probabilistic readout is truly two-dimensional (issue 11).

``readout_tensors`` evaluates, for every channel, node k, later reset row s (reset at
``r = s + H + R``) and lag delta, ``z = (v_k + Q[t] - Q[r] - thr) / sigma_e`` and its
``log Phi(+-z)`` on a (C, K, L, LB) grid: the transcendental functions on that grid are most of
the gradient's cost (docs/performance.md, "Where the time goes"). The grid is only needed where
the integrator charge ``Q[t] - Q[r]`` changes along the lag, i.e. for rows whose reset falls
inside the channel's pulse:

* **post rows** (``Q[W-1] - Q[r] <= eps``): the reset comes after the last charge; the row sees
  the noise only, ``z = (v_k - thr) / sigma_e`` is the same for every lag, row and channel, and
  ``log g(delta) = delta log(1 - h_k) + log h_k`` in closed form (to first order in the <= eps
  electrons left, an error of ``eps / sigma_e`` in z);
* **pre rows** (``Q[r] <= eps``): the reset comes before the charge; z depends on t only, so the
  rows share one (K, W) evaluation and their cumulative sums are differences of one cumsum;
* **mid rows**: the reset falls inside the pulse; only these need the (K, LB) lag grid.

For the benchmark tracks (``_common.muon_batch``, ``proton_batch``) at the card's nominal
parameters and at the ends of the drift-field range, this counts the three kinds of rows, the
share of the lag grid in mid rows, and the pulse length (ticks with a charge increment > eps).
No timing: it says how much of the grid an exact restructuring would remove.

``python benchmarks/row_structure.py`` -> JSON in ``benchmarks/results/row_structure.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCHEMA = "lartpc_bayes.benchmarks.row_structure/1"
DEFAULT_OUT = C.RESULTS / "row_structure.json"


def row_kinds(Q, el, eps: float, max_lag: int = 32) -> dict:
    """Counts of pre / post / mid rows and lag-grid elements of one bucket's charges Q (C, W)."""
    import numpy as np

    from lartpc_bayes.likelihood.readout_prob import lag_geometry

    Q = np.asarray(Q, np.float64)
    n_ch, W = Q.shape
    _, L = lag_geometry(W, el)
    out = {"rows": 0, "pre": 0, "post": 0, "mid": 0, "grid": 0, "grid_mid": 0,
           "pulse_ticks": (np.diff(Q, axis=1) > eps).sum(1).tolist()}
    if L == 0:
        return out
    LB = min(L, max_lag) if max_lag > 0 else L
    s = np.arange(L)
    qr = Q[:, s + el.hold_ticks + el.reset_cycles]
    post = (Q[:, -1:] - qr) <= eps
    pre = (qr <= eps) & ~post
    mid = ~(pre | post)
    n_lag = np.minimum(L - s, LB)
    out.update(rows=n_ch * L, pre=int(pre.sum()), post=int(post.sum()), mid=int(mid.sum()),
               grid=n_ch * int(n_lag.sum()), grid_mid=int((mid * n_lag[None]).sum()))
    return out


def run(track: str, length_cm: float, eps_list=(1.0, 10.0)) -> list[dict]:
    import jax.numpy as jnp
    import numpy as np

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.charge import expected_charge, plan_charge

    card = load_card("module0")
    seg = C.muon_batch(length_cm) if track == "muons" else C.proton_batch(card, length_cm)
    plan = plan_charge(card, seg)
    nom = card.nominal()
    rows = []
    for E in (card.param("E").low, nom["E"], card.param("E").high):
        params = DetectorParams.from_dict({**nom, "E": E})
        charges = expected_charge(plan, jnp.asarray(seg.dEdx), params, card)
        for eps in eps_list:
            tot = {"rows": 0, "pre": 0, "post": 0, "mid": 0, "grid": 0, "grid_mid": 0}
            pulse = []
            for Q, _ in charges:
                k = row_kinds(Q, card.electronics, eps)
                pulse += k.pop("pulse_ticks")
                for key in tot:
                    tot[key] += k[key]
            rows.append({
                "track": track, "length_cm": length_cm, "E_kV_cm": float(E), "eps_e": eps,
                **tot,
                "frac_post": tot["post"] / tot["rows"], "frac_pre": tot["pre"] / tot["rows"],
                "frac_mid": tot["mid"] / tot["rows"],
                "frac_grid_in_mid_rows": tot["grid_mid"] / tot["grid"],
                "pulse_ticks_median": float(np.median(pulse)),
                "pulse_ticks_p90": float(np.percentile(pulse, 90)),
                "pulse_ticks_max": int(max(pulse)),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=float, default=100.0, help="cm of track per sample")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    rows = []
    for track in ("muons", "protons"):
        for r in run(track, a.length):
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in r.items()}), flush=True)
            rows.append(r)
    C.write_result(a.out, SCHEMA, rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
