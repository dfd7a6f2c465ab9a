"""Events as the unit of scale (infer/events.py) and block-arrow Laplace (infer/block_laplace.py).

Each check runs in a subprocess: the device count (``XLA_FLAGS``) and float64 must be set before
JAX starts. Data: two muon pieces of 3 cm (one event each) and one stopping proton (its own event),
Module 0, simulated at the demo target with every noise term.

Tolerances. float32 value: 1e-5 relative (a sum of O(1e3) nats with float32 rounding ~1e-7 per
term); gradient: 1e-4 of its largest component. float64 Hessian blocks and the Schur covariance
against the dense ``jax.hessian`` and its inverse: 1e-8 relative (both exact; only the order of
the sums differs). The test point (nominal + noise) need not be a minimum: the Schur complement is
checked with the exact blocks, the saddle-free factor only where the Hessian is positive
definite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

DATA = textwrap.dedent("""
    import json, jax, numpy as np, jax.numpy as jnp
    from lartpc_bayes.calibrate import DEMO_TARGET
    from lartpc_bayes.data import Segments
    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.generator import SelectionCuts, generate
    from lartpc_bayes.forward.simulate import simulate_hits
    card = load_card("module0")
    mu = generate(card, "muons", 2, 11, cuts=SelectionCuts(min_angle_to_drift_deg=60))
    keep = np.zeros(mu.n, bool)
    for t in np.unique(mu.track_id):
        m = mu.track_id == t
        keep[m] = np.cumsum(mu.dx[m]) <= 3.0
    mu = mu.select(keep)._replace(event_id=mu.select(keep).track_id.copy())
    pr = generate(card, "protons", 1, 12)
    pr = pr._replace(event_id=pr.track_id + 1000)
    seg = Segments.concatenate([mu, pr])
    hits, _ = simulate_hits(jax.random.key(5), card, seg, DetectorParams.from_dict(DEMO_TARGET))
""")

SHARDED = DATA + textwrap.dedent("""
    from numpyro.infer.util import potential_energy, unconstrain_fn
    from lartpc_bayes.infer.common import nominal_init
    from lartpc_bayes.infer.events import build_event_batch
    from lartpc_bayes.model import build_problem, calibration_model
    pb = build_problem(card, seg, hits, latent_length_cm=1.5)
    tb = jnp.asarray(pb.table)
    z = unconstrain_fn(calibration_model, (pb,), {"hits": tb}, nominal_init(pb))
    rng = np.random.default_rng(0)
    z = {k: jnp.asarray(np.asarray(v) + 0.1 * rng.standard_normal(np.shape(v)), jnp.float32)
         for k, v in z.items()}
    U_np = float(potential_energy(calibration_model, (pb,), {"hits": tb}, z))
    out = {"n_devices": len(jax.devices()), "U_numpyro": U_np}
    # "whole": one group on one device (the combined problem's layout); "one" / "two": the same
    # two groups of events on one device and sharded over two
    for name, devs, ng in (("whole", jax.devices()[:1], 1), ("one", jax.devices()[:1], 2),
                           ("two", jax.devices(), 2)):
        b = build_event_batch(card, seg, hits, latent_length_cm=1.5, devices=devs, n_groups=ng)
        x = b.place(jnp.asarray(b.pack(z), jnp.float32))
        v, g = jax.jit(jax.value_and_grad(b.potential))(x)
        th, locs = b.split(g)
        out[name] = {"U": float(v), "g_theta": np.asarray(th).tolist(),
                     "g_z": b.unpack(np.asarray(jnp.concatenate([jnp.zeros(b.k), g[b.k:]]))[None]
                                     )["z_dEdx"][0].tolist(),
                     "sharding": str(b.buckets[0].table.sharding),
                     "groups": [list(e) for e in b.buckets[0].group_events]}
    print("RESULT" + json.dumps(out))
""")

BLOCK = DATA + textwrap.dedent("""
    jax.config.update("jax_enable_x64", True)
    from lartpc_bayes.infer.events import build_event_batch
    from lartpc_bayes.infer.block_laplace import block_hessian, factorise
    # two groups of the three events: one group holds two events (coloured Hessian products)
    b = build_event_batch(card, seg, hits, latent_length_cm=1.5, n_groups=2,
                          dtype=jnp.float64)
    assert [len(g) for g in b.buckets[0].group_events] in ([2, 1], [1, 2])
    rng = np.random.default_rng(1)
    x = jnp.asarray(b.pack({p: 0.0 for p in b.free}) + 0.05 * rng.standard_normal(b.dim))
    H = block_hessian(b, x)
    Hd = np.asarray(jax.hessian(b.potential)(x))
    F = factorise(H)
    k = b.k
    g = np.asarray(jax.grad(b.potential)(x))
    th, locs = b.split(jnp.asarray(g))
    dt, dl = F.solve(np.asarray(th), [np.asarray(l) for l in locs])
    dx = np.concatenate([dt] + [d.reshape(-1) for d in dl])
    cov_dense = np.linalg.inv(Hd)[:k, :k]
    # the L-BFGS preconditioner x = x0 + M w and its transpose on gradients: <g, M w> = <M^T g, w>
    from lartpc_bayes.infer.block_laplace import BlockLaplace
    fwd, adj = BlockLaplace(b).preconditioner(x)
    w = rng.standard_normal(b.dim)
    adj_err = float(abs(g @ (fwd(w) - np.asarray(x)) - adj(g) @ w) / (np.abs(g).max()
                                                                     * np.abs(w).max()))
    S = H.A - sum(np.einsum("eik,eil->kl", B, np.linalg.solve(D, B)) for B, D in zip(H.B, H.D))
    print("RESULT" + json.dumps({
        "pd": F.pd, "dim": b.dim, "adj_err": adj_err,
        "schur_err": float(np.abs(np.linalg.inv(S) - cov_dense).max() / np.abs(cov_dense).max()),
        "H_err": float(np.abs(H.dense() - Hd).max() / np.abs(Hd).max()),
        "cov_err": (float(np.abs(F.cov_theta - cov_dense).max() / np.abs(cov_dense).max())
                    if F.pd else None),
        "solve_err": float(np.abs(dx - np.linalg.solve(Hd, g)).max()
                           / np.abs(np.linalg.solve(Hd, g)).max()) if F.pd else None,
    }))
""")


def _run(code: str, env_extra: dict[str, str]) -> dict:
    env = dict(os.environ, **env_extra)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_sharded_potential_equals_one_device_and_numpyro():
    out = _run(SHARDED, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2",
                         "JAX_PLATFORMS": "cpu"})
    assert out["n_devices"] == 2
    whole, one, two = out["whole"], out["one"], out["two"]
    assert "events" in two["sharding"]
    assert len(whole["groups"]) == 1 and len(two["groups"]) == 2 and one["groups"] == two["groups"]
    # one group is the combined problem: NumPyro's potential to float32 rounding
    assert abs(whole["U"] - out["U_numpyro"]) <= 1e-5 * abs(out["U_numpyro"])
    # the same groups sharded over two devices: the same value and gradient
    assert abs(two["U"] - one["U"]) <= 1e-5 * abs(one["U"])
    g1 = one["g_theta"] + one["g_z"]
    g2 = two["g_theta"] + two["g_z"]
    scale = max(abs(v) for v in g1)
    assert max(abs(a - b) for a, b in zip(g1, g2, strict=True)) <= 1e-4 * scale
    # planned in two groups, each group's channels get their own window classes (a window
    # class decides how many ticks of a channel are modelled): the same model up to that choice
    assert abs(one["U"] - whole["U"]) <= 0.5


@pytest.mark.slow
def test_block_hessian_and_schur_equal_dense_float64():
    out = _run(BLOCK, {"JAX_PLATFORMS": "cpu"})
    assert out["H_err"] < 1e-8
    assert out["adj_err"] < 1e-10  # M^T exact (float64 host algebra)
    # the exact Schur complement of the blocks inverts to the dense inverse's theta block
    assert out["schur_err"] < 1e-8
    if out["pd"]:  # the factor (saddle-free only where not PD) is then exact too
        assert out["cov_err"] < 1e-8
        assert out["solve_err"] < 1e-8
