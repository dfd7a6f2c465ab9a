"""The benchmark cases, each run alone in a fresh process by ``benchmarks/run.py``.

A case is a dict ``{"name", "kind", "track", "length_cm", ...}``; :func:`run_case` builds the
problem (untimed setup), resets the process's peak-RSS counter, compiles, runs once, times the
steady state and returns a flat JSON-able dict. Kinds:

``charge``       jitted ``expected_charge`` on all buckets (the forward charge model).
``loglik_grad``  jitted ``value_and_grad`` of NumPyro's potential (minus the log posterior, six
                 parameters + one dE/dx latent per 5 cm) w.r.t. every unconstrained latent.
``svi_step``     one jitted ``SVI.update`` (AutoNormal guide, Trace_ELBO with one particle, Adam).
``nuts_grad``    ``value_and_grad`` of the potential on the flat vector, as NUTS's integrator
                 calls it; plus one NUTS transition (fixed step size, dense unit mass, tree depth
                 <= 4) with its number of leapfrog steps.
``simulate``     ``simulate.simulate_hits`` end to end (host planning, charge, stochastic readout,
                 hit collection), a new key per run: throughput in cm of track per second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import _common as C


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _segments(card, case):
    if case["track"] == "muons":
        return C.muon_batch(case["length_cm"])
    if case["track"] == "protons":
        return C.proton_batch(card, case["length_cm"], seed=case.get("seed", 0))
    raise ValueError(f"unknown track {case['track']!r}")


def _memory_analysis(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    mb = 2.0**-20
    return {
        "xla_temp_mb": m.temp_size_in_bytes * mb,
        "xla_argument_mb": m.argument_size_in_bytes * mb,
        "xla_output_mb": m.output_size_in_bytes * mb,
        "xla_generated_code_mb": m.generated_code_size_in_bytes * mb,
    }


def _cost_analysis(compiled) -> dict:
    try:
        c = compiled.cost_analysis()
    except Exception:
        return {}
    if isinstance(c, list):
        c = c[0] if c else {}
    if not c:
        return {}
    return {"xla_gflop": c.get("flops", 0.0) / 1e9,
            "xla_bytes_accessed_mb": c.get("bytes accessed", 0.0) / 2**20}


def _device_peak_mb() -> float | None:
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return None
    stats = d.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def _compile_and_time(fn, args, case) -> dict:
    import jax

    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    t3 = time.perf_counter()
    r = {"lower_s": t1 - t0, "compile_s": t2 - t1, "first_call_s": t3 - t2}
    r["timing"] = C.timed_runs(lambda: compiled(*args), case["repeats"], warmup=1,
                               budget_s=case["budget_s"])
    r.update(_memory_analysis(compiled))
    r.update(_cost_analysis(compiled))
    return r, out


def _plan_fields(plan) -> dict:
    from lartpc_bayes.forward.charge import plan_info

    info = plan_info(plan)
    return {"n_segments": info.n_segments, "n_subpoints": info.n_subpoints,
            "n_pairs": info.n_pairs, "n_channels": info.n_channels,
            "windows": list(info.windows), "channels_per_bucket": list(info.channels_per_bucket)}


def _problem(card, segs):
    """Hits simulated at the nominal parameters (seed 0, 100 cm batches, so that the simulation
    never needs more memory than a 100 cm case) and the calibration problem (5 cm latents, the
    package's default likelihood)."""
    import jax

    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.likelihood import LikelihoodConfig
    from lartpc_bayes.model import build_problem

    hits, _ = simulate_hits(jax.random.key(0), card, segs, nominal_params(card),
                            batch_length_cm=100.0)
    problem = build_problem(card, segs, hits, latent_length_cm=5.0,
                            likelihood=LikelihoodConfig())
    return problem, hits


def _likelihood_fields(problem, hits) -> dict:
    import dataclasses

    cfg = dataclasses.asdict(problem.likelihood)
    cfg["max_hits"] = list(cfg["max_hits"])
    return {"n_hits": int(hits.n), "n_latents": int(problem.n_latent), "likelihood": cfg,
            **_plan_fields(problem.plan)}


def case_charge(card, segs, case) -> dict:
    import jax.numpy as jnp

    from lartpc_bayes.detector.physics import DetectorParams
    from lartpc_bayes.forward.charge import expected_charge, plan_charge

    t = time.perf_counter()
    plan = plan_charge(card, segs)
    plan_s = time.perf_counter() - t
    dedx = jnp.asarray(segs.dEdx, jnp.float32)
    params = DetectorParams(*(jnp.asarray(v, jnp.float32) for v in card.nominal().values()))
    dev = plan.device

    def forward(pd, d, p):
        return expected_charge(pd, d, p, card)

    res = {"plan_s": plan_s, **_plan_fields(plan)}
    res["rss_setup_mb"] = C.current_rss_mb()
    res["peak_reset"] = reset_peak_rss()
    r, out = _compile_and_time(forward, (dev, dedx, params), case)
    res.update(r)
    res["collected_e"] = float(sum(float(Q[:, -1].sum()) for Q, _ in out))
    return res


def case_loglik_grad(card, segs, case) -> dict:
    import jax
    import jax.numpy as jnp

    from lartpc_bayes.infer import potential_and_transforms

    problem, hits = _problem(card, segs)
    potential_fn, _, z = potential_and_transforms(problem)
    res = _likelihood_fields(problem, hits)
    res["rss_setup_mb"] = C.current_rss_mb()
    res["peak_reset"] = reset_peak_rss()
    r, (value, grad) = _compile_and_time(jax.value_and_grad(potential_fn), (z,), case)
    res.update(r)
    res["potential"] = float(value)
    res["finite"] = bool(jnp.isfinite(value)) and all(
        bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
    return res


def case_svi_step(card, segs, case) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI, Trace_ELBO, autoguide, init_to_value

    from lartpc_bayes.infer import nominal_init
    from lartpc_bayes.model import calibration_model

    problem, hits = _problem(card, segs)
    table = jnp.asarray(problem.table)
    guide = autoguide.AutoNormal(calibration_model,
                                 init_loc_fn=init_to_value(values=nominal_init(problem)),
                                 init_scale=0.02)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    svi = SVI(calibration_model, guide, optim, loss=Trace_ELBO())
    state = svi.init(jax.random.key(0), problem, hits=table)
    res = _likelihood_fields(problem, hits)
    res["rss_setup_mb"] = C.current_rss_mb()
    res["peak_reset"] = reset_peak_rss()

    def step(st):
        return svi.stable_update(st, problem, hits=table)

    r, (_, loss) = _compile_and_time(step, (state,), case)
    res.update(r)
    res["loss"] = float(loss)
    res["finite"] = bool(jnp.isfinite(loss))
    return res


def case_nuts_grad(card, segs, case) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import NUTS

    from lartpc_bayes.infer import potential_and_transforms

    problem, hits = _problem(card, segs)
    potential_fn, _, z = potential_and_transforms(problem)
    flat, unravel = ravel_pytree(z)

    def pe(x):
        return potential_fn(unravel(x))

    res = _likelihood_fields(problem, hits)
    res["n_dim"] = int(flat.size)
    res["rss_setup_mb"] = C.current_rss_mb()
    res["peak_reset"] = reset_peak_rss()
    r, (value, grad) = _compile_and_time(jax.value_and_grad(pe), (flat,), case)
    res.update(r)
    res["potential"] = float(value)
    res["finite"] = bool(jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)))

    # one NUTS transition at a fixed small step size (no adaptation): its cost is
    # num_steps gradients plus the tree bookkeeping
    kernel = NUTS(potential_fn=potential_fn, step_size=case.get("step_size", 1e-3),
                  adapt_step_size=False, adapt_mass_matrix=False, dense_mass=True,
                  max_tree_depth=case.get("max_tree_depth", 4))
    state = kernel.init(jax.random.key(1), 0, z, (), {})
    sample = jax.jit(lambda s: kernel.sample(s, (), {}))
    t = time.perf_counter()
    state = jax.block_until_ready(sample(state))
    first = time.perf_counter() - t
    ts, steps = [], []
    t_start = time.perf_counter()
    for _ in range(max(3, case["repeats"] // 2)):
        t = time.perf_counter()
        state = jax.block_until_ready(sample(state))
        ts.append(time.perf_counter() - t)
        steps.append(int(state.num_steps))
        if len(ts) >= 3 and time.perf_counter() - t_start > case["budget_s"]:
            break
    tr = C.summarize(ts)
    tr["num_steps"] = steps
    tr["compile_and_first_s"] = first
    tr["s_per_gradient"] = sum(ts) / max(sum(steps), 1)
    res["nuts_transition"] = tr
    return res


def case_simulate(card, segs, case) -> dict:
    import jax

    from lartpc_bayes.detector.physics import nominal_params
    from lartpc_bayes.forward.simulate import simulate_hits

    params = nominal_params(card)
    res = {"n_segments": int(segs.n)}
    res["rss_setup_mb"] = C.current_rss_mb()
    res["peak_reset"] = reset_peak_rss()
    key = jax.random.key(0)
    t = time.perf_counter()
    _hits, summ = simulate_hits(key, card, segs, params)
    first = time.perf_counter() - t
    i = [0]

    def run():
        i[0] += 1
        return simulate_hits(jax.random.fold_in(key, i[0]), card, segs, params)[0].tick

    res["timing"] = C.timed_runs(run, case["repeats"], warmup=1, budget_s=case["budget_s"])
    med = res["timing"]["median_s"]
    res.update({"first_call_s": first, "compile_s": max(first - med, 0.0),
                "n_channels": int(summ.n_channels), "n_hits": int(summ.n_hits),
                "length_simulated_cm": float(summ.length_cm),
                "cm_per_s": float(summ.length_cm) / med})
    return res


KINDS = {"charge": case_charge, "loglik_grad": case_loglik_grad, "svi_step": case_svi_step,
         "nuts_grad": case_nuts_grad, "simulate": case_simulate}


def run_case(case: dict) -> dict:
    """Run one case in this process; returns the case dict with the measurements added."""
    t_start = time.perf_counter()
    load_start = list(os.getloadavg())
    import jax  # noqa: F401 - imported here so that its import time is not part of the case

    from lartpc_bayes.detector import load_card

    rss_import = C.current_rss_mb()
    sources = C.package_sources_sha1()  # the code this process imported (just now)
    card = load_card(case.get("card", "module0"))
    segs = _segments(card, case)
    length = float(segs.dx.sum())
    res = KINDS[case["kind"]](card, segs, case)
    res["peak_rss_mb"] = C.peak_rss_mb()  # since the reset: compile + runs (+ what setup holds)
    res["device_peak_mb"] = _device_peak_mb()
    res["rss_import_mb"] = rss_import
    res["track_length_cm"] = length
    res["n_tracks"] = len({(int(e), int(t)) for e, t in zip(segs.event_id, segs.track_id,
                                                                strict=True)})
    t = res["timing"]["median_s"]
    res["ms_per_cm"] = 1e3 * t / length
    res["peak_rss_above_import_mb"] = res["peak_rss_mb"] - rss_import
    res["load_average_start"] = load_start
    res["load_average_end"] = list(os.getloadavg())
    res["case_wall_s"] = time.perf_counter() - t_start
    res["package_sources_sha1"] = sources
    res["machine"] = C.machine_info()
    return {**case, "status": "ok", **res}
