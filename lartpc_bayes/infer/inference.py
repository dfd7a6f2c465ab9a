"""Model -> posterior: SVI (mean-field, low-rank, MAP + Laplace), NumPyro NUTS and BlackJAX NUTS on
the same potential, with results as ArviZ 1.x DataTrees.

Every entry point takes a :class:`lartpc_bayes.model.CalibrationProblem` (with its observed hit
table) and a seed, and is reproducible. Parameters are reported in physical units (the model's
sample sites are the physical values; samplers work in NumPyro's unconstrained space).

Reported uncertainties come from NUTS or from an approximation shown to agree with it on the same
problem (``docs/inference.md``): mean-field SVI understates the globals' sd several-fold on models
of this shape (``shared/references/ppl-stack.md``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, autoguide, init_to_value
from numpyro.infer.util import initialize_model

from ..detector import PARAM_NAMES
from ..model import LATENT_SITES, CalibrationProblem, calibration_model, dEdx_from_z

GUIDES = ("normal", "lowrank", "laplace", "map")


@dataclass
class FitResult:
    """Posterior draws (physical units) plus what produced them.

    samples : site -> array (chains, draws, ...) for MCMC, (1, draws, ...) for SVI
    stats   : sample-stat name -> (chains, draws) arrays (NUTS: diverging, energy, ...)
    """

    method: str
    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    map_values: dict[str, np.ndarray] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _model_kwargs(problem: CalibrationProblem) -> dict[str, Any]:
    if problem.table is None:
        raise ValueError("the problem has no observed hits (build it with hits=...)")
    return {"hits": jnp.asarray(problem.table)}


def nominal_init(problem: CalibrationProblem) -> dict[str, jnp.ndarray]:
    """Initial values: the card's nominal parameters and dE/dx at the prior location."""
    nom = problem.card.nominal()
    init = {p: jnp.asarray(nom[p], jnp.float32) for p in problem.free}
    if problem.n_latent:
        init["z_dEdx"] = jnp.zeros(problem.n_latent, jnp.float32)
    if problem.stopping is not None:
        init["end_shift_cm"] = jnp.zeros(problem.stopping.n, jnp.float32)
    geo = getattr(problem, "geometry", None)  # geometry latents at the reconstructed tracks
    if geo is not None and geo.n_tracks:
        init["geo_z"] = jnp.zeros((geo.n_tracks, 3), jnp.float32)
    if geo is not None and geo.tpc_offset_sd > 0:
        init["tpc_drift_offset_cm"] = jnp.zeros(geo.n_tpc, jnp.float32)
    return init


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
) -> FitResult:
    """NumPyro NUTS with a dense mass matrix (the calibration parameters are strongly correlated
    through the latents). Chains run in parallel when there are enough (host) devices
    (``numpyro.set_host_device_count`` before JAX starts), else sequentially. Without ``init``
    the chains start at nominal values with E from :func:`drift_field_scan` (from a wrong E the
    hits sit on the likelihood floor and chains stall in separate local modes: r_hat 6.6 on E).
    """
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains else "sequential"
    kernel = NUTS(
        calibration_model,
        init_strategy=init_to_value(values=init or drift_field_scan(problem, seed=seed)),
        dense_mass=dense_mass,
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
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
        problem,
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
) -> FitResult:
    """BlackJAX NUTS with Stan-style window adaptation on NumPyro's potential (same model)."""
    import blackjax
    from tqdm.auto import tqdm

    key = jax.random.key(seed)
    init = init or drift_field_scan(problem, seed=seed)
    potential_fn, postprocess_fn, z0 = potential_and_transforms(problem, seed, init)

    def logdensity(pos):
        return -potential_fn(pos)

    @jax.jit
    def one_chain(k, pos0):
        k1, k2 = jax.random.split(k)
        adapt = blackjax.window_adaptation(
            blackjax.nuts, logdensity, target_acceptance_rate=target_accept
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


def run_laplace(
    problem: CalibrationProblem,
    *,
    seed: int = 0,
    maxiter: int = 300,
    num_samples: int = 1000,
    init: dict | None = None,
    gtol: float = 1e-3,
    newton_steps: int = 12,
    newton_tol: float = 1e-2,
    scan_E: bool = True,
    importance: bool = False,
) -> FitResult:
    """MAP by L-BFGS on the unconstrained potential, then the Laplace approximation.

    With ``scan_E`` (and E free) the start value of E comes from :func:`drift_field_scan`: the hit
    times fix E to ~1e-3 relative, far narrower than its prior, and from a start whose arrival
    times are off by more than the rising edge of the charge the hits sit on the likelihood floor,
    where the potential has no slope towards the truth.

    The potential U(x) = -log p(x, data) in NumPyro's unconstrained space (scaled logit of every
    uniform prior, the latents as they are) is minimised with optax L-BFGS (zoom line search) until
    the gradient norm is below ``gtol`` or the potential stalls, then polished by damped Newton
    steps with the exact Hessian until the Newton decrement ``sqrt(g^T H^-1 g)`` (the distance to
    the optimum in posterior standard deviations) is below ``newton_tol``; the posterior is
    approximated by N(x*, H^-1), H the exact Hessian of U at x* (forward-over-reverse), and draws
    are mapped back to physical units. ``importance=True`` corrects the Gaussian by Pareto-smoothed
    importance sampling (:func:`importance_resample`), for posteriors that the Laplace
    approximation makes too narrow (weakly constrained parameters against their prior bounds).
    A non-positive-definite H (a saddle or a boundary) raises instead of returning a wrong sd.
    """
    from jax.flatten_util import ravel_pytree

    if scan_E:
        init = drift_field_scan(problem, init, seed=seed)
    potential_fn, postprocess_fn, z0 = potential_and_transforms(problem, seed, init)
    x0, unravel = ravel_pytree(z0)

    def f(x):
        return potential_fn(unravel(x))

    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    @jax.jit
    def step(x, state):
        value, grad = vg(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        return optax.apply_updates(x, updates), state, value, jnp.linalg.norm(grad)

    t0 = time.perf_counter()
    x, state = x0, opt.init(x0)
    values = []
    for _ in range(maxiter):
        x, state, value, gnorm = step(x, state)
        values.append(float(value))
        # float32 gradients of a potential of O(1e3) are noisy at the 1e-3 level: also stop once
        # the potential has stalled (Newton polishing below finishes the job)
        if float(gnorm) < gtol or (len(values) > 10 and values[-11] - values[-1] < 1e-4):
            break
    x, H, newton = _newton_polish(f, x, newton_steps, newton_tol)
    t_fit = time.perf_counter() - t0
    if not np.all(np.isfinite(H)):
        raise FloatingPointError("the Hessian of the potential at the MAP is not finite")
    evals, evecs = np.linalg.eigh(H)
    if evals.min() <= 0:
        raise np.linalg.LinAlgError(
            f"the Hessian at the optimum is not positive definite (smallest eigenvalue "
            f"{evals.min():.3g}): no Laplace approximation; use NUTS"
        )
    cov = (evecs / evals) @ evecs.T
    rng = np.random.default_rng(seed)
    is_info: dict[str, float] = {}
    if importance:
        t1 = time.perf_counter()
        draws, is_info = importance_resample(
            jax.jit(jax.vmap(f)), np.asarray(x, np.float64), cov, rng, num_samples
        )
        t_fit += time.perf_counter() - t1
    else:
        draws = rng.multivariate_normal(np.asarray(x, np.float64), cov, size=num_samples)
    constrained = jax.lax.map(
        lambda v: postprocess_fn(unravel(v)), jnp.asarray(draws, x.dtype), batch_size=128
    )
    samples = {k: np.asarray(v)[None] for k, v in constrained.items() if k != "hits"}
    map_values = {k: np.asarray(v) for k, v in postprocess_fn(unravel(x)).items() if k != "hits"}
    map_values.update({k: np.asarray(v) for k, v in unravel(x).items() if k in LATENT_SITES})
    return FitResult(
        "laplace-is" if importance else "laplace",
        samples,
        map_values=map_values,
        timings={"fit_s": t_fit},
        info={
            **is_info,
            "iterations": len(values),
            "newton_steps": newton["steps"],
            "newton_decrement": newton["decrement"],
            "final_potential": newton["value"],
            "hessian_eigenvalues": evals,
            "unconstrained_map": np.asarray(x),
            "cov": cov,
        },
    )


def importance_resample(
    potential_batch, x: np.ndarray, cov: np.ndarray, rng: np.random.Generator, num_draws: int,
    n_proposal: int | None = None, nu: float = 7.0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Laplace + Pareto-smoothed importance sampling in the unconstrained space.

    ``n_proposal`` (default 2 num_draws) draws from a multivariate Student-t (``nu`` degrees of
    freedom, heavier tails than the Gaussian) at the optimum ``x`` with covariance ``cov``;
    log weights ``-U(x) - log q(x)`` Pareto-smoothed by arviz-stats (``psislw``, whose k-hat says
    whether the weights can be trusted: k < 0.7), then systematically resampled to ``num_draws``
    equally weighted draws. ``potential_batch`` maps (n, d) float32 points to U (n,).
    Returns (draws (num_draws, d), {"pareto_k", "is_ess"}).
    """
    import arviz_stats  # noqa: F401  (registers the .azstats accessor)
    import xarray as xr
    from scipy import stats

    n_proposal = n_proposal or 2 * num_draws
    prop = stats.multivariate_t(loc=x, shape=cov, df=nu)
    xp = np.atleast_2d(prop.rvs(size=n_proposal, random_state=rng))
    logp = -np.asarray(potential_batch(jnp.asarray(xp, jnp.float32)), np.float64)
    lw = np.where(np.isfinite(logp), logp - prop.logpdf(xp), -np.inf)
    lw = lw - np.max(lw)
    # psislw smooths log *ratios* given with the sign LOO uses (-log lik), hence -lw
    smoothed, khat = xr.DataArray(-lw, dims=["draw"]).azstats.psislw(dim="draw")
    smoothed = np.asarray(getattr(smoothed, "values", smoothed), np.float64)
    w = np.exp(smoothed - np.max(smoothed))
    w = w / w.sum()
    u = (rng.random() + np.arange(num_draws)) / num_draws
    idx = np.minimum(np.searchsorted(np.cumsum(w), u), n_proposal - 1)
    info = {"pareto_k": float(np.asarray(getattr(khat, "values", khat))),
            "is_ess": float(1.0 / np.sum(w**2))}
    return xp[idx], info


def _newton_polish(f, x, max_steps: int, tol: float):
    """Damped Newton on ``f`` from ``x`` with the exact Hessian, saddle-free (eigenvalues taken
    in absolute value, floored at 1e-6 of the largest, so a step from a saddle or a flat
    direction still descends; at negative curvature steps along that eigenvector are tried too)
    with backtracking on f. Returns (x, H at x as float64 symmetric,
    info); stops once H is positive definite and the Newton decrement ``sqrt(g^T H^-1 g)`` is
    below ``tol``, or after ``max_steps`` (a non-PD H is then left to the caller to report)."""
    hess = jax.jit(jax.hessian(f))
    vg = jax.jit(jax.value_and_grad(f))
    value, g = vg(x)
    info = {"steps": 0, "decrement": float("nan"), "value": float(value)}
    while True:
        H = np.asarray(hess(x), np.float64)
        H = 0.5 * (H + H.T)
        if not np.all(np.isfinite(H)):
            break
        evals, evecs = np.linalg.eigh(H)
        g64 = np.asarray(g, np.float64)
        eff = np.maximum(np.abs(evals), 1e-6 * np.abs(evals).max(initial=1.0))
        dx = evecs @ ((evecs.T @ g64) / eff)
        info["decrement"] = float(np.sqrt(max(np.dot(g64, dx), 0.0)))
        if (evals.min() > 0 and info["decrement"] < tol) or info["steps"] == max_steps:
            break
        # candidates: the Newton step halved up to 10 times and, at negative curvature, steps
        # along the most negative eigenvector (downhill side) of 2, 1, 1/2, 1/4 of its 1/sqrt|lam|
        # length scale; the best finite one is taken if it does not increase f (float32 noise)
        cands = [np.asarray(-(0.5**k) * dx) for k in range(10)]
        if evals.min() < 0:
            d = evecs[:, 0] * (-1.0 if np.dot(g64, evecs[:, 0]) > 0 else 1.0)
            cands += [d * a / np.sqrt(-evals[0]) for a in (2.0, 1.0, 0.5, 0.25)]
        best = None
        for c in cands:
            x_new = x + jnp.asarray(c, x.dtype)
            v_new, g_new = vg(x_new)
            if bool(jnp.isfinite(v_new)) and (best is None or float(v_new) < best[1]):
                best = (x_new, float(v_new), g_new)
        if best is None or best[1] > float(value) + 1e-6 * abs(float(value)):
            break
        x, value, g = best[0], jnp.asarray(best[1]), best[2]
        info["steps"] += 1
        info["value"] = float(value)
    return x, H, info


def drift_field_scan(
    problem: CalibrationProblem, init: dict | None = None, *, n_grid: int = 201, seed: int = 0
) -> dict:
    """Start values with E at the minimum of the potential on a grid over its prior range.

    The other sites stay at ``init`` (default :func:`nominal_init`). The grid step (5e-4 kV/cm
    for the Module-0 range 0.45-0.55 over 201 points) moves the arrival time of charge drifted
    15 cm by about one tick, finer than the rising edge the hits see. One jitted ``lax.map`` over
    the grid: a few seconds for 100 cm of track.
    """
    from numpyro.distributions import biject_to, constraints

    init = dict(init or nominal_init(problem))
    if "E" not in problem.free:
        return init
    potential_fn, _, z0 = potential_and_transforms(problem, seed, init)
    spec = problem.card.param("E")
    grid = np.linspace(spec.low, spec.high, n_grid + 2)[1:-1]
    to_u = biject_to(constraints.interval(spec.low, spec.high)).inv
    u = to_u(jnp.asarray(grid, z0["E"].dtype))

    def at(uE):
        return potential_fn({**z0, "E": uE})

    values = np.asarray(jax.jit(lambda us: jax.lax.map(at, us))(u))
    values = np.where(np.isfinite(values), values, np.inf)
    init["E"] = jnp.asarray(grid[int(np.argmin(values))], jnp.float32)
    return init


def potential_and_transforms(problem: CalibrationProblem, seed: int = 0, init: dict | None = None):
    """(potential_fn on unconstrained dict, postprocess_fn, initial unconstrained point)."""
    info, potential_fn, postprocess_fn, _ = initialize_model(
        jax.random.key(seed),
        calibration_model,
        model_args=(problem,),
        model_kwargs=_model_kwargs(problem),
        init_strategy=init_to_value(values=init or nominal_init(problem)),
    )
    return potential_fn, postprocess_fn, info.z


def hessian_pseudo_correlation(
    problem: CalibrationProblem, map_values: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The Hessian "pseudo-correlation" of talk 002, computed the old way.

    At the optimum, the negative log posterior is differentiated twice with respect to the free
    calibration parameters in units of their nominal values (theta / theta_nominal), the dE/dx
    latents held at their optimum; the inverse of that normalised Hessian is scaled to unit
    diagonal. Returns (correlation, sd in physical units from the inverse Hessian).
    """
    from numpyro.infer.util import log_density

    nom = problem.card.nominal()
    free = problem.free
    kw = _model_kwargs(problem)
    base = {k: jnp.asarray(v) for k, v in map_values.items() if k in (*free, *LATENT_SITES)}

    def nlp(x):
        vals = dict(base)
        for i, p in enumerate(free):
            vals[p] = x[i] * nom[p]
        ld, _ = log_density(calibration_model, (problem,), kw, vals)
        return -ld

    x0 = jnp.asarray([float(base[p]) / nom[p] for p in free])
    H = np.asarray(jax.jit(jax.hessian(nlp))(x0), np.float64)
    if not np.all(np.isfinite(H)):
        raise FloatingPointError("the Hessian of the negative log posterior is not finite")
    corr, sd_norm = cov_to_corr(np.linalg.pinv(0.5 * (H + H.T)))
    return corr, sd_norm * np.array([nom[p] for p in free])


def cov_to_corr(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correlation, sd) of a covariance; NaN rows/columns where the variance is not > 0 (a
    Hessian that is not positive definite along that parameter)."""
    cov = np.asarray(cov, np.float64)
    d = np.diag(cov)
    ok = np.isfinite(d) & (d > 0)
    sd = np.where(ok, np.sqrt(np.where(ok, d, 1.0)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd), sd


def predictive_hits(
    problem: CalibrationProblem,
    samples: dict[str, np.ndarray],
    *,
    seed: int = 0,
    num_draws: int = 200,
) -> np.ndarray:
    """Posterior-predictive hit tables: parameters and dE/dx drawn from ``samples``, the
    stochastic readout run once per draw. Returns (num_draws, channels, M, 2)."""
    flat = {
        k: np.asarray(v).reshape((-1, *np.asarray(v).shape[2:]))
        for k, v in samples.items()
        if k in (*problem.free, *LATENT_SITES)
    }
    n = next(iter(flat.values())).shape[0]
    idx = np.random.default_rng(seed).choice(n, size=min(num_draws, n), replace=False)
    sub = {k: jnp.asarray(v[idx]) for k, v in flat.items()}
    pred = Predictive(
        calibration_model, posterior_samples=sub, return_sites=["hits"], batch_ndims=1
    )
    return np.asarray(pred(jax.random.key(seed), problem, hits=None)["hits"])


def prior_samples(
    problem: CalibrationProblem, *, seed: int = 0, num_samples: int = 200
) -> dict[str, np.ndarray]:
    """Prior draws of the parameters, dE/dx and the prior-predictive hit table."""
    pred = Predictive(calibration_model, num_samples=num_samples)
    out = pred(jax.random.key(seed), problem, hits=None)
    return {k: np.asarray(v) for k, v in out.items()}


def param_array(samples: dict[str, np.ndarray], names=PARAM_NAMES) -> np.ndarray:
    """Stack the free calibration parameters present in ``samples``: (chains*draws, n)."""
    cols = [np.asarray(samples[p]).reshape(-1) for p in names if p in samples]
    return np.stack(cols, axis=1)


def set_host_devices(n: int | None = None) -> None:
    """Expose ``n`` (default: all cores) CPU devices for parallel chains; call before JAX starts."""
    import os

    numpyro.set_host_device_count(n or os.cpu_count() or 1)
