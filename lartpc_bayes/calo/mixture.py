"""One-dimensional Gaussian mixtures: density, CDF, quantiles, moments and the global mode.

A mixture is given by arrays ``(..., K)`` of log-weights ``log_w`` (normalised, ``logsumexp = 0``),
means ``mu`` and widths ``sigma``; evaluation points and results have shape ``(...,)``. Used for the
predictive distributions of both the mixture network (:mod:`.mdn`) and the baselines
(:mod:`.baselines`, one or two components). Pure JAX, jit- and vmap-compatible.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr, logsumexp, ndtr

#: Central probability of +-1 sigma of a Gaussian, Phi(1) - Phi(-1) = 0.6827.
P68 = math.erf(1.0 / math.sqrt(2.0))
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _component_logpdf(y: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    z = (y[..., None] - mu) / sigma
    return -0.5 * z**2 - jnp.log(sigma) - _LOG_SQRT_2PI


def mixture_log_prob(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray, y: jnp.ndarray
) -> jnp.ndarray:
    """``log p(y) = logsumexp_k(log pi_k + log N(y; mu_k, sigma_k))``."""
    return logsumexp(log_w + _component_logpdf(y, mu, sigma), axis=-1)


def mixture_cdf(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray, y: jnp.ndarray
) -> jnp.ndarray:
    """``F(y) = sum_k pi_k Phi((y - mu_k)/sigma_k)`` (computed in log space, then exponentiated)."""
    return jnp.exp(logsumexp(log_w + log_ndtr((y[..., None] - mu) / sigma), axis=-1))


def mixture_quantile(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray, p: float, iterations: int = 40
) -> jnp.ndarray:
    """The ``p`` quantile by bisection on the mixture CDF in ``[min(mu - 10 sigma), max(mu + 10
    sigma)]``; 40 halvings shrink that bracket by 1e-12, below float32 resolution."""
    lo = jnp.min(mu - 10.0 * sigma, axis=-1)
    hi = jnp.max(mu + 10.0 * sigma, axis=-1)
    w = jnp.exp(log_w)

    def body(_: int, bracket: tuple[jnp.ndarray, jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        a, b = bracket
        m = 0.5 * (a + b)
        below = jnp.sum(w * ndtr((m[..., None] - mu) / sigma), axis=-1) < p
        return jnp.where(below, m, a), jnp.where(below, b, m)

    a, b = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return 0.5 * (a + b)


def mixture_moments(
    log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean ``sum pi mu`` and variance ``sum pi (sigma^2 + mu^2) - (sum pi mu)^2`` of a mixture."""
    w = jnp.exp(log_w)
    mean = jnp.sum(w * mu, axis=-1)
    var = jnp.sum(w * (sigma**2 + mu**2), axis=-1) - mean**2
    return mean, jnp.maximum(var, 0.0)


def mixture_mode(
    log_w: jnp.ndarray,
    mu: jnp.ndarray,
    sigma: jnp.ndarray,
    iterations: int = 50,
    newton_steps: int = 3,
) -> jnp.ndarray:
    """Global mode of a 1-D Gaussian mixture (see the module docstring for the iteration).

    Every mode of a Gaussian mixture lies in the basin of some start ``mu_k``; the fixed-point
    iteration ascends the density monotonically for Gaussian mixtures (Carreira-Perpinan, IEEE PAMI
    22 (2000) 1318), the Newton steps on ``log p`` (accepted only where they increase ``p``) remove
    the slow linear tail of convergence, and the largest density among the ``K`` results wins.
    """
    prec = 1.0 / sigma**2

    def fixed_point(x: jnp.ndarray) -> jnp.ndarray:  # x (..., K): one trajectory per start
        lr = log_w[..., None, :] + _component_logpdf(x, mu[..., None, :], sigma[..., None, :])
        r = jax.nn.softmax(lr, axis=-1) * prec[..., None, :]
        return jnp.sum(r * mu[..., None, :], axis=-1) / jnp.sum(r, axis=-1)

    x = jax.lax.fori_loop(0, iterations, lambda _, v: fixed_point(v), mu)

    def log_p(v: jnp.ndarray) -> jnp.ndarray:
        return mixture_log_prob(log_w[..., None, :], mu[..., None, :], sigma[..., None, :], v)

    def newton(_: int, v: jnp.ndarray) -> jnp.ndarray:
        lr = log_w[..., None, :] + _component_logpdf(v, mu[..., None, :], sigma[..., None, :])
        r = jax.nn.softmax(lr, axis=-1)  # posterior component probabilities at v
        d = (mu[..., None, :] - v[..., None]) * prec[..., None, :]
        g = jnp.sum(r * d, axis=-1)  # d/dv log p
        h = jnp.sum(r * (d**2 - prec[..., None, :]), axis=-1) - g**2  # d2/dv2 log p
        cand = jnp.where(h < 0, v - g / jnp.where(h < 0, h, -1.0), v)
        return jnp.where(log_p(cand) > log_p(v), cand, v)

    x = jax.lax.fori_loop(0, newton_steps, newton, x)
    best = jnp.argmax(log_p(x), axis=-1)
    return jnp.take_along_axis(x, best[..., None], axis=-1)[..., 0]


def mixture_sigma68(log_w: jnp.ndarray, mu: jnp.ndarray, sigma: jnp.ndarray) -> jnp.ndarray:
    """Half-width of the central 68.27 % interval, ``(Q(84.13 %) - Q(15.87 %))/2`` (the sd for one
    Gaussian component)."""
    lo = mixture_quantile(log_w, mu, sigma, 0.5 - P68 / 2)
    hi = mixture_quantile(log_w, mu, sigma, 0.5 + P68 / 2)
    return 0.5 * (hi - lo)


__all__ = [
    "P68",
    "mixture_cdf",
    "mixture_log_prob",
    "mixture_mode",
    "mixture_moments",
    "mixture_quantile",
    "mixture_sigma68",
]
