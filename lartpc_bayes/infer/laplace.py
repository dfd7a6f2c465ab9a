r"""The one MAP + Laplace fitter: compiled once per problem shape, the hit table a traced argument.

Potential. :math:`U(x) = -\log p(x, \mathrm{hits})` in NumPyro's unconstrained space: the scaled
logit of every uniform prior, the non-centred dE/dx latents and any other latent site (stopping-
track end points, geometry offsets) as they are; ``potential_energy`` of
:func:`lartpc_bayes.model.calibration_model` with the observed table passed in, so that
:class:`LaplaceFitter` compiles its L-BFGS loop, gradient, Hessian and batched potential once and
fits any number of hit tables of the same shape (``fit``, ``demo``, every campaign replica).

Algorithm (:meth:`LaplaceFitter.fit`):

1. With E free, its start value is the minimum of U on a grid over the prior range of E, the other
   sites at the start values (:func:`drift_field_scan` explains why: from a start whose arrival
   times are off by more than the rising edge of the charge, every hit sits on the likelihood
   floor and the potential has no slope towards the truth).
2. L-BFGS (scipy's L-BFGS-B on the host, each step one call of the compiled value and gradient,
   on both the dense and the block path) until the gradient is below ``gtol``
   or U stalls (a decrease below 1e-4 over ten iterations: float32 gradients of a potential of
   O(1e3) have a noise floor at the 1e-3 level).
3. Saddle-free damped Newton with the exact Hessian (forward-over-reverse) until H is positive
   definite and the Newton decrement :math:`\sqrt{g^T H^{-1} g}` -- the distance to the optimum in
   posterior standard deviations -- is below ``newton_tol``.
4. Laplace: :math:`x \sim N(x^*, H^{-1})`, mapped back to physical units; or, with
   ``importance``, Pareto-smoothed importance sampling of a Student-t proposal
   (:func:`importance_resample`). A Hessian that is not finite or not positive definite gives
   ``ok = False`` and no draws, never a wrong sd.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from ..model import LATENT_SITES, CalibrationProblem, calibration_model
from .cache import AheadOfTime
from .common import (
    FitResult,
    _flat_index,
    hessian_by_columns,
    nominal_init,
    pseudo_correlation_from_hessian,
)

__all__ = ["LaplaceFitter", "drift_field_scan", "importance_resample", "run_laplace"]

#: potentials evaluated at once in the E scan and the importance sampling. One: a plain
#: ``lax.map`` (a loop). Batching with ``vmap`` compiles a batched copy of the likelihood: on
#: 200 cm of track 4 at once took 30 s to compile and 741 MB of temporaries against 7 s and
#: 183 MB one at a time, at the same run time within 15 % (64 at once once needed 11.6 GB,
#: benchmarks/fit_memory.py, issue 16)
BATCH_POTENTIALS = 1
#: Hessian columns (forward-over-reverse tangents) computed at once. One: a ``lax.map`` whose body
#: is a single Hessian-vector product. Batching columns with ``vmap`` (``batch_size`` > 1) makes
#: XLA compile a batched copy of the whole gradient tape: on 30 cm of track (benchmarks/
#: fit_memory.py pieces) 4 columns at once took 119 s to compile, 4.7 GB peak and 3.5 s to run,
#: one column 51 s, 2.6 GB and 1.2 s (16 at once passed 8 GB on the 200 cm fit of issue 16)
HESSIAN_CHUNK = 1
#: stall test of the L-BFGS loop: U decreased by less than this over STALL_WINDOW iterations
STALL_TOL = 1e-4
STALL_WINDOW = 10


class LaplaceFitter:
    """MAP + exact-Hessian Laplace approximation for one :class:`CalibrationProblem`.

    Everything that depends on the problem's static structure (channel plan, latent map, free
    parameters) is compiled on first use; the observed hit table (channels, M, 2) is an argument,
    so a new data set of the same shape reuses the compiled code (and, with the persistent
    compilation cache of :mod:`lartpc_bayes.infer.cache`, so does a new process).

    maxiter : L-BFGS iterations at most; gtol : gradient-norm stop; newton_steps / newton_tol :
    the Newton polish (step 3 of the module docstring); n_grid : points of the E scan;
    model / model_kwargs : a NumPyro model with the signature ``model(problem, hits=..., **kw)``
    that extends :func:`lartpc_bayes.model.calibration_model` (e.g. the joint charge + light
    model of :mod:`lartpc_bayes.light`); ``model_kwargs`` are its other observed data;
    hessian_chunk : Hessian columns computed at once (:func:`_chunked_hessian`: memory of that many
    gradient tangents, not of all of them);
    hessian : "dense" (default) or "block": ``problem`` is then an
    :class:`~lartpc_bayes.infer.events.EventBatch` (the potential a sum over events, sharded over
    its mesh), the MAP stages are these and the Hessian stages are the block-arrow ones of
    :class:`~lartpc_bayes.infer.block_laplace.BlockLaplace` (per-event blocks, Schur complement),
    its L-BFGS preconditioned by the block whitening map (:meth:`_lbfgs_block`). The dense path's
    L-BFGS is not preconditioned: whitening by the exact Hessian at the start was tried on the
    108 cm demo (171 iterations against 180, and a local optimum 2.4 nats higher; docs/scale.md).
    """

    def __init__(
        self,
        problem: CalibrationProblem,
        *,
        maxiter: int = 300,
        gtol: float = 1e-3,
        newton_steps: int = 12,
        newton_tol: float = 1e-2,
        n_grid: int = 201,
        init: dict | None = None,
        model: Callable = calibration_model,
        model_kwargs: dict[str, Any] | None = None,
        hessian_chunk: int = HESSIAN_CHUNK,
        hessian: str = "dense",
    ) -> None:
        if hessian not in ("dense", "block"):
            raise ValueError(f"hessian must be 'dense' or 'block', got {hessian!r}")
        self._block = None
        if hessian == "block":
            self._init_block(problem, maxiter, gtol, newton_steps, newton_tol, n_grid)
            return
        self.problem = problem
        self.model = model
        kw = dict(model_kwargs or {})
        self.free = problem.free
        self.maxiter, self.gtol = int(maxiter), float(gtol)
        self.newton_steps, self.newton_tol, self.n_grid = int(newton_steps), newton_tol, n_grid
        self._init_values = dict(init or nominal_init(problem))
        dummy = _dummy_table(problem)
        z0 = unconstrain_fn(model, (problem,), {**kw, "hits": dummy}, self._init_values)
        z0 = {k: jnp.asarray(v, jnp.float32) for k, v in z0.items()}
        x0, unravel = ravel_pytree(z0)
        self.x0, self.unravel, self.dim = x0, unravel, int(x0.size)

        def U(x, table):
            return potential_energy(model, (problem,), {**kw, "hits": table}, unravel(x))

        self._U = U
        # compiled in the background while the E scan and L-BFGS run (infer.cache.AheadOfTime)
        self._value_and_grad = AheadOfTime(jax.jit(jax.value_and_grad(U)))
        self._hessian = AheadOfTime(jax.jit(_chunked_hessian(U, hessian_chunk)))
        self._U_batch = jax.jit(_batched_potential(U))
        # L-BFGS on the host over the compiled value and gradient: one compiled program holds the
        # likelihood instead of a second one (optax's zoom line search inlines the potential's
        # value and gradient again: 34 s of compilation on a 5 cm problem, more than the fit)
        self._minimise = self._lbfgs_host
        self._constrain = jax.jit(
            lambda xs: jax.lax.map(
                lambda v: constrain_fn(model, (problem,), {**kw, "hits": dummy},
                                       unravel(v), return_deterministic=True),
                xs, batch_size=128,
            )
        )
        self._nuts = None
        self._kw = kw

    def _init_block(self, batch, maxiter, gtol, newton_steps, newton_tol, n_grid) -> None:
        """The block path: potential, start and transforms from the EventBatch."""
        from .block_laplace import BlockLaplace

        self.problem, self.model, self._kw = batch, None, {}
        self.free = batch.free
        self.maxiter, self.gtol = int(maxiter), float(gtol)
        self.newton_steps, self.newton_tol, self.n_grid = int(newton_steps), newton_tol, n_grid
        nom = batch.card.nominal()
        th = []
        for p in batch.free:  # unconstrained nominal: logit((v - lo) / (hi - lo))
            spec = batch.card.param(p)
            u = (nom[p] - spec.low) / (spec.high - spec.low)
            th.append(np.log(u) - np.log1p(-u))
        x0 = jnp.asarray(batch.pack(dict(zip(batch.free, th, strict=True))), jnp.float32)
        self.x0, self.dim = batch.place(x0), int(x0.size)
        self.unravel = lambda x: {"x": x}
        self._e_index = batch.free.index("E") if "E" in batch.free else None
        U = batch.potential
        self._U = U
        self._value_and_grad = jax.jit(jax.value_and_grad(U))
        self._U_batch = jax.jit(_batched_potential(U))
        # host L-BFGS as on the dense path: optax's jitted loop inlines the potential again in
        # its line search (its compilation took longer than the 48 cm block fit's MAP itself);
        # preconditioned by the block Hessian at the start
        self._minimise = self._lbfgs_block
        self._constrain = None
        self._nuts = None
        self._block = BlockLaplace(batch)

    # -- pieces -----------------------------------------------------------------------------

    def _lbfgs_block(self, x0, table):
        """The block path's L-BFGS, preconditioned: ``x = x0 + M w`` with M the block whitening
        map of the block Hessian at the start (:meth:`BlockLaplace.preconditioner`; saddle-free
        there), L-BFGS in w. theta's unconstrained scales differ by 10^3 (E's posterior sd is
        0.3 % of its prior, A_B's 30 %): unpreconditioned, 106 cm took 295 iterations."""
        fwd, adj = self._block.preconditioner(x0)
        return self._lbfgs_host(x0, table, precondition=(fwd, adj))

    def _lbfgs_host(self, x0, table, precondition=None):
        """L-BFGS (scipy's L-BFGS-B, no bounds) from ``x0``, each step one call of the compiled
        value and gradient; stop at ``gtol`` (largest gradient component), after ``maxiter``
        iterations, on a stall (U decreased by less than STALL_TOL over STALL_WINDOW iterations)
        or when the line search finds no decrease (the float32 noise floor; the Newton polish
        takes over). ``precondition`` = (fwd, adj): minimise over w with ``x = fwd(w)`` linear,
        gradient ``adj(grad_x)`` (its transpose). Returns ``(x, U, |grad|, iterations)`` as the
        jitted loop does (x and the gradient norm in x)."""
        from scipy.optimize import minimize

        vg = self._value_and_grad
        seen: dict[str, Any] = {}
        hist: list[float] = []
        fwd, adj = precondition or (lambda w: w, lambda g: g)

        def fun(w):
            x = fwd(w)
            v, g = vg(jnp.asarray(x, jnp.float32), table)
            v, g = float(v), np.asarray(g, np.float64)
            if not (np.isfinite(v) and np.all(np.isfinite(g))):
                return np.inf, np.zeros(np.shape(w))  # the line search backs off
            if v < seen.get("v", np.inf):
                seen.update(v=v, x=np.array(x), g=g)
            return v, adj(g)

        def stall(intermediate_result):
            hist.append(float(intermediate_result.fun))
            if len(hist) > STALL_WINDOW and hist[-STALL_WINDOW - 1] - hist[-1] < STALL_TOL:
                raise StopIteration

        w0 = np.asarray(x0, np.float64) if precondition is None else np.zeros(self.dim)
        res = minimize(fun, w0, jac=True, method="L-BFGS-B",
                       callback=stall,
                       options={"maxiter": self.maxiter, "gtol": self.gtol, "ftol": 0.0,
                                "maxcor": 10, "maxls": 30})
        if "x" not in seen:  # not even the start was finite: hand it on, the polish reports
            return jnp.asarray(x0, jnp.float32), jnp.inf, jnp.inf, int(res.nit)
        return (jnp.asarray(seen["x"], jnp.float32), seen["v"], float(np.linalg.norm(seen["g"])),
                int(res.nit))

    def start(self, table, init: dict | None = None, scan_E: bool = True) -> jax.Array:
        """Unconstrained start point: ``init`` (default nominal) with E from the grid scan."""
        x0 = self.x0
        if self._block is not None and init is not None:
            raise ValueError("init values are not supported with hessian='block'")
        if init is not None:
            z = unconstrain_fn(self.model, (self.problem,), {**self._kw, "hits": table}, init)
            x0 = ravel_pytree({k: jnp.asarray(v, jnp.float32) for k, v in z.items()})[0]
        if not (scan_E and "E" in self.free):
            return x0
        spec = self.problem.card.param("E")
        grid = np.linspace(spec.low, spec.high, self.n_grid + 2)[1:-1]
        xs = np.tile(np.asarray(x0), (self.n_grid, 1))
        j = self._e_index if self._block is not None else _flat_index(self.unravel(x0), "E")
        # NumPyro's bijection of the uniform prior: E = lo + (hi - lo) sigmoid(u)
        u = (grid - spec.low) / (spec.high - spec.low)
        xs[:, j] = np.log(u) - np.log1p(-u)
        # both paths' batched potential maps BATCH_POTENTIALS at a time: one call, one shape
        vals = np.asarray(self._U_batch(jnp.asarray(xs, jnp.float32), table))
        vals = np.where(np.isfinite(vals), vals, np.inf)
        return jnp.asarray(xs[int(np.argmin(vals))], jnp.float32)

    def to_physical(self, xs: np.ndarray) -> dict[str, np.ndarray]:
        """Unconstrained draws (n, dim) -> every site in physical units (dE/dx in MeV/cm)."""
        if self._block is not None:
            return self.problem.unpack(xs)
        out = self._constrain(jnp.asarray(np.atleast_2d(xs), jnp.float32))
        return {k: np.asarray(v, np.float64) for k, v in out.items() if k != "hits"}

    # -- the fit ----------------------------------------------------------------------------

    def fit(
        self,
        table: np.ndarray | None = None,
        *,
        seed: int = 0,
        num_draws: int = 1000,
        importance: bool = False,
        n_proposal: int | None = None,
        scan_E: bool = True,
        init: dict | None = None,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Fit one hit table (default: the problem's own). Returns a dict with ``ok``, ``x_map``
        (unconstrained), ``map`` (physical, every site), ``draws`` (physical, ``num_draws`` per
        site), ``cov_unconstrained``, ``hessian_eigenvalues``, ``potential``, ``grad_norm``,
        ``iterations``, ``newton_steps``, ``newton_decrement``, timings ``map_s`` and
        ``hessian_s``, and with ``importance`` the PSIS ``pareto_k`` and ``is_ess``; ``error``
        says why when ``ok`` is False. ``log`` (optional) receives one line as each stage starts:
        compilation, E scan, L-BFGS, Hessian and Newton polish, draws."""
        say = log or (lambda _msg: None)
        if table is None:
            table = self.problem.tables if self._block is not None else self.problem.table
        if table is None:
            raise ValueError("the problem has no observed hits and no table was given")
        tb = jax.tree.map(lambda a: jnp.asarray(a, jnp.int32), table)
        t0 = time.perf_counter()
        if self._block is None:  # lowered here, compiled behind the E scan and L-BFGS
            say(f"compile: lowering the gradient and the Hessian (dim {self.dim}); XLA compiles "
                "them in the background")
            x_aval = jax.ShapeDtypeStruct(self.x0.shape, self.x0.dtype)
            self._value_and_grad.prefetch(x_aval, tb)
            self._hessian.prefetch(x_aval, tb)
        if scan_E and "E" in self.free:
            say(f"E scan: the potential on {self.n_grid} drift fields")
        x0 = self.start(tb, init, scan_E)
        say(f"optimise: L-BFGS (at most {self.maxiter} iterations)")
        x, _, _, it = self._minimise(x0, tb)
        if self._block is not None:
            x = self.problem.place(x)
        t1 = time.perf_counter()
        say(f"Hessian: {it} L-BFGS iterations in {t1 - t0:.1f} s; exact Hessian and Newton "
            "polish")
        if self._block is not None:
            out = self._block.finish(self, x, tb, t0, t1, seed=seed, num_draws=num_draws,
                                     importance=importance, n_proposal=n_proposal)
            out["iterations"] = int(it)
            return out
        x, H, newton = _newton_polish(
            lambda v: self._value_and_grad(v, tb), lambda v: self._hessian(v, tb), x,
            self.newton_steps, self.newton_tol,
        )
        t2 = time.perf_counter()
        out: dict[str, Any] = {
            "x_map": np.asarray(x), "potential": newton["value"], "grad_norm": newton["grad_norm"],
            "iterations": int(it), "newton_steps": newton["steps"],
            "newton_decrement": newton["decrement"], "map_s": t1 - t0, "hessian_s": t2 - t1,
            "ok": False,
        }
        if not np.all(np.isfinite(H)):
            out["error"] = "the Hessian of the potential at the MAP is not finite"
            return out
        evals, evecs = np.linalg.eigh(H)
        out["hessian_eigenvalues"] = evals
        out["min_eigenvalue"] = float(evals.min())
        if evals.min() <= 0:
            out["error"] = (f"the Hessian at the optimum is not positive definite (smallest "
                            f"eigenvalue {evals.min():.3g}): no Laplace approximation; use NUTS")
            return out
        cov = (evecs / evals) @ evecs.T
        say(f"sampling: {num_draws} Laplace draws" + (" + importance sampling" if importance
                                                      else ""))
        rng = np.random.default_rng(seed)
        if importance:
            t3 = time.perf_counter()
            xs, info = importance_resample(
                lambda v: self._U_batch(v, tb), np.asarray(x, np.float64), cov, rng, num_draws,
                n_proposal,
            )
            out.update(info)
            out["importance_s"] = time.perf_counter() - t3
        else:
            xs = rng.multivariate_normal(np.asarray(x, np.float64), cov, size=num_draws)
        out["draws"] = self.to_physical(xs)
        out["map"] = {k: v[0] for k, v in self.to_physical(np.asarray(x)[None]).items()}
        out["map_unconstrained"] = {k: np.asarray(v) for k, v in self.unravel(x).items()}
        out["cov_unconstrained"] = cov
        out["hessian_unconstrained"] = H
        out["grad_unconstrained"] = newton["grad"]
        out["ok"] = True
        return out

    def fit_nuts(self, table: np.ndarray, *, seed: int = 0, num_warmup: int = 300,
                 num_draws: int = 1000, thin: int = 10) -> dict[str, Any]:
        """BlackJAX NUTS on the same potential (one chain, Stan window adaptation, dense mass
        matrix) started at the MAP; compiled once per fitter; draws thinned by ``thin``.
        Returns the Laplace fit's dict with the NUTS draws in ``draws``."""
        import blackjax

        lap = self.fit(table, seed=seed, num_draws=10)
        if self._nuts is None:
            U = self._U

            @jax.jit
            def run(key, x0, tb):
                def logdensity(x):
                    return -U(x, tb)

                k1, k2 = jax.random.split(key)
                adapt = blackjax.window_adaptation(
                    blackjax.nuts, logdensity, is_mass_matrix_diagonal=False,
                    target_acceptance_rate=0.85,
                )
                (state, params), _ = adapt.run(k1, x0, num_steps=num_warmup)
                kernel = blackjax.nuts(logdensity, **params)

                def step(st, kk):
                    st, info = kernel.step(kk, st)
                    return st, (st.position, info.is_divergent, info.num_integration_steps)

                _, (pos, div, nst) = jax.lax.scan(step, state, jax.random.split(k2, num_draws))
                return pos, div, nst

            self._nuts = run
        t0 = time.perf_counter()
        pos, div, nst = self._nuts(jax.random.key(seed), jnp.asarray(lap["x_map"]),
                                   jnp.asarray(table, jnp.int32))
        pos = np.asarray(pos)[::thin]
        out = dict(lap)
        out["nuts_s"] = time.perf_counter() - t0
        out["divergences"] = int(np.asarray(div).sum())
        out["mean_steps"] = float(np.asarray(nst).mean())
        out["draws"] = self.to_physical(pos)
        out["ok"] = bool(np.all(np.isfinite(pos)))
        if not out["ok"]:
            out["error"] = "non-finite NUTS draws"
        return out


def _batched_potential(U: Callable) -> Callable:
    """``U`` over a batch of points (n, dim), :data:`BATCH_POTENTIALS` at a time."""

    def batch(xs, table):
        if BATCH_POTENTIALS <= 1:
            return jax.lax.map(lambda x: U(x, table), xs)
        return jax.lax.map(lambda x: U(x, table), xs, batch_size=BATCH_POTENTIALS)

    return batch


def _chunked_hessian(U: Callable, chunk: int) -> Callable:
    """Exact Hessian of ``U(x, table)`` in x, ``chunk`` forward-over-reverse columns per loop step
    (:func:`~lartpc_bayes.infer.common.hessian_by_columns`); ``jax.hessian`` vmaps all of them
    at once, so its working set is dim gradient tapes (21.6 GB for 200 cm of track with 47
    latents, issue 16)."""

    def hessian(x, table):
        return hessian_by_columns(lambda y: U(y, table), x, chunk)

    return hessian


def _dummy_table(problem: CalibrationProblem) -> jax.Array:
    """An empty hit table of the problem's shape (tracing only: shapes, not values, matter)."""
    if problem.table is not None:
        return jnp.asarray(problem.table, jnp.int32)
    n_ch = sum(b.n_channels for b in problem.plan.buckets)
    M = problem.card.electronics.max_hits_per_pixel
    return jnp.full((n_ch, M, 2), -1, jnp.int32)


def _newton_polish(value_and_grad, hessian, x, max_steps: int, tol: float):
    """Damped saddle-free Newton from ``x`` with the exact Hessian (eigenvalues in absolute value,
    floored at 1e-6 of the largest, so a step from a saddle or a flat direction still descends;
    at negative curvature, steps along that eigenvector are tried too) with backtracking.
    Returns (x, H at x as float64 symmetric, info); stops once H is positive definite and the
    Newton decrement ``sqrt(g^T H^-1 g)`` is below ``tol``, or after ``max_steps`` (a non-PD H is
    then left to the caller to report)."""
    value, g = value_and_grad(x)
    info = {"steps": 0, "decrement": float("nan"), "value": float(value),
            "grad_norm": float(jnp.linalg.norm(g))}
    while True:
        H = np.asarray(hessian(x), np.float64)
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
            v_new, g_new = value_and_grad(x_new)
            if bool(jnp.isfinite(v_new)) and (best is None or float(v_new) < best[1]):
                best = (x_new, float(v_new), g_new)
        if best is None or best[1] > float(value) + 1e-6 * abs(float(value)):
            break
        x, value, g = best[0], jnp.asarray(best[1]), best[2]
        info["steps"] += 1
        info["value"] = float(value)
        info["grad_norm"] = float(jnp.linalg.norm(g))
    info["grad"] = np.asarray(g, np.float64)
    return x, H, info


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


def drift_field_scan(
    problem: CalibrationProblem, init: dict | None = None, *, n_grid: int = 201, seed: int = 0
) -> dict:
    """Start values (physical) with E at the minimum of the potential on a grid over its prior.

    The other sites stay at ``init`` (default :func:`nominal_init`). The grid step (5e-4 kV/cm
    for the Module-0 range 0.45-0.55 over 201 points) moves the arrival time of charge drifted
    15 cm by about one tick, finer than the rising edge the hits see. Used to start NUTS chains;
    :meth:`LaplaceFitter.fit` does the same scan on its compiled batched potential.
    """
    del seed  # the scan is deterministic
    init = dict(init or nominal_init(problem))
    if "E" not in problem.free or problem.table is None:
        return init
    fitter = LaplaceFitter(problem, init=init, n_grid=n_grid)
    x = fitter.start(jnp.asarray(problem.table, jnp.int32), None, scan_E=True)
    init["E"] = jnp.asarray(fitter.to_physical(np.asarray(x)[None])["E"][0], jnp.float32)
    return init


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
    fitter: LaplaceFitter | None = None,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """MAP + Laplace (or + importance sampling) of ``problem`` with its observed table, as a
    :class:`FitResult` (draws shaped (1, num_samples, ...)); ``log`` receives a line per stage
    (:meth:`LaplaceFitter.fit`). ``fitter`` reuses a compiled
    :class:`LaplaceFitter` of the same problem. Raises when no Laplace approximation exists
    (Hessian not finite or not positive definite at the optimum)."""
    fitter = fitter or LaplaceFitter(problem, maxiter=maxiter, gtol=gtol,
                                     newton_steps=newton_steps, newton_tol=newton_tol)
    fit = fitter.fit(problem.table, seed=seed, num_draws=num_samples, importance=importance,
                     scan_E=scan_E, init=init, log=log)
    _raise_unless_ok(fit)
    map_values = dict(fit["map"])
    map_values.update({k: v for k, v in fit["map_unconstrained"].items() if k in LATENT_SITES})
    pseudo = pseudo_correlation_from_hessian(
        problem, fitter.unravel, fit["x_map"], fit["hessian_unconstrained"],
        fit["grad_unconstrained"])
    return _fit_result(fit, importance, map_values, pseudo, {"cov": fit["cov_unconstrained"]})


def _raise_unless_ok(fit: dict[str, Any]) -> None:
    """FloatingPointError (Hessian not finite) or LinAlgError (not positive definite) when the
    Laplace fit has no approximation."""
    if not fit["ok"]:
        err = fit.get("error", "Laplace fit failed")
        if "not finite" in err:
            raise FloatingPointError(err)
        raise np.linalg.LinAlgError(err)


def _fit_result(fit: dict[str, Any], importance: bool, map_values: dict, pseudo,
                extra: dict[str, Any]) -> FitResult:
    """The :class:`FitResult` of a Laplace fit dict (draws shaped (1, n, ...))."""
    info = {k: fit[k] for k in ("pareto_k", "is_ess") if k in fit}
    return FitResult(
        "laplace-is" if importance else "laplace",
        {k: v[None] for k, v in fit["draws"].items()},
        map_values=map_values,
        timings={"fit_s": fit["map_s"] + fit["hessian_s"] + fit.get("importance_s", 0.0)},
        info={
            **info,
            "hessian_pseudo": pseudo,
            "iterations": fit["iterations"],
            "newton_steps": fit["newton_steps"],
            "newton_decrement": fit["newton_decrement"],
            "final_potential": fit["potential"],
            "hessian_eigenvalues": fit["hessian_eigenvalues"],
            "unconstrained_map": fit["x_map"],
            **extra,
        },
    )


def _block_fit(batch, *, seed: int, maxiter: int, num_draws: int, importance: bool,
               log: Callable[[str], None] | None):
    """The block-arrow Laplace fit of a run shared by :func:`run_laplace_block` and
    :func:`run_nuts_block`: (fitter, fit dict, Hessian pseudo-correlation from theta's block by
    the chain rule, the info both results carry)."""
    from .common import pseudo_correlation_from_theta_block

    fitter = LaplaceFitter(batch, maxiter=maxiter, hessian="block")
    fit = fitter.fit(seed=seed, num_draws=num_draws, importance=importance, log=log)
    _raise_unless_ok(fit)
    pseudo = pseudo_correlation_from_theta_block(
        batch.card, list(batch.free), np.asarray(fit["x_map"], np.float64)[: batch.k],
        fit["hessian_theta"], fit["grad_theta"])
    info = {"cov": fit["cov_theta"], "hessian": "block",
            "groups": [list(g) for bk in batch.buckets for g in bk.group_events]}
    return fitter, fit, pseudo, info


def run_laplace_block(
    batch,
    *,
    seed: int = 0,
    maxiter: int = 300,
    num_samples: int = 1000,
    importance: bool = False,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """:func:`run_laplace` on an :class:`~lartpc_bayes.infer.events.EventBatch` with the
    block-arrow Hessian (``LaplaceFitter(batch, hessian="block")``): draws and MAP in the sites
    and latent order of the combined problem (``build_problem`` on every event together), so the
    result feeds the same posterior-predictive checks and DataTree; the Hessian
    pseudo-correlation from theta's block by the chain rule. ``info["cov"]`` is theta's marginal
    covariance (k, k, unconstrained), not the dense one."""
    _, fit, pseudo, info = _block_fit(batch, seed=seed, maxiter=maxiter, num_draws=num_samples,
                                      importance=importance, log=log)
    return _fit_result(fit, importance, dict(fit["map"]), pseudo, info)


def run_nuts_block(
    batch,
    *,
    sampler: str = "numpyro",
    seed: int = 0,
    num_warmup: int = 200,
    num_samples: int = 400,
    num_chains: int = 1,
    maxiter: int = 300,
    log: Callable[[str], None] | None = None,
) -> FitResult:
    """NUTS for a run of many events: the block-arrow Laplace fit (:func:`run_laplace_block`'s
    stages), then ``num_chains`` chains of :func:`lartpc_bayes.infer.block_laplace.whitened_nuts`
    (one after another, seeds ``seed + c``) on the joint posterior of theta and every latent,
    whitened by the block factor; ``sampler`` "numpyro" or "blackjax". Draws in the sites and
    latent order of the combined problem, shaped (chains, draws, ...), with NUTS's sample stats;
    ``info`` keeps the Laplace fit's (MAP, theta covariance, pseudo-correlation) beside the
    chains' step sizes."""
    from .block_laplace import whitened_nuts

    fitter, fit, pseudo, info = _block_fit(batch, seed=seed, maxiter=maxiter, num_draws=200,
                                           importance=False, log=log)
    t0 = time.perf_counter()
    chains = []
    for c in range(num_chains):
        if log:
            log(f"sampling: whitened NUTS ({sampler}) chain {c + 1}/{num_chains}, "
                f"{num_warmup} + {num_samples}")
        chains.append(whitened_nuts(fitter, fit, sampler=sampler, seed=seed + c,
                                    num_warmup=num_warmup, num_draws=num_samples, progress=log))
    samples = {k: np.stack([ch["draws"][k] for ch in chains]) for k in chains[0]["draws"]}
    stats = {k: np.stack([ch["stats"][k] for ch in chains]) for k in chains[0]["stats"]}
    return FitResult(
        "nuts" if sampler == "numpyro" else "blackjax", samples, stats,
        map_values=dict(fit["map"]),
        timings={"fit_s": fit["map_s"] + fit["hessian_s"] + time.perf_counter() - t0,
                 "nuts_s": time.perf_counter() - t0},
        info={**info, "hessian_pseudo": pseudo, "whitened": True, "num_chains": num_chains,
              "num_warmup": num_warmup, "step_size": [ch["step_size"] for ch in chains],
              "unconstrained_map": fit["x_map"], "final_potential": fit["potential"]},
    )
