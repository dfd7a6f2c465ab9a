r"""Probabilistic LArPix readout: the distribution of the hit sequence given the expected charge.

This is the likelihood's forward model of :mod:`lartpc_bayes.readout`, exact for that simulator up
to a Gauss-Hermite quadrature over the reset noise. For one channel with cumulative charge ``Q[u]``
(electrons at the end of tick u of its window, ``Q[-1] = 0``):

* A *reset row* i describes the state after a reset: row 0 is the window start (integrator holds
  ``Q[u]``, armed from u = 0); row ``i = r + 1`` is a reset at tick r after a hit (integrator holds
  ``Q[u] - Q[r]``, armed from ``u = r + B + 1``). After a trigger at s the next row is
  ``s + H + R + 1`` (hold H, reset R, busy B ticks; :mod:`lartpc_bayes.readout`).
* Given the reset-noise value rho (``N(0, sigma_reset)``), the comparator fires at tick u with
  probability ``h = Phi((rho + Q[u] - Q[r] - thr) / sigma_e)``, ``sigma_e^2 = sigma_uncorr^2 +
  sigma_disc^2`` (fresh noise every tick), so the first trigger after row i is at t with
  probability ``g(i, t | rho) = prod_{arm<=u<t} (1 - h_u) h_t``. Everything is computed in log space
  (``log_ndtr``), then rho is integrated with K Gauss-Hermite nodes.
* Slot recursion: ``f_0(t) = g(0, t)``, ``f_{j+1}(t) = sum_s f_j(s) g(s + H + R + 1, t)``; the hit
  intensity is ``lambda(t) = sum_{j<M} f_j(t)`` and the expected number of hits ``sum_t lambda``.
* The held sample after a trigger at t from row i is ``rho + Q[t + H] - Q[r] + N(0, sigma_uncorr)``;
  its ADC code has the exact bin probability ``Phi((q_hi - mu)/sigma_u) - Phi((q_lo - mu)/sigma_u)``
  (quantisation exact, the saturated code 2^bits - 1 is the censored tail ``q_hi = inf``), mixed
  over rho (the same nodes, weighted by the trigger probability: the trigger conditions rho) and
  over the reset row.

Shapes are static: (C channels, K nodes, W + 1 rows, W ticks) per bucket.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, logsumexp

from .detector import Electronics
from .readout import adc_bin_edges

#: Default number of Gauss-Hermite nodes over the reset noise (accuracy measured in the tests).
N_NODES = 8
NEG_INF = -jnp.inf


def hermite_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes x_k and log-weights log(w_k) with sum w_k = 1."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, np.log(w / w.sum())


def log_diff_ndtr(a, b):
    """``log(Phi(b) - Phi(a))`` for a < b, stable in both tails (b may be +inf)."""
    # evaluate in the lower tail where the CDFs are not close to 1
    flip = a > 0
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    lhi = log_ndtr(hi)
    llo = log_ndtr(lo)
    d = jnp.minimum(llo - lhi, -1e-30)
    return lhi + jnp.log(-jnp.expm1(d))


class ChannelModel(NamedTuple):
    """Per-channel quantities (one bucket); arrays over channels C."""

    log_g: jax.Array  # (C, K, W+1, W) log P(first trigger at t, node k | row i) incl. log w_k
    log_A: jax.Array  # (C, W+1) log reset-row intensity summed over slots < M
    lam: jax.Array  # (C, W) hit intensity lambda(t)
    expected_hits: jax.Array  # (C,)


def _rows(Q: jax.Array, el: Electronics):
    """Charge already integrated at each reset row (W+1,) and the first armed tick per row."""
    W = Q.shape[-1]
    Qr = jnp.concatenate([jnp.zeros(1, Q.dtype), Q])
    arm = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.arange(W, dtype=jnp.int32)
                           + el.busy_cycles + 1])
    return Qr, arm


def channel_model(Q: jax.Array, el: Electronics, n_nodes: int = N_NODES) -> ChannelModel:
    """Trigger probabilities, slot recursion and intensity for channels ``Q`` (C, W)."""
    C, W = Q.shape
    x, logw = hermite_nodes(n_nodes)
    rho = jnp.asarray(x, Q.dtype) * el.reset_noise_e
    logw = jnp.asarray(logw, Q.dtype)
    sig_e = max(float(np.hypot(el.uncorrelated_noise_e, el.discriminator_noise_e)), 1.0)
    thr = el.threshold_e
    M = el.max_hits_per_pixel
    shift = el.hold_ticks + el.reset_cycles + 1  # row index after a trigger at s is s + shift
    u = jnp.arange(W)

    def one(Qc):
        Qr, arm = _rows(Qc, el)
        valid = u[None, :] >= arm[:, None]  # (W+1, W)
        z = (rho[:, None, None] + Qc[None, None, :] - Qr[None, :, None] - thr) / sig_e
        log_stay = jnp.where(valid[None], log_ndtr(-z), 0.0)
        ls = jnp.cumsum(log_stay, axis=-1) - log_stay  # survival up to t-1 (exclusive)
        log_g = jnp.where(valid[None], ls + log_ndtr(z), NEG_INF) + logw[:, None, None]
        G = jnp.exp(logsumexp(log_g, axis=0))  # (W+1, W) linear trigger probability per row
        # rows reached after a trigger at s: s + shift (beyond the window: no further trigger)
        s_idx = jnp.arange(W) + shift
        Gs = jnp.where((s_idx <= W)[:, None], G[jnp.minimum(s_idx, W)], 0.0)  # (W, W)

        def slot(f, _):
            return f @ Gs, f

        _, fs = jax.lax.scan(slot, G[0], None, length=M)  # (M, W): f_0 .. f_{M-1}
        lam = fs.sum(0)
        # reset-row intensity of slots 0..M-1: row 0 once, row s+shift from slots 0..M-2
        a_after = fs[:-1].sum(0) if M > 1 else jnp.zeros(W, Qc.dtype)
        A = jnp.zeros(W + 1, Qc.dtype).at[0].set(1.0)
        A = A.at[jnp.minimum(s_idx, W)].add(jnp.where(s_idx <= W, a_after, 0.0))
        log_A = jnp.log(jnp.where(A > 0, A, 1.0)) + jnp.where(A > 0, 0.0, NEG_INF)
        return log_g, log_A, lam

    log_g, log_A, lam = jax.vmap(one)(Q)
    return ChannelModel(log_g, log_A, lam, lam.sum(-1))


def log_mark(
    Qc: jax.Array, log_g_t: jax.Array, t: jax.Array, adc: jax.Array, el: Electronics,
    n_nodes: int = N_NODES,
) -> jax.Array:
    """log P(trigger at t and ADC code | row, node) for one hit: (K, W+1) array.

    ``log_g_t`` is ``log_g[c, :, :, t]`` of the hit's channel (K, W+1).
    """
    W = Qc.shape[-1]
    x, _ = hermite_nodes(n_nodes)
    rho = jnp.asarray(x, Qc.dtype) * el.reset_noise_e
    Qr, _ = _rows(Qc, el)
    q_held = Qc[jnp.minimum(t + el.hold_ticks, W - 1)]
    mu = rho[:, None] + q_held - Qr[None, :]  # (K, W+1)
    lo, hi = adc_bin_edges(adc, el)
    s = max(el.uncorrelated_noise_e, 1.0)
    return log_g_t + log_diff_ndtr((lo - mu) / s, (hi - mu) / s)


def hit_log_density(
    Q: jax.Array, model: ChannelModel, chan: jax.Array, t: jax.Array, adc: jax.Array,
    el: Electronics, n_nodes: int = N_NODES,
) -> jax.Array:
    """PPP log intensity of observed hits: ``log(lambda(t) P(code | t))`` mixed over rows and rho.

    chan, t, adc : (N,) channel index in the bucket, tick index in its window, ADC code.
    """
    def one(c, tt, a):
        lm = log_mark(Q[c], model.log_g[c, :, :, tt], tt, a, el, n_nodes)  # (K, W+1)
        return logsumexp(lm + model.log_A[c][None, :])

    return jax.vmap(one)(chan, t, adc)
