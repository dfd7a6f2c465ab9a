"""Accuracy at scale: the default likelihood against a converged reference, MAP + Laplace.

    .venv/bin/python benchmarks/accuracy_at_scale.py [--length 1000] [--out FILE]
        # -> benchmarks/results/accuracy_<L>cm.json

On the benchmark muon batch of ``--length`` cm (``_common.muon_batch``, hits simulated at the
nominal parameters, seed 0, 5 cm latents) the MAP and the exact Hessian of the default posterior
(package defaults, float32) are computed in one process; a second process with float64 enabled
evaluates the **reference** likelihood (``--ref-nodes`` = 32 Gauss-Hermite nodes, no lag band,
float64 plan and charges; there is no row pruning in either) at that MAP: its gradient and, for
every parameter i, the second derivative along ``v_i = Sigma e_i`` (Sigma the default Laplace
covariance). To first order in the difference ``delta = log p_ref - log p_def`` (which is what
is being bounded: the check asks for shifts of <= 0.1 sd),

    mean shift of parameter i / sd_i  = (Sigma grad delta)_i / sqrt(Sigma_ii)
    variance ratio ref / default      = 1 + v_i^T (H_def - H_ref) v_i / Sigma_ii,

with everything in NumPyro's unconstrained coordinates (the scaled logit of each uniform prior),
where the Laplace approximation is made; to first order the shift in sd units is the same in the
constrained coordinates. The second-order terms are O(shift^2): negligible when the check passes.
Cost: one reference gradient and six reference Hessian-vector products (the reference is ~10x the
default per evaluation), plus the default MAP and a dense Hessian (n_latent + 6 Hessian-vector
products).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

PARAMS = ("A_B", "k_B", "E", "tau", "D_L", "D_T")


def _setup(length_cm: float, likelihood=None, f64: bool = False):
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from lartpc_bayes.detector import load_card
    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.infer import potential_and_transforms
    from lartpc_bayes.likelihood import LikelihoodConfig
    from lartpc_bayes.model import build_problem

    card = load_card("module0")
    segs = C.muon_batch(length_cm)
    hits, _ = simulate_hits(jax.random.key(0), card, segs, nominal_params(card),
                            batch_length_cm=100.0)
    problem = build_problem(card, segs, hits, latent_length_cm=5.0,
                            likelihood=likelihood or LikelihoodConfig())
    if f64:
        def cast(x):
            return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

        plan = problem.plan
        problem.plan = plan._replace(sub=jax.tree.map(cast, plan.sub),
                                     buckets=jax.tree.map(cast, plan.buckets))
    pot, _, z = potential_and_transforms(problem)
    flat, unravel = ravel_pytree(z)
    # index of each parameter in the flat vector
    idx = {}
    for p in PARAMS:
        e = {k: jnp.zeros_like(v) for k, v in z.items()}
        e[p] = jnp.ones_like(z[p])
        idx[p] = int(jnp.argmax(ravel_pytree(e)[0]))
    return problem, hits, (lambda x: pot(unravel(x))), flat, idx


def stage_default(length_cm: float, out: Path) -> None:
    import jax
    import numpy as np
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    problem, hits, pe, x0, idx = _setup(length_cm)
    vg = jax.jit(jax.value_and_grad(pe))

    def f(x):
        v, g = vg(jax.numpy.asarray(x, x0.dtype))
        return float(v), np.asarray(g, np.float64)

    res = minimize(f, np.asarray(x0, np.float64), jac=True, method="L-BFGS-B",
                   options={"maxiter": 2000, "gtol": 1e-6, "ftol": 1e-14})
    x = np.asarray(res.x)
    H = np.asarray(jax.jit(jax.hessian(pe))(jax.numpy.asarray(x, x0.dtype)), np.float64)
    H = 0.5 * (H + H.T)
    # Newton polish in float64 on the host (the L-BFGS stop leaves a small gradient)
    for _ in range(3):
        _, g = f(x)
        x = x - np.linalg.solve(H, g)
    v, g = f(x)
    np.savez(out, x=x, H=H, g=g, value=v, n_hits=hits.n, n_channels=sum(
        int(np.sum(c.event >= 0)) for c in problem.plan.channels), n_latent=problem.n_latent,
        idx=np.array([idx[p] for p in PARAMS]), seconds=time.perf_counter() - t0,
        lbfgs_iter=res.nit)


def stage_reference(length_cm: float, ref_nodes: int, inp: Path, out: Path) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    from lartpc_bayes.likelihood import LikelihoodConfig

    t0 = time.perf_counter()
    d = np.load(inp)
    cfg = LikelihoodConfig(n_nodes=ref_nodes, max_lag=0)
    problem, _, pe, x0, _ = _setup(length_cm, likelihood=cfg, f64=True)
    cfg = problem.likelihood
    x = jnp.asarray(d["x"], jnp.float64)
    g = np.asarray(jax.jit(jax.grad(pe))(x))
    Sigma = np.linalg.inv(d["H"])
    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(pe), (x,), (v,))[1])
    vHv = []
    for i in d["idx"]:
        v = Sigma[:, i]
        vHv.append(float(v @ np.asarray(hvp(x, jnp.asarray(v)))))
    np.savez(out, g=g, vHv=np.array(vHv), seconds=time.perf_counter() - t0,
             dtype=str(x0.dtype), n_nodes=cfg.n_nodes, max_lag=cfg.max_lag)


def analyse(d_def, d_ref) -> dict:
    import numpy as np

    Sigma = np.linalg.inv(d_def["H"])
    idx = d_def["idx"]
    g_delta = d_def["g"] - d_ref["g"]  # gradients of the potentials (minus log posterior)
    shift = -(Sigma @ (d_ref["g"] - d_def["g"]))  # x_ref - x_def to first order
    out = {}
    for j, (p, i) in enumerate(zip(PARAMS, idx, strict=True)):
        sd = float(np.sqrt(Sigma[i, i]))
        var_ratio = 1.0 + (Sigma[i, i] - float(d_ref["vHv"][j])) / Sigma[i, i]
        out[p] = {"sd_unconstrained": sd, "mean_shift_in_sd": float(shift[i]) / sd,
                  "sd_ratio_ref_over_default": float(np.sqrt(max(var_ratio, 0.0)))}
    out["_max_abs_mean_shift_in_sd"] = max(abs(v["mean_shift_in_sd"]) for k, v in out.items()
                                           if not k.startswith("_"))
    out["_max_abs_sd_change"] = max(abs(v["sd_ratio_ref_over_default"] - 1) for k, v in
                                    out.items() if not k.startswith("_"))
    out["_grad_delta_norm"] = float(np.linalg.norm(g_delta))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--length", type=float, default=1000.0)
    ap.add_argument("--ref-nodes", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--stage", choices=("default", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--inp", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage == "default":
        stage_default(args.length, args.stage_out)
        return {}
    if args.stage == "reference":
        stage_reference(args.length, args.ref_nodes, args.inp, args.stage_out)
        return {}
    import numpy as np

    me = [sys.executable, str(Path(__file__).resolve()), "--length", str(args.length),
          "--ref-nodes", str(args.ref_nodes)]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "default.npz", Path(tmp) / "reference.npz"
        env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
        subprocess.run([*me, "--stage", "default", "--stage-out", str(a)], check=True, env=env)
        subprocess.run([*me, "--stage", "reference", "--inp", str(a), "--stage-out", str(b)],
                       check=True, env=env)
        d_def, d_ref = dict(np.load(a)), dict(np.load(b))
    res = {"benchmark": "accuracy_at_scale", "length_cm": args.length,
           "reference": {"n_nodes": int(d_ref["n_nodes"]), "max_lag": int(d_ref["max_lag"]),
                         "dtype": str(d_ref["dtype"]), "row_pruning": False},
           "n_hits": int(d_def["n_hits"]), "n_channels": int(d_def["n_channels"]),
           "n_latent": int(d_def["n_latent"]), "lbfgs_iterations": int(d_def["lbfgs_iter"]),
           "default_stage_s": float(d_def["seconds"]),
           "reference_stage_s": float(d_ref["seconds"]),
           "default_grad_norm_at_map": float(np.linalg.norm(d_def["g"])),
           "params": analyse(d_def, d_ref), "git": C.git_commit(),
           "machine": C.machine_info(with_jax=False)}
    out = args.out or C.RESULTS / f"accuracy_{args.length:g}cm.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    for p in PARAMS:
        r = res["params"][p]
        print(f"{p:5s} mean shift {r['mean_shift_in_sd']:+.4f} sd, sd ratio "
              f"{r['sd_ratio_ref_over_default']:.4f}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
