"""Model -> posterior by sampling or variational fits: SVI (mean-field, low-rank, MAP, AutoLaplace),
NumPyro NUTS and BlackJAX NUTS on the same potential.

Reported uncertainties come from NUTS or from an approximation shown to agree with it on the same
problem (``docs/inference.md``): mean-field SVI understates the globals' sd several-fold on models
of this shape (``shared/references/ppl-stack.md``).
MAP + Laplace is :mod:`lartpc_bayes.infer.laplace`.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, autoguide, init_to_value

from ..model import CalibrationProblem, calibration_model, dEdx_from_z
from .common import FitResult, _model_kwargs, nominal_init, potential_and_transforms
from .laplace import drift_field_scan

GUIDES = ("normal", "lowrank", "laplace", "map")


def run_map(
    problem: CalibrationProblem,
    *,
    seed: int = 0,
    steps: int = 1500,
    lr: float = 0.02,
    init: dict | None = None,
    progress: bool = False,
) -> FitResult:
    """MAP by Adam on the unconstrained potential (AutoDelta guide), exponential lr decay."""
    return run_svi(
        problem,
        guide="map",
        seed=seed,
        steps=steps,
        lr=lr,
        init=init,
        progress=progress,
        num_samples=1,
    )


def run_svi(
    problem: CalibrationProblem,
    *,
    guide: str = "normal",
    seed: int = 0,
    steps: int = 3000,
    lr: float = 0.02,
    num_samples: int = 1000,
    rank: int = 8,
    init: dict | None = None,
    progress: bool = False,
) -> FitResult:
    """SVI with ``guide`` in {normal, lowrank, laplace, map}; Adam with exponential decay to lr/20,
    gradient clipping. ``laplace`` = MAP followed by the Laplace approximation (the Hessian of the
    potential at the optimum, in unconstrained space)."""
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose from {GUIDES}")
    init_loc = init_to_value(values=init or nominal_init(problem))
    g = {
        "normal": lambda: autoguide.AutoNormal(
            calibration_model, init_loc_fn=init_loc, init_scale=0.02
        ),
        "lowrank": lambda: autoguide.AutoLowRankMultivariateNormal(
            calibration_model, init_loc_fn=init_loc, rank=rank, init_scale=0.02
        ),
        "laplace": lambda: autoguide.AutoLaplaceApproximation(
            calibration_model, init_loc_fn=init_loc
        ),
        "map": lambda: autoguide.AutoDelta(calibration_model, init_loc_fn=init_loc),
    }[guide]()
    sched = optax.exponential_decay(lr, steps, 0.05)
    optim = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(sched))
    svi = SVI(calibration_model, g, optim, loss=Trace_ELBO())
    kw = _model_kwargs(problem)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    res = svi.run(key, steps, problem, progress_bar=progress, stable_update=True, **kw)
    t_fit = time.perf_counter() - t0
    post = g.sample_posterior(
        jax.random.fold_in(key, 1), res.params, problem, sample_shape=(num_samples,), **kw
    )
    samples = {k: np.asarray(v)[None] for k, v in post.items() if k != "hits"}
    if "dEdx" not in samples and "z_dEdx" in samples:
        z = samples["z_dEdx"]
        samples["dEdx"] = np.asarray(dEdx_from_z(problem.prior, np.asarray(z)))
    map_values = None
    if guide in ("map", "laplace"):
        med = g.median(res.params)
        map_values = {k: np.asarray(v) for k, v in med.items()}
    losses = np.asarray(res.losses)
    return FitResult(
        method=f"svi-{guide}",
        samples=samples,
        map_values=map_values,
        timings={"fit_s": t_fit},
        info={
            "final_loss": float(np.mean(losses[-50:])),
            "steps": steps,
            "losses": losses,
            "params": res.params,
        },
    )


def run_nuts(
    problem: CalibrationProblem,
    *,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    init: dict | None = None,
    dense_mass: bool = True,
    target_accept: float = 0.85,
    max_tree_depth: int = 8,
    chain_method: str | None = None,
    progress: bool = False,
    inverse_mass_matrix: np.ndarray | None = None,
) -> FitResult:
    """NumPyro NUTS with a dense mass matrix (the calibration parameters are strongly correlated
    through the latents). Chains run in parallel when there are enough (host) devices
    (``numpyro.set_host_device_count`` before JAX starts), else sequentially. Without ``init``
    the chains start at nominal values with E from :func:`drift_field_scan` (from a wrong E the
    hits sit on the likelihood floor and chains stall in separate local modes: r_hat 6.6 on E).
    ``inverse_mass_matrix``: the warm-up's starting inverse mass matrix over the flat
    unconstrained vector (sites in sorted order, as ``ravel_pytree``), e.g. the Laplace
    covariance ``run_laplace(...).info["cov"]``; the windowed adaptation still refines it, but
    its first window no longer explores a posterior whose scales span a factor of ~50 (E against
    D_L) with the identity.
    """
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains else "sequential"
    # The problem is static (host-side index tables, shapes): close over it so that parallel
    # chains (pmap over the model's arguments) trace only the observed hits.
    kernel = NUTS(
        functools.partial(calibration_model, problem),
        init_strategy=init_to_value(values=init or drift_field_scan(problem, seed=seed)),
        dense_mass=dense_mass,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        inverse_mass_matrix=(None if inverse_mass_matrix is None
                             else jnp.asarray(inverse_mass_matrix, jnp.float32)),
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress,
    )
    t0 = time.perf_counter()
    mcmc.run(
        jax.random.key(seed),
        extra_fields=("diverging", "energy", "num_steps", "accept_prob"),
        **_model_kwargs(problem),
    )
    t_fit = time.perf_counter() - t0
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"]),
        "energy": np.asarray(extra["energy"]),
        "n_steps": np.asarray(extra["num_steps"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
    }
    return FitResult(
        "nuts",
        samples,
        stats,
        timings={"fit_s": t_fit},
        info={"num_chains": num_chains, "num_warmup": num_warmup, "chain_method": chain_method},
    )


def run_blackjax(
    problem: CalibrationProblem,
    *,
    seed: int = 0,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    init: dict | None = None,
    target_accept: float = 0.85,
    progress: bool = False,
    inverse_mass_matrix: np.ndarray | None = None,
) -> FitResult:
    """BlackJAX NUTS with Stan-style window adaptation (dense mass matrix) on NumPyro's potential
    (same model)."""
    import blackjax
    from tqdm.auto import tqdm

    key = jax.random.key(seed)
    init = init or drift_field_scan(problem, seed=seed)
    potential_fn, postprocess_fn, z0 = potential_and_transforms(problem, seed, init)

    def logdensity(pos):
        return -potential_fn(pos)

    # the warm-up's starting inverse mass matrix (as run_nuts), e.g. the Laplace covariance
    imm = None if inverse_mass_matrix is None else jnp.asarray(inverse_mass_matrix, jnp.float32)

    @jax.jit
    def one_chain(k, pos0):
        k1, k2 = jax.random.split(k)
        # dense mass matrix, as NumPyro's run_nuts and LaplaceFitter.fit_nuts: E is pinned ~50x
        # tighter than the other parameters and correlated with D_L/D_T and the latents
        adapt = blackjax.window_adaptation(
            blackjax.nuts, logdensity, is_mass_matrix_diagonal=False,
            target_acceptance_rate=target_accept, initial_inverse_mass_matrix=imm,
        )
        (state, params), _ = adapt.run(k1, pos0, num_steps=num_warmup)
        kernel = blackjax.nuts(logdensity, **params)

        def step(s, kk):
            s, info = kernel.step(kk, s)
            return s, (
                s.position,
                info.is_divergent,
                info.num_integration_steps,
                info.energy,
                info.acceptance_rate,
            )

        _, out = jax.lax.scan(step, state, jax.random.split(k2, num_samples))
        return out

    t0 = time.perf_counter()
    outs = []
    for c in tqdm(range(num_chains), desc="blackjax", disable=not progress):
        outs.append(one_chain(jax.random.fold_in(key, c + 1), z0))
    t_fit = time.perf_counter() - t0
    samples: dict[str, list] = {}
    stats: dict[str, list] = {"diverging": [], "n_steps": [], "energy": [], "acceptance_rate": []}
    for pos, div, nst, en, acc in outs:
        constrained = jax.lax.map(postprocess_fn, pos, batch_size=64)
        for k, v in constrained.items():
            if k != "hits":
                samples.setdefault(k, []).append(np.asarray(v))
        for name, arr in zip(
            ("diverging", "n_steps", "energy", "acceptance_rate"), (div, nst, en, acc), strict=True
        ):
            stats[name].append(np.asarray(arr))
    return FitResult(
        "blackjax-nuts",
        {k: np.stack(v) for k, v in samples.items()},
        {k: np.stack(v) for k, v in stats.items()},
        timings={"fit_s": t_fit},
        info={"num_chains": num_chains, "num_warmup": num_warmup},
    )
