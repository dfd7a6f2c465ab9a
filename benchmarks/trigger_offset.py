"""The trigger-time offset of the straggling below the latent, without a fit (issue 12).

For generated muons (Module 0, > 60 deg to the drift, nominal parameters) and R regenerations
of every 0.4 cm segment's truncated-Landau deposit (the generator's law, geometry fixed):

* data: the stochastic readout (``forward.readout.simulate_channels``) on the charges of the
  fluctuating segments; per channel its first-hit tick;
* model: the likelihood's first-trigger distribution ``f0`` (``readout_tensors``) on the charges
  it predicts from the 5 cm latents at their true means of that replica (with the mean-charge
  correction ``straggled_dEdx``), either without the straggling in the trigger (``mark``, the
  default likelihood) or with the per-channel skewed scale (``trigger``; ``timing`` has the same
  first-trigger law).

Per channel hit on more than half the replicas and predicted hit with probability > 1/2: the
offset = data first-hit tick minus the model's mean first-hit tick given a hit, averaged over the
replicas; the slope d(model tick)/dE by a finite difference. The timing-only E bias is the
weighted least-squares E shift that the offsets ask for, ``sum(s o / v) / sum(s^2 / v)`` (s the
slope, o the offset, v the per-channel variance of the data-minus-model tick), in units of the
timing-only E sd ``1 / sqrt(sum(s^2 / v))`` of one data set. A fit sees more than the first-hit
times (marks, later hits, D_L), so this is the size and sign of the push, not a fit's pull.

``python benchmarks/trigger_offset.py --seeds 0 1 --replicas 100`` -> JSON in
``benchmarks/results/trigger_offset.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SCHEMA = "lartpc_bayes.benchmarks.trigger_offset/1"
DEFAULT_OUT = C.RESULTS / "trigger_offset.json"
#: finite-difference step in E for the model's tick slope, kV/cm
DE_KV_CM = 2e-4


def run_seed(seed: int, replicas: int, n_tracks: int = 6) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.scipy.special import logsumexp

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward import energy_loss as EL
    from lartpc_bayes.forward.charge import expected_charge
    from lartpc_bayes.forward.generator import SelectionCuts, generate_sample
    from lartpc_bayes.forward.readout import simulate_channels
    from lartpc_bayes.likelihood.readout_prob import readout_tensors
    from lartpc_bayes.model import build_problem, latent_weights, straggled_dEdx

    card = load_card("module0")
    gs = generate_sample(card, "muons", n_tracks, seed,
                         cuts=SelectionCuts(min_angle_to_drift_deg=60.0))
    segs, tr = gs.segments, gs.truth
    prob = build_problem(card, segs, None, latent_length_cm=5.0)
    s2l = np.asarray(prob.seg_to_latent)
    w = latent_weights(segs, s2l, prob.n_latent)
    p0 = nominal_params(card)
    pE = p0._replace(E=p0.E + DE_KV_CM)
    el = card.electronics
    cum = jnp.asarray(prob.segment_cumulants, jnp.float32)
    strag = tuple(prob.charge_straggling)
    mask = np.concatenate([np.asarray(b.chan_mask) > 0 for b in prob.plan.buckets])

    def charges(d, p):
        return expected_charge(prob.plan.device, d, p, card)

    def model_tick(dm, p, trig: bool):
        out = []
        for (Q, o), f in zip(charges(dm, p), strag, strict=True):
            rt = readout_tensors(Q, el, 8, 32, straggling=f if trig else None)
            f0 = jnp.exp(logsumexp(rt.log_g0, axis=1))  # (C, W) P(first trigger at t)
            pp = f0.sum(1)
            out.append(((f0 * jnp.arange(f0.shape[1])).sum(1) / jnp.maximum(pp, 1e-30) + o, pp))
        return (jnp.concatenate([t for t, _ in out]), jnp.concatenate([p for _, p in out]))

    model_tick = jax.jit(model_tick, static_argnums=(2,))

    @jax.jit
    def first_hits(key, d):
        out = []
        for i, (Q, o) in enumerate(charges(d, p0)):
            h = simulate_channels(jax.random.fold_in(key, i), Q, el)
            out.append(jnp.where(h.valid[:, 0], h.tick[:, 0] + o, -1))
        return jnp.concatenate(out)

    rng = np.random.default_rng(seed + 100)
    td, tm, tE, pm = [], {"mark": [], "trigger": []}, {"mark": [], "trigger": []}, []
    t0 = time.perf_counter()
    for r in range(replicas):
        dedx = EL.sample_truncated_landau(rng, tr.dE_mpv, tr.xi, tr.dE_max) / segs.dx
        lat = np.bincount(s2l, weights=w * dedx, minlength=prob.n_latent)
        dm = straggled_dEdx(jnp.asarray(lat[s2l], jnp.float32), cum, p0, card.physics)
        td.append(np.asarray(first_hits(jax.random.key(r), jnp.asarray(dedx, jnp.float32))))
        for name in tm:
            t, p = model_tick(dm, p0, name == "trigger")
            tm[name].append(np.asarray(t, np.float64))
            tE[name].append(np.asarray(model_tick(dm, pE, name == "trigger")[0], np.float64))
            if name == "mark":
                pm.append(np.asarray(p))
    td = np.asarray(td, np.float64)
    pm = np.asarray(pm)
    out = {"seed": seed, "replicas": replicas, "length_cm": float(segs.dx.sum()),
           "n_latents": int(prob.n_latent), "seconds": time.perf_counter() - t0, "models": {}}
    for name in tm:
        a, b = np.asarray(tm[name]), np.asarray(tE[name])
        d = np.where((td >= 0) & mask[None] & (pm > 0.5), td - a, np.nan)
        use = np.sum(~np.isnan(d), 0) > replicas // 2
        off = np.nanmean(d[:, use], 0)
        var = np.nanvar(d[:, use], 0)
        slope = np.mean((b - a)[:, use], 0) / DE_KV_CM
        info = float(np.sum(slope**2 / var))
        bias = float(np.sum(slope * off / var) / info)
        out["models"][name] = {
            "channels": int(use.sum()), "mean_offset_ticks": float(off.mean()),
            "offset_sem_ticks": float(np.sqrt(np.mean(var / np.sum(~np.isnan(d[:, use]), 0)))
                                      / np.sqrt(use.sum())),
            "timing_E_bias_kV_cm": bias, "timing_E_sd_kV_cm": float(1 / np.sqrt(info)),
            "timing_E_bias_sd": bias * np.sqrt(info)}
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--replicas", type=int, default=100)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    runs = []
    for s in a.seeds:
        r = run_seed(s, a.replicas)
        print(json.dumps(r), flush=True)
        runs.append(r)
    C.write_result(a.out, SCHEMA, runs=runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
