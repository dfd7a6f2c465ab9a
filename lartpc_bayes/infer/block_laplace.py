r"""Block-arrow Laplace and whitened NUTS for an :class:`~lartpc_bayes.infer.events.EventBatch`.

The Hessian of :math:`U = U_0(\theta) + \sum_e U_e(\theta, l_e)` is block-arrow:

.. math:: H = \begin{pmatrix} A & B_1^T & \cdots \\ B_1 & D_1 & \\ \vdots & & \ddots
          \end{pmatrix},\quad A = \nabla^2 U_0 + \sum_e \nabla^2_{\theta\theta} U_e,\
          B_e = \nabla_{l_e}\nabla_\theta U_e,\ D_e = \nabla^2_{l_e} U_e.

The blocks come from k + n_c Hessian-vector products of the whole potential (:func:`block_hessian`):
the k theta axes, and n_c "coloured" tangents, tangent c being 1 on the latent of rank c of every
event at once (n_c = the largest event's latent count; graph colouring of a sparse Hessian, as in
Curtis, Powell and Reid 1974): latents of different events share no term, so each product returns
column c of every event's block together. The cost is (k + n_c) products of the run's potential
-- linear in the number of events -- and the memory that of one product; the latent blocks are
stored per group of events (:mod:`.events`), never (total latents)^2. theta's marginal precision is
the Schur complement :math:`S = A - \sum_e B_e^T D_e^{-1} B_e`, its covariance :math:`S^{-1}`.
A Newton step solves :math:`H\,\delta = g` blockwise:
:math:`S\,\delta_\theta = g_\theta - \sum_e B_e^T D_e^{-1} g_e`,
:math:`\delta_e = D_e^{-1}(g_e - B_e \delta_\theta)`; the Newton decrement is
:math:`\sqrt{g^T\delta}`. Draws of :math:`N(x^*, H^{-1})`:
:math:`\theta = \theta^* + L_S^{-T} w_0`,
:math:`l_e = l_e^* - D_e^{-1} B_e (\theta - \theta^*) + L_{D_e}^{-T} w_e`, w standard normal
(:math:`S = L_S L_S^T`, :math:`D_e = L_{D_e} L_{D_e}^T`). Importance sampling: the same map with
w_0 multivariate-t (nu = 7) and the exact joint log density of the proposal, Pareto-smoothed
weights as in :func:`lartpc_bayes.infer.laplace.importance_resample`.

The same map, linear with constant Jacobian, whitens the joint posterior for NUTS
(:func:`whitened_nuts`): both NumPyro and BlackJAX sample :math:`U(x(w))` in w, where the
posterior is close to N(0, I) -- the joint rather than latents Laplace-marginalised, because
marginalising needs an inner optimisation of every event's latents at every leapfrog step (its
gradient through the inner optimum needs the same blocks again), while the whitened joint costs
one gradient of U per step, shards like U, and is exact (no Laplace error in the latents).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .events import EventBatch

__all__ = ["BlockHessian", "BlockLaplace", "block_hessian", "sample_nuts", "whitened_nuts",
           "whitening_map"]

#: ulps of |U| below which a predicted decrease is not resolved by evaluating the float32
#: potential (a sum of ~10^4 channel terms rounds by a few ulp of the total): BlockLaplace.newton
F32_NOISE_ULP = 8
#: per-draw NUTS statistics of :func:`sample_nuts`, named as :func:`lartpc_bayes.infer.run_nuts`
STAT_NAMES = ("diverging", "n_steps", "energy", "acceptance_rate")


@dataclass
class BlockHessian:
    """A (k, k) theta block (prior included); per bucket B (E, n_l, k) and D (E, n_l, n_l)."""

    A: np.ndarray
    B: list[np.ndarray]
    D: list[np.ndarray]

    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.A)) and all(
            np.all(np.isfinite(b)) and np.all(np.isfinite(d)) for b, d in zip(self.B, self.D,
                                                                               strict=True)))

    def dense(self) -> np.ndarray:
        """The full matrix (small problems and tests only: memory dim^2)."""
        k = self.A.shape[0]
        n = k + sum(b.shape[0] * b.shape[1] for b in self.B)
        H = np.zeros((n, n))
        H[:k, :k] = self.A
        i = k
        for B, D in zip(self.B, self.D, strict=True):
            for e in range(B.shape[0]):
                m = B.shape[1]
                H[i:i + m, :k] = B[e]
                H[:k, i:i + m] = B[e].T
                H[i:i + m, i:i + m] = D[e]
                i += m
        return H


def _spd(M: np.ndarray, floor: float = 1e-6):
    """Eigen-decomposition of a symmetric matrix (batched) with |eigenvalues| floored at
    ``floor`` x the largest (the saddle-free surrogate); returns (evals, evecs, was_pd)."""
    M = 0.5 * (M + np.swapaxes(M, -1, -2))
    ev, U = np.linalg.eigh(M)
    pd = bool(np.all(ev > 0))
    top = np.maximum(np.abs(ev).max(axis=-1, keepdims=True), 1.0)
    return np.maximum(np.abs(ev), floor * top), U, pd


def block_hessian(batch: EventBatch, x: jax.Array, fns: dict | None = None) -> BlockHessian:
    """Per-group Hessian blocks of ``batch.potential`` at ``x`` (float64 on the host).

    Per bucket, k + n_colours Hessian-vector products of the bucket's whole potential: the k
    theta directions give A's share and every group's B; direction c (1 on the latent of rank c of
    every event at once) gives, on each latent i, ``H[i, j]`` for the one latent j of colour c in
    i's event -- latents of different events share no term, so D's event blocks come out exact
    and its other entries are zero; padding latents have ``H = 1`` (their ``z^2/2``)."""
    fns = fns if fns is not None else _block_fns(batch)
    th, locs = batch.split(jnp.asarray(x))
    A = np.asarray(fns["prior"](th), np.float64)
    Bs, Ds = [], []
    k = batch.k
    for b, bk in enumerate(batch.buckets):
        ht, hl = fns["bucket"][b](th, locs[b], bk.data, bk.table, fns["tangents"][b])
        ht, hl = np.asarray(ht, np.float64), np.asarray(hl, np.float64)  # (m, k), (m, G, n_l)
        A = A + ht[:k]
        Bs.append(np.moveaxis(hl[:k], 0, -1))  # (G, n_l, k)
        ev, col = bk.local_event, bk.local_colour
        real = col >= 0
        G, n = col.shape
        D = np.zeros((G, n, n))
        if bk.n_colours:
            cols = hl[k:][np.maximum(col, 0), np.arange(G)[:, None]]  # [g, j, i] = H[(g,i), c_j]
            same = real[:, :, None] & real[:, None, :] & (ev[:, :, None] == ev[:, None, :])
            D = np.where(same, np.swapaxes(cols, 1, 2), 0.0)  # D[g, i, j] = H[(g,i), (g,j)]
            D = 0.5 * (D + np.swapaxes(D, 1, 2))
        D[:, np.arange(n), np.arange(n)] += np.where(real, 0.0, 1.0)
        Ds.append(D)
    return BlockHessian(0.5 * (A + A.T), Bs, Ds)


def _block_fns(batch: EventBatch) -> dict:
    """Compiled pieces of :func:`block_hessian`: the prior's Hessian and, per bucket, the
    Hessian-vector products along the k theta axes and the n_colours coloured latent tangents
    (one product at a time in a ``lax.map``: memory of one forward-over-reverse pass)."""
    k = batch.k

    def per_bucket(b):
        def hvps(th, locs, data, table, tangents):
            U = lambda t, l: batch.bucket_potentials(b, t, l, data, table).sum()  # noqa: E731
            g = jax.grad(U, argnums=(0, 1))
            eye = jnp.eye(k, dtype=th.dtype)
            v_th = jnp.concatenate([eye, jnp.zeros((tangents.shape[0], k), th.dtype)])
            v_loc = jnp.concatenate([jnp.zeros((k, *locs.shape), th.dtype),
                                     tangents.astype(th.dtype)])
            return jax.lax.map(lambda v: jax.jvp(g, (th, locs), v)[1], (v_th, v_loc))

        return jax.jit(hvps)

    tangents = []
    for bk in batch.buckets:
        col = bk.local_colour
        t = np.stack([(col == c).astype(np.float64) for c in range(bk.n_colours)]) \
            if bk.n_colours else np.zeros((0, *col.shape))
        tangents.append(batch.place_rows(jnp.asarray(t, batch.dtype)))
    return {"prior": jax.jit(jax.hessian(batch.prior_potential)),
            "bucket": [per_bucket(b) for b in range(len(batch.buckets))],
            "tangents": tangents}


@dataclass
class _Factor:
    """The block factorisation used for solves and draws."""

    k: int
    S_evals: np.ndarray
    S_evecs: np.ndarray
    D_evals: list[np.ndarray]
    D_evecs: list[np.ndarray]
    B: list[np.ndarray]
    pd: bool

    def Dinv(self, b: int, v: np.ndarray) -> np.ndarray:
        """D_e^{-1} v for every event of bucket b; v (E, n_l) or (E, n_l, m)."""
        U, ev = self.D_evecs[b], self.D_evals[b]
        mat = v.ndim == 3
        vv = v if mat else v[..., None]
        out = U @ ((np.swapaxes(U, -1, -2) @ vv) / ev[..., None])
        return out if mat else out[..., 0]

    @property
    def cov_theta(self) -> np.ndarray:
        return (self.S_evecs / self.S_evals) @ self.S_evecs.T

    def solve(self, g_theta: np.ndarray, g_loc: list[np.ndarray]):
        rhs = g_theta.copy()
        for b, B in enumerate(self.B):
            rhs -= np.einsum("eik,ei->k", B, self.Dinv(b, g_loc[b]))
        dt = self.S_evecs @ ((self.S_evecs.T @ rhs) / self.S_evals)
        dl = [self.Dinv(b, g_loc[b] - B @ dt) for b, B in enumerate(self.B)]
        return dt, dl


def factorise(H: BlockHessian) -> _Factor:
    """Schur complement and per-event eigen-factors (saddle-free where not positive definite)."""
    S = H.A.copy()
    D_ev, D_U, pd = [], [], True
    for D in H.D:
        ev, U, ok = _spd(D)
        pd &= ok
        D_ev.append(ev)
        D_U.append(U)
    f = _Factor(H.A.shape[0], np.ones(1), np.eye(1), D_ev, D_U, H.B, pd)
    for b, B in enumerate(H.B):
        S -= np.einsum("eik,eil->kl", B, f.Dinv(b, B))
    ev, U, ok = _spd(S)
    f.S_evals, f.S_evecs, f.pd = ev, U, pd and ok
    return f


class BlockLaplace:
    """The block-arrow Hessian stages of :class:`lartpc_bayes.infer.LaplaceFitter`
    (``hessian="block"``): Newton polish, Schur covariance, draws, importance sampling."""

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        self._fns = _block_fns(batch)

    def hessian(self, x) -> BlockHessian:
        return block_hessian(self.batch, x, self._fns)

    def _split_np(self, v) -> tuple[np.ndarray, list[np.ndarray]]:
        th, locs = self.batch.split(jnp.asarray(v))
        return np.asarray(th, np.float64), [np.asarray(loc, np.float64) for loc in locs]

    def newton(self, value_and_grad, x, max_steps: int, tol: float):
        """Damped Newton with the block solve. Stops once the Hessian is positive definite and
        the Newton decrement ``delta = sqrt(g^T H^-1 g)`` is below ``tol`` or below the float32
        floor ``sqrt(2 * F32_NOISE_ULP * ulp(|U|))`` (the predicted decrease ``delta^2 / 2`` is
        then smaller than the rounding of U itself, a float32 sum of ~10^4 channel terms: on 10 m
        of track, |U| ~ 1.5e4 nats, the floor is 0.125 and 12 steps below it bought nothing), or
        after ``max_steps``. Backtracking: the step halved until U decreases (at most 10 halvings;
        none decreasing ends the polish). Returns (x, BlockHessian, factor, info)."""
        value, g = value_and_grad(x)
        info = {"steps": 0, "decrement": float("nan"), "value": float(value),
                "grad_norm": float(jnp.linalg.norm(g)), "grad": np.asarray(g, np.float64)}
        while True:
            H = self.hessian(x)
            if not H.finite():
                return x, H, None, info
            F = factorise(H)
            gt, gl = self._split_np(g)
            dt, dl = F.solve(gt, gl)
            dx = np.concatenate([dt] + [d.reshape(-1) for d in dl])
            info["decrement"] = float(np.sqrt(max(np.dot(np.asarray(g, np.float64), dx), 0.0)))
            floor = np.sqrt(2 * F32_NOISE_ULP * np.spacing(np.float32(abs(float(value)))))
            info["decrement_floor"] = float(floor)
            if (F.pd and info["decrement"] < max(tol, floor)) or info["steps"] == max_steps:
                return x, H, F, info
            best = None
            for kk in range(10):
                x_new = x - jnp.asarray((0.5 ** kk) * dx, x.dtype)
                v_new, g_new = value_and_grad(x_new)
                if bool(jnp.isfinite(v_new)) and float(v_new) < float(value):
                    best = (x_new, float(v_new), g_new)
                    break
            if best is None:
                return x, H, F, info
            x, value, g = best[0], jnp.asarray(best[1]), best[2]
            info["steps"] += 1
            info["value"] = float(value)
            info["grad_norm"] = float(jnp.linalg.norm(g))
            info["grad"] = np.asarray(g, np.float64)

    def preconditioner(self, x0) -> tuple:
        """(fwd, adj) of the linear map ``x = x0 + M w``, M = the block whitening map of the
        (saddle-free) block Hessian at ``x0`` (:meth:`transform`), and its transpose on
        gradients: ``adj(g) = M^T g`` with, per group, ``(U_g^T g_g) / sqrt(ev_g)`` and, for
        theta, ``S^{-1/2} (g_theta - sum_g B_g^T D_g^{-1} g_g)``. Host float64."""
        x0 = np.asarray(x0, np.float64)
        F = factorise(self.hessian(x0))
        n_loc = [B.shape[:2] for B in F.B]
        Sm = F.S_evecs / np.sqrt(F.S_evals)

        def unflat(w):
            parts, i = [], F.k
            for E, m in n_loc:
                parts.append(w[i:i + E * m].reshape(1, E, m))
                i += E * m
            return w[None, :F.k], parts

        def fwd(w):
            w0, wl = unflat(np.asarray(w, np.float64))
            return self.transform(F, x0, w0, wl)[0]

        def adj(g):
            gt, gl = self._split_np(g)
            r = gt.copy()
            out = []
            for b, B in enumerate(F.B):
                r -= np.einsum("eik,ei->k", B, F.Dinv(b, gl[b]))
                U, ev = F.D_evecs[b], F.D_evals[b]
                out.append((np.einsum("eji,ej->ei", U, gl[b]) / np.sqrt(ev)).reshape(-1))
            return np.concatenate([Sm.T @ r, *out])

        return fwd, adj

    def transform(self, F: _Factor, x_map: np.ndarray, w0: np.ndarray,
                  w_loc: list[np.ndarray]) -> np.ndarray:
        """x(w) for draws w = (w0 (n, k), [w_e (n, E, n_l)]): the block whitening map."""
        th0, loc0 = self._split_np(x_map)
        dth = (w0 / np.sqrt(F.S_evals)) @ F.S_evecs.T  # S^{-1/2} w0
        parts = [th0 + dth]
        for b, B in enumerate(F.B):
            shift = np.einsum("eik,nk->nei", B, dth)
            mean = loc0[b][None] - np.stack([F.Dinv(b, s) for s in shift])
            U, ev = F.D_evecs[b], F.D_evals[b]
            noise = np.einsum("eij,nej->nei", U, w_loc[b] / np.sqrt(ev)[None])
            parts.append((mean + noise).reshape(w0.shape[0], -1))
        return np.concatenate(parts, axis=1)

    def draws(self, F: _Factor, x_map, rng: np.random.Generator, n: int,
              nu: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """n draws of the Gaussian (or, with ``nu``, t in theta) proposal and its log density."""
        from scipy import stats

        k = F.k
        if nu is None:
            w0 = rng.standard_normal((n, k))
            lq0 = stats.multivariate_normal(np.zeros(k)).logpdf(w0)
        else:
            w0 = stats.multivariate_t(np.zeros(k), np.eye(k), df=nu).rvs(n, random_state=rng)
            w0 = np.atleast_2d(w0).reshape(n, k)
            lq0 = stats.multivariate_t(np.zeros(k), np.eye(k), df=nu).logpdf(w0)
        lq = np.atleast_1d(lq0) + 0.5 * np.log(F.S_evals).sum()
        wl = []
        for b, B in enumerate(F.B):
            w = rng.standard_normal((n, *B.shape[:2]))
            wl.append(w)
            lq = lq - 0.5 * (w ** 2).sum((1, 2)) - 0.5 * np.log(2 * np.pi) * w[0].size \
                + 0.5 * np.log(F.D_evals[b]).sum()
        return self.transform(F, x_map, w0, wl), lq

    def importance(self, F: _Factor, U_batch, x_map, rng, num_draws: int,
                   n_proposal: int | None = None, nu: float = 7.0):
        """PSIS over the block proposal (t in theta, conditional Gaussian latents)."""
        import arviz_stats  # noqa: F401
        import xarray as xr

        n_proposal = n_proposal or 2 * num_draws
        xp, lq = self.draws(F, x_map, rng, n_proposal, nu)
        logp = -np.asarray(U_batch(jnp.asarray(xp, jnp.float32)), np.float64)
        lw = np.where(np.isfinite(logp), logp - lq, -np.inf)
        lw = lw - np.max(lw)
        smoothed, khat = xr.DataArray(-lw, dims=["draw"]).azstats.psislw(dim="draw")
        smoothed = np.asarray(getattr(smoothed, "values", smoothed), np.float64)
        w = np.exp(smoothed - np.max(smoothed))
        w = w / w.sum()
        u = (rng.random() + np.arange(num_draws)) / num_draws
        idx = np.minimum(np.searchsorted(np.cumsum(w), u), n_proposal - 1)
        return xp[idx], {"pareto_k": float(np.asarray(getattr(khat, "values", khat))),
                         "is_ess": float(1.0 / np.sum(w ** 2))}

    def finish(self, fitter, x, tb, t0: float, t1: float, *, seed: int, num_draws: int,
               importance: bool, n_proposal: int | None) -> dict[str, Any]:
        """Steps 3-4 of :meth:`LaplaceFitter.fit` with the block Hessian; same output keys, with
        ``cov_theta`` (k, k) instead of the dense ``cov_unconstrained`` and ``block_factor``."""
        x, H, F, newton = self.newton(lambda v: fitter._value_and_grad(v, tb), x,
                                      fitter.newton_steps, fitter.newton_tol)
        t2 = time.perf_counter()
        out: dict[str, Any] = {
            "x_map": np.asarray(x), "potential": newton["value"],
            "grad_norm": newton["grad_norm"], "iterations": None, "newton_steps": newton["steps"],
            "newton_decrement": newton["decrement"], "map_s": t1 - t0, "hessian_s": t2 - t1,
            "ok": False,
        }
        if F is None:
            out["error"] = "the Hessian of the potential at the MAP is not finite"
            return out
        out["hessian_eigenvalues"] = F.S_evals  # of the Schur complement (theta marginal)
        out["min_eigenvalue"] = float(F.S_evals.min())
        if not F.pd:
            out["error"] = ("the Hessian at the optimum is not positive definite (a block or the "
                            "Schur complement): no Laplace approximation; use NUTS")
            return out
        rng = np.random.default_rng(seed)
        if importance:
            t3 = time.perf_counter()
            xs, info = self.importance(F, lambda v: fitter._U_batch(v, tb), np.asarray(x),
                                       rng, num_draws, n_proposal)
            out.update(info)
            out["importance_s"] = time.perf_counter() - t3
        else:
            xs, _ = self.draws(F, np.asarray(x), rng, num_draws)
        out["draws"] = fitter.to_physical(xs)
        out["map"] = {k: v[0] for k, v in fitter.to_physical(np.asarray(x)[None]).items()}
        out["map_unconstrained"] = {"x": np.asarray(x)}
        out["cov_theta"] = F.cov_theta
        out["hessian_theta"] = H.A  # (k, k) theta-theta block at the optimum, prior included
        out["grad_theta"] = newton["grad"][: F.k]
        out["cov_unconstrained"] = None
        out["block_factor"] = F
        out["ok"] = True
        return out


def whitening_map(F: _Factor, th0: np.ndarray, loc0: list[np.ndarray],
                  dtype=jnp.float32) -> tuple[Callable[[jax.Array], jax.Array], int]:
    r"""The block whitening map of :meth:`BlockLaplace.transform` as a JAX function of one flat w.

    ``x(w) = x* + M w`` with, for w = (w_0 (k,), w_g (E, n_l) per bucket),
    :math:`\delta\theta = S^{-1/2} w_0`,
    :math:`l_e = l_e^* - D_e^{-1} B_e \delta\theta + U_e \Lambda_e^{-1/2} w_e`
    (:math:`D_e = U_e \Lambda_e U_e^T`): :math:`M M^T = H^{-1}`, so a posterior equal to its
    Laplace approximation is N(0, I) in w. Returns (x_of_w, dim of w)."""
    k = F.k
    shapes = [B.shape[:2] for B in F.B]
    Sm = jnp.asarray(F.S_evecs / np.sqrt(F.S_evals), dtype)  # S^{-1/2} = U diag(1/sqrt(ev))
    th = jnp.asarray(th0, dtype)
    locs = [jnp.asarray(v, dtype) for v in loc0]
    Bj = [jnp.asarray(B, dtype) for B in F.B]
    DU = [jnp.asarray(U, dtype) for U in F.D_evecs]
    Dev = [jnp.asarray(e, dtype) for e in F.D_evals]

    def x_of_w(w: jax.Array) -> jax.Array:
        dth = Sm @ w[:k]
        parts, i = [th + dth], k
        for b, (E, m) in enumerate(shapes):
            we = w[i:i + E * m].reshape(E, m)
            i += E * m
            sh = jnp.einsum("eik,k->ei", Bj[b], dth)
            dinv = jnp.einsum("eij,ej->ei", DU[b], jnp.einsum("eji,ej->ei", DU[b], sh) / Dev[b])
            noise = jnp.einsum("eij,ej->ei", DU[b], we / jnp.sqrt(Dev[b]))
            parts.append((locs[b] - dinv + noise).reshape(-1))
        return jnp.concatenate(parts)

    return x_of_w, k + sum(a * b for a, b in shapes)


def sample_nuts(
    potential: Callable[[jax.Array], jax.Array], w0: jax.Array, *, sampler: str = "numpyro",
    seed: int = 0, num_warmup: int = 200, num_draws: int = 500, max_tree_depth: int = 6,
    adapt_mass_matrix: bool = False, dense_mass: bool = False, target_accept: float = 0.85,
    step_size: float = 1.0, progress: Callable[[str], None] | None = None, chunk: int = 50,
) -> dict[str, Any]:
    """One NUTS chain on a flat potential ``U(w)`` (minus log density) from ``w0``.

    Both samplers run the same algorithm: multinomial NUTS, trees of at most ``2**max_tree_depth
    - 1`` leapfrog steps, the step size adapted in warm-up by dual averaging (Hoffman and Gelman
    2014) to ``target_accept``, from ``step_size`` (1 suits a whitened target, the scale of
    N(0, I)). ``adapt_mass_matrix`` False keeps the identity metric (the target is already
    whitened; NumPyro ``NUTS(adapt_mass_matrix=False)``, BlackJAX ``dual_averaging_adaptation``
    alone); True adapts one in Stan's windows (NumPyro's ``NUTS``, BlackJAX's
    ``window_adaptation``), diagonal or, with ``dense_mass``, dense.
    ``progress`` (e.g. ``print``) gets a line per ``chunk`` draws: the sampling runs in jitted
    chunks, so a long chain reports where it is. Returns {"w": (num_draws, dim) draws,
    "divergences", "stats" (per draw: :data:`STAT_NAMES`, the names of
    :func:`lartpc_bayes.infer.run_nuts`), "step_size", "warmup_s", "sample_s"}.
    """
    if sampler not in ("numpyro", "blackjax"):
        raise ValueError(f"sampler must be 'numpyro' or 'blackjax', got {sampler!r}")
    say = progress or (lambda _m: None)
    w0 = jnp.asarray(w0)
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    ws: list[np.ndarray] = []
    stats: dict[str, list[np.ndarray]] = {name: [] for name in STAT_NAMES}
    fields = ("diverging", "num_steps", "energy", "accept_prob")  # NumPyro's, as STAT_NAMES
    if sampler == "numpyro":
        from numpyro.infer import MCMC, NUTS

        mcmc = MCMC(NUTS(potential_fn=potential, target_accept_prob=target_accept,
                         step_size=step_size, adapt_mass_matrix=adapt_mass_matrix,
                         dense_mass=dense_mass, max_tree_depth=max_tree_depth),
                    num_warmup=num_warmup, num_samples=chunk,
                    progress_bar=progress is not None)  # the warm-up's tqdm bar, on stderr
        mcmc.warmup(key, init_params=w0, extra_fields=fields)
        mcmc.progress_bar = False  # the draws report per chunk instead
        eps = float(mcmc.last_state.adapt_state.step_size)  # waits for the warm-up to finish
        t1 = time.perf_counter()
        say(f"NUTS ({sampler}) warm-up {num_warmup} in {t1 - t0:.0f} s, step size {eps:.3g}")

        def run_chunk(done, n):
            mcmc.num_samples = n
            mcmc.post_warmup_state = mcmc.last_state
            mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=fields)
            ex = mcmc.get_extra_fields()
            return mcmc.get_samples(), [ex[f] for f in fields]
    else:
        import blackjax

        def logd(w):
            return -potential(w)

        k_warm, k_draw = jax.random.split(key)
        if adapt_mass_matrix:
            @jax.jit
            def warm(key):
                adapt = blackjax.window_adaptation(blackjax.nuts, logd,
                                                   is_mass_matrix_diagonal=not dense_mass,
                                                   target_acceptance_rate=target_accept,
                                                   initial_step_size=step_size,
                                                   max_num_doublings=max_tree_depth)
                (state, params), _ = adapt.run(key, w0, num_steps=num_warmup)
                return state, params["step_size"], params["inverse_mass_matrix"]
        else:
            from blackjax.adaptation.step_size import dual_averaging_adaptation

            @jax.jit
            def warm(key):
                da_init, da_update, da_final = dual_averaging_adaptation(target_accept)
                inv_mass = jnp.ones_like(w0)

                def one(carry, kk):
                    st, da = carry
                    kern = blackjax.nuts(logd, jnp.exp(da.log_step_size), inv_mass,
                                         max_num_doublings=max_tree_depth)
                    st, info = kern.step(kk, st)
                    return (st, da_update(da, info.acceptance_rate)), None

                st0 = blackjax.nuts.init(w0, logd)
                (st, da), _ = jax.lax.scan(one, (st0, da_init(step_size)),
                                           jax.random.split(key, num_warmup))
                return st, da_final(da), inv_mass

        state, eps, inv_mass = jax.block_until_ready(warm(k_warm))
        t1 = time.perf_counter()
        say(f"NUTS ({sampler}) warm-up {num_warmup} in {t1 - t0:.0f} s, step size "
            f"{float(eps):.3g}")
        kernel = blackjax.nuts(logd, eps, inv_mass, max_num_doublings=max_tree_depth)

        @jax.jit
        def draw(state, keys):
            def step(st, kk):
                st, info = kernel.step(kk, st)
                return st, (st.position, info.is_divergent, info.num_integration_steps,
                            info.energy, info.acceptance_rate)

            return jax.lax.scan(step, state, keys)

        keys = jax.random.split(k_draw, num_draws)

        def run_chunk(done, n):
            nonlocal state
            # the last chunk may be shorter: one more compilation, at most
            state, (pos, *st) = draw(state, keys[done:done + n])
            return pos, st

        eps = float(eps)
    done = 0
    while done < num_draws:
        n = min(chunk, num_draws - done)
        w, st = run_chunk(done, n)
        ws.append(np.asarray(w))
        for name, v in zip(STAT_NAMES, st, strict=True):
            stats[name].append(np.asarray(v))
        done += n
        say(f"NUTS ({sampler}) {done}/{num_draws} draws, {time.perf_counter() - t1:.0f} s, "
            f"divergences {int(sum(d.sum() for d in stats['diverging']))}")
    t2 = time.perf_counter()
    out = {name: np.concatenate(v) for name, v in stats.items()}
    return {"w": np.concatenate(ws), "divergences": int(out["diverging"].sum()), "stats": out,
            "step_size": float(eps), "warmup_s": t1 - t0, "sample_s": t2 - t1}


def whitened_nuts(
    fitter, fit: dict[str, Any], *, sampler: str = "numpyro", seed: int = 0,
    num_warmup: int = 200, num_draws: int = 500, max_tree_depth: int = 6,
    adapt_mass_matrix: bool = True, dense_mass: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """NUTS on the joint posterior whitened by the block factor of a block-Laplace ``fit``.

    Potential in w: ``U(x(w))`` with :func:`whitening_map` (linear, constant Jacobian: the same
    posterior), started at w = 0 (the MAP), sampled by :func:`sample_nuts` (NumPyro or BlackJAX on
    the same potential). The metric is adapted in warm-up, dense by default: the whitened
    posterior is unit-scale at the MAP but skewed away from it, and on the 106 cm sample of
    docs/scale.md the identity metric took ~15 s per draw (step 0.32, trees near 63 steps)
    against 6.5 s (step 0.17, 31 steps) with the dense one (both beside other jobs). Trees of
    at most 63 steps.
    Returns {"draws": physical sites, "x": flat draws, "divergences", "mean_steps",
    "step_size", "nuts_s", "warmup_s", "sample_s", "stats"} (stats as :func:`sample_nuts`).
    """
    bl: BlockLaplace = fitter._block
    F: _Factor = fit["block_factor"]
    th0, loc0 = bl._split_np(np.asarray(fit["x_map"], np.float64))
    x_of_w, n_w = whitening_map(F, th0, loc0)
    tb = bl.batch.tables

    def Uw(w):
        return bl.batch.potential(x_of_w(w), tb)

    t0 = time.perf_counter()
    out = sample_nuts(Uw, jnp.zeros(n_w, jnp.float32), sampler=sampler, seed=seed,
                      num_warmup=num_warmup, num_draws=num_draws, max_tree_depth=max_tree_depth,
                      adapt_mass_matrix=adapt_mass_matrix, dense_mass=dense_mass,
                      progress=progress)
    xs = np.asarray(jax.jit(jax.vmap(x_of_w))(jnp.asarray(out["w"], jnp.float32)))
    return {"draws": fitter.to_physical(xs), "x": xs, "divergences": out["divergences"],
            "mean_steps": float(out["stats"]["n_steps"].mean()), "stats": out["stats"],
            "step_size": out["step_size"], "warmup_s": out["warmup_s"],
            "sample_s": out["sample_s"], "nuts_s": time.perf_counter() - t0}
