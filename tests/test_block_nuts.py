"""Whitened NUTS of the block-arrow posterior (infer/block_laplace.py, issue 14 item 3).

* :func:`whitening_map` is the map whose push-forward of N(0, I) is the Laplace approximation:
  x(0) = x* and M M^T = H^{-1} for the Jacobian M, against the dense inverse of a random
  block-arrow Hessian (float32 map; tolerance 1e-4 of the largest covariance entry for a Hessian
  of condition ~10^2: float32 rounding ~1e-7 times the condition number times the dimension).
* :func:`sample_nuts` samples a known Gaussian with both samplers, with the identity metric and
  with a dense one adapted in warm-up: one chain of 400 draws after
  150 warm-up, fixed seed. Criteria from the chain's own effective sample sizes (ArviZ): every
  mean within 4 Monte-Carlo standard errors sqrt(Sigma_ii / ESS), every variance within 4
  standard errors sqrt(2 / ESS(w^2)) relative, no divergence. A sampler that ignored the
  potential's scale (wrong step size, a broken metric) misses these by far more.
* The real potential (a small event batch, block Laplace, then whitened NUTS with NumPyro) is in
  the slow tier: ``benchmarks/block_nuts_check.py`` runs the issue's ~1 m comparison.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lartpc_bayes.infer.block_laplace import BlockHessian, factorise, sample_nuts, whitening_map


def _random_block_hessian(rng, k=3, E=(2, 3), n_l=(4, 2)) -> BlockHessian:
    """A positive-definite block-arrow Hessian: theta (k) and per bucket E events of n_l
    latents, coupled to theta only."""
    Bs, Ds = [], []
    for e, m in zip(E, n_l, strict=True):
        Q = rng.standard_normal((e, m, m))
        Ds.append(np.einsum("eij,ekj->eik", Q, Q) + 3.0 * np.eye(m))
        Bs.append(0.3 * rng.standard_normal((e, m, k)))
    Q = rng.standard_normal((k, k))
    A = Q @ Q.T + 3.0 * np.eye(k)
    A += sum(np.einsum("eik,eil->kl", B, np.linalg.solve(D, B)) for B, D in zip(Bs, Ds,
                                                                              strict=True))
    return BlockHessian(A, Bs, Ds)


def test_whitening_map_pushes_unit_normal_to_the_laplace_covariance():
    rng = np.random.default_rng(4)
    H = _random_block_hessian(rng)
    F = factorise(H)
    assert F.pd
    k = H.A.shape[0]
    th0 = rng.standard_normal(k)
    loc0 = [rng.standard_normal(B.shape[:2]) for B in H.B]
    x_of_w, n_w = whitening_map(F, th0, loc0)
    Hd = H.dense()
    assert n_w == Hd.shape[0]
    x_star = np.concatenate([th0] + [v.reshape(-1) for v in loc0])
    np.testing.assert_allclose(np.asarray(x_of_w(jnp.zeros(n_w))), x_star, rtol=0, atol=1e-6)
    M = np.asarray(jax.jacfwd(x_of_w)(jnp.zeros(n_w, jnp.float32)), np.float64)
    cov = np.linalg.inv(Hd)
    err = np.abs(M @ M.T - cov).max() / np.abs(cov).max()
    assert err < 1e-4, err
    # and linear: x(w) - x* = M w
    w = jnp.asarray(rng.standard_normal(n_w), jnp.float32)
    np.testing.assert_allclose(np.asarray(x_of_w(w)) - x_star, M @ np.asarray(w), atol=1e-5)


@pytest.mark.parametrize(("sampler", "metric"), [("numpyro", "identity"), ("blackjax", "identity"),
                                                 ("numpyro", "dense"), ("blackjax", "dense")])
def test_sample_nuts_recovers_a_known_gaussian(sampler, metric):
    import arviz_stats  # noqa: F401  (registers the .azstats accessor)
    import xarray as xr

    rng = np.random.default_rng(7)
    d = 6
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (Q * np.linspace(0.5, 2.0, d)) @ Q.T  # a nearly whitened target, as after whitening
    P = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    out = sample_nuts(lambda w: 0.5 * w @ P @ w, jnp.zeros(d, jnp.float32), sampler=sampler,
                      seed=3, num_warmup=150, num_draws=400, chunk=200,
                      adapt_mass_matrix=metric == "dense", dense_mass=metric == "dense")
    w = out["w"]
    assert w.shape == (400, d)
    assert out["divergences"] == 0
    assert 0.1 < out["step_size"] < 2.0

    def ess(a):
        return np.asarray(xr.DataArray(a[None], dims=["chain", "draw", "dim"]).azstats.ess(
            sample_dims=["chain", "draw"]))

    e_mean, e_sq = ess(w), ess((w - w.mean(0)) ** 2)
    assert np.all(e_mean > 50) and np.all(e_sq > 50), (e_mean, e_sq)
    sd = np.sqrt(np.diag(cov))
    z_mean = w.mean(0) / (sd / np.sqrt(e_mean))
    assert np.all(np.abs(z_mean) < 4), z_mean
    z_var = (w.var(0) / np.diag(cov) - 1) / np.sqrt(2 / e_sq)
    assert np.all(np.abs(z_var) < 4), z_var
