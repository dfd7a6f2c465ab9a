"""Selection efficiency and purity of the reconstruction on generated samples.

``python -m lartpc_bayes.reco.efficiency --n 30 --out out/reco_eff.json``

Truth: the generator's tracks with the published selection applied to the true segments (the
pieces of a track inside each TPC's drift window; a piece counts when it is >= 2 cm long).
A reconstructed track matches a true piece of the same event and TPC when both its ends lie
within 1 cm of the piece's ends. Efficiency = matched-and-selected true pieces / true pieces;
purity = selected reco tracks matched to a true piece of the wanted species / selected reco
tracks. Stopping tag: fraction of matched tracks tagged stopping, per species.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def run(n: int, seed: int = 21) -> dict:
    import jax

    from ..data import Segments
    from ..detector import load_card
    from ..detector.physics import nominal_params
    from ..forward.generator import generate
    from ..forward.simulate import simulate_hits
    from .evaluate import match_tracks, true_pieces
    from .pipeline import reconstruct

    card = load_card("module0")
    out = {}
    mixes = {"muons": [("muons", n)], "protons": [("protons", n)],
             "muons+10%pions": [("muons", n - max(1, n // 10)), ("pions", max(1, n // 10))]}
    for name, parts in mixes.items():
        segs = []
        off = 0
        for k, (sample, m) in enumerate(parts):
            s = generate(card, sample, m, seed + k)
            segs.append(s._replace(track_id=s.track_id + off, event_id=s.event_id + off))
            off += m
        segs = Segments.concatenate(segs)
        hits, _ = simulate_hits(jax.random.key(seed), card, segs, nominal_params(card))
        res = reconstruct(hits, card)
        truth = [p for p in true_pieces(card, segs) if p["length"] >= 2.0]
        rows = [r for r in match_tracks(card, segs, res) if r["truth"] is not None]
        good = [r for r in rows if max(r["end_err_cm"]) < 1.0]
        matched = {(r["truth"]["event"], r["truth"]["track"], r["truth"]["tpc"])
                   for r in good if r["selected"]}
        n_true = len(truth)
        eff = sum((p["event"], p["track"], p["tpc"]) in matched for p in truth) / max(n_true, 1)
        sel = [r for r in rows if r["selected"]]
        n_sel = sum(t.selected for t in res.tracks)
        want = 2212 if name == "protons" else 13
        pure = sum(1 for r in sel if max(r["end_err_cm"]) < 1.0 and r["truth"]["pdg"] == want)
        stop = {int(pdg): float(np.mean([r["stopping"] for r in good if r["truth"]["pdg"] == pdg]))
                for pdg in {r["truth"]["pdg"] for r in good}}
        ang = np.array([r["angle_err_deg"] for r in good if r["length_true"] > 10])
        end = np.array([max(r["end_err_cm"]) for r in good if r["length_true"] > 10])
        out[name] = {
            "true_pieces": n_true, "reco_tracks": len(res.tracks), "selected": n_sel,
            "efficiency": eff, "purity": pure / max(n_sel, 1), "stopping_tag_rate": stop,
            "long_tracks": int(ang.size),
            "angle_err_deg_q68_q95": [float(np.quantile(ang, q)) for q in (0.68, 0.95)]
            if ang.size else None,
            "end_err_cm_q68_q95": [float(np.quantile(end, q)) for q in (0.68, 0.95)]
            if end.size else None,
            "frac_angle_lt1_and_ends_lt05": float(np.mean((ang < 1) & (end < 0.5)))
            if ang.size else None,
        }
        print(name, json.dumps(out[name]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--out", default="out/reco_eff.json")
    a = ap.parse_args(argv)
    res = run(a.n, a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
