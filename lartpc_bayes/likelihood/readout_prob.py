r"""Probabilistic LArPix readout: the distribution of the hit sequence given the expected charge.

This is the likelihood's forward model of :mod:`lartpc_bayes.forward.readout`, exact for that
simulator up to a Gauss-Hermite quadrature over the reset noise. For one channel with
cumulative charge ``Q[u]``
(electrons at the end of tick u of its window, ``Q[-1] = 0``), hold H, reset R and busy B ticks,
``D1 = H + R + B + 1``:

* **Reset rows.** Row 0 is the window start: the integrator holds ``Q[u]`` and is armed from u = 0.
  After a trigger at s the integrator restarts at ``r = s + H + R`` (it then holds
  ``Q[u] - Q[r]``) and is armed from ``u = s + D1``; that "later row" is labelled by s. Only
  ``s < L = W - D1`` can trigger again inside the window, and its next trigger is at
  ``t = s + D1 + delta``, ``0 <= delta < L - s``: later rows live on an (L, L) lag grid
  (optionally cut to (L, max_lag)).
* **Trigger.** Given the reset noise rho ~ N(0, sigma_reset), the comparator fires at tick u with
  probability ``h_u = Phi((rho + Q[u] - Q[r] - thr) / sigma_e)``, ``sigma_e^2 = sigma_uncorr^2 +
  sigma_disc^2`` (fresh noise every tick, as the simulator). The first trigger after a row is at t
  with probability ``g(t | rho) = prod_{arm <= u < t} (1 - h_u) h_t``, accumulated in log space with
  ``log_ndtr``; rho is integrated with K Gauss-Hermite nodes (``log w_k`` is folded into every
  ``log_g``). The survival to the window end ``S = prod_u (1 - h_u)`` gives "no further hit".
* **Slot recursion.** ``f_0(t) = g_0(t)``, ``f_{j+1}(t) = sum_s f_j(s) g_s(t)``; the hit
  intensity is ``lambda(t) = sum_{j<M} f_j(t)`` (M = max hits per pixel), the expected number of
  hits ``sum_t lambda(t)``, and ``A(s) = sum_{j<M-1} f_j(s)`` the intensity of later row s.
* **Charge mark.** The held sample after a trigger at t from a row that reset at r is
  ``rho + Q[t + H] - Q[r] + N(0, sigma_uncorr)``; the probability of its ADC code is the exact bin
  probability ``Phi((q_hi - mu)/sigma_u) - Phi((q_lo - mu)/sigma_u)`` (quantisation exact; the
  saturated code is the censored tail ``q_hi = inf``), mixed over the nodes, which the trigger
  itself reweights (it conditions rho), and over the rows.
* **Straggling below the latent** (optional ``straggling = (f, k)`` per channel, issue 12: the
  relative sd and relative third cumulant of the channel's charge; ``trigger=False`` in the hit
  terms, with tensors made without it, keeps it in the mark only: variance ``(f q)^2``, the
  likelihood's default). The channel's charge is ``(1 + e) Q`` with e of mean 0, sd f and third
  cumulant k, shared by all its ticks, so the comparator sees ``rho + (1 + e) q(u)`` (q = Q[u] -
  Q[r], the charge in the integrator). At each tick the offset ``v(u) = rho + e q(u)`` has sd
  ``sigma_v(q) = sqrt(sigma_reset^2 + f^2 q^2)`` and skewness ``g = k q^3 / sigma_v^3``; the K
  nodes are placed on it tick by tick through the quantile map of the shifted log-normal with
  those three cumulants, ``v_k(u) = sigma_v expm1(s x_k - s^2/2) / sqrt(expm1(s^2))`` (s from g;
  monotone for any g, the Gaussian as g -> 0): exact in the first three cumulants of every tick's
  marginal, while the ticks' offsets move together (their true correlation is 1 where the charge
  is flat, ~1 over the few ticks of a threshold crossing, which is what sets the trigger time).
  The skew matters: a pixel fed by one or two 0.4 cm segments keeps much of their Landau skew
  (skewness 2.5, median 8 % below the mean), so its typical charge, and trigger time, is not the
  mean's. Given the node at the trigger tick (charge ``q_t``), the held charge ``rho + (1 + e) q``
  is Gaussian with mean ``v + q + beta v (q - q_t)`` and extra variance ``gamma^2 (q - q_t)^2``,
  ``beta = f^2 q_t / sigma_v^2``, ``gamma^2 = f^2 sigma_reset^2 / sigma_v^2`` (the Gaussian
  conditional of e given v); marginally its variance is ``sigma_reset^2 + f^2 q^2``. f = 0 is the
  plain model. What it leaves out: e is drawn afresh for every reset row, so the correlation
  between the trigger times of successive hits on one pixel is lost (measured against the
  simulator in tests/test_readout_prob.py: a steep channel's expected hits 1.4 % low).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc, log_ndtr, logsumexp

from ..detector import Electronics
from ..forward.readout import adc_bin_edges

#: Default number of Gauss-Hermite nodes over the reset noise (accuracy measured in the tests).
N_NODES = 8
#: Standardised comparator argument is clipped to +-Z_CLIP (Phi(-9) = 1.1e-19).
Z_CLIP = 9.0
_SQRT_HALF = 0.7071067811865476
#: log of an impossible event: finite, so that logsumexp over impossible entries and its first and
#: second derivatives stay finite (exp(LOG_ZERO) underflows to exactly 0 in float32 and float64)
LOG_ZERO = -1e6
#: ticks beyond each window edge over which a hit's intensity is continued (hit_log_intensity)
EDGE_TICKS = 8
#: intensities below this are taken as this before their log: 1/x^2 (second derivatives) stays
#: inside float32, and a reset row this unlikely cannot matter
TINY = 1e-15


def hermite_nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss-Hermite nodes x_k and log-weights log(w_k), sum w_k = 1."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, np.log(w / w.sum())


def log_diff_ndtr(a, b):
    """``log(Phi(b) - Phi(a))`` for a < b, stable in both tails (b may be +inf)."""
    # b = +inf is the censored tail log_ndtr(-a); it is taken apart because log_ndtr(-inf) has a
    # NaN gradient that the flipped branch below would otherwise propagate
    tail = jnp.isposinf(b)
    b = jnp.where(tail, a + 1.0, b)
    flip = a > 0  # evaluate in the lower tail, where the CDFs are not close to 1
    lo = jnp.where(flip, -b, a)
    hi = jnp.where(flip, -a, b)
    lhi = log_ndtr(hi)
    d = jnp.minimum(log_ndtr(lo) - lhi, -1e-30)
    return jnp.where(tail, log_ndtr(-a), lhi + jnp.log(-jnp.expm1(d)))


def log_stay_fire(z):
    """``(log Phi(-z), log Phi(z))`` from one erfc: the smaller tail ``p = Phi(-|z|)`` and
    ``log1p(-p)`` for the other; z is clipped to [-Z_CLIP, Z_CLIP], so both logs are finite."""
    zc = jnp.clip(z, -Z_CLIP, Z_CLIP)
    p = 0.5 * erfc(jnp.abs(zc) * _SQRT_HALF)
    log_p = jnp.log(p)
    log_q = jnp.log1p(-p)
    up = zc > 0
    return jnp.where(up, log_p, log_q), jnp.where(up, log_q, log_p)


def safe_log(x):
    """``log(max(x, TINY))`` with zero (not NaN) first and second derivatives below TINY."""
    pos = x > TINY
    return jnp.where(pos, jnp.log(jnp.where(pos, x, 1.0)), float(np.log(TINY)))


def lag_geometry(W: int, el: Electronics) -> tuple[int, int]:
    """(D1, L): ticks from a trigger to the next armed tick, and the later-row grid size."""
    d1 = el.hold_ticks + el.reset_cycles + el.busy_cycles + 1
    return d1, max(W - d1, 0)


def channel_cost(W: int, el: Electronics, n_nodes: int = N_NODES, max_lag: int = 32) -> float:
    """Operation count of :func:`readout_tensors` for one channel of window W (the model the
    charge plan merges its window buckets by): the row-0 triangular cumsum ``K W^2``, the later
    rows' ``L`` banded cumsums ``K LB^2`` each and the slot recursion ``M L W``."""
    _, L = lag_geometry(W, el)
    LB = min(L, max_lag) if max_lag > 0 else L
    return float(n_nodes * W * W + L * (n_nodes * LB * LB + el.max_hits_per_pixel * W))


class ReadoutTensors(NamedTuple):
    """Per-channel readout distributions of one bucket (C channels, K nodes, W ticks, L rows)."""

    log_g0: jax.Array  # (C, K, W)    log P(first trigger at t, node k) from the window start
    log_gl: jax.Array  # (C, K, L, LB) log P(next trigger at s + D1 + delta, node k | trigger at s)
    log_S0: jax.Array  # (C, K)       log P(no trigger in the window, node k) from the start
    log_Sl: jax.Array  # (C, K, L)    log P(no further trigger, node k | trigger at s)
    lam: jax.Array  # (C, W)          hit intensity lambda(t)
    log_A: jax.Array  # (C, L)        log intensity of later row s (slots < M - 1)
    expected_hits: jax.Array  # (C,)


def readout_tensors(Q: jax.Array, el: Electronics, n_nodes: int = N_NODES, max_lag: int = 0,
                    straggling: jax.Array | None = None) -> ReadoutTensors:
    """Trigger probabilities, slot recursion and hit intensity for the channels ``Q`` (C, W).

    ``straggling`` (optional, (C, 2)): relative sd f and relative third cumulant k of each
    channel's charge scale (straggling below the latent); its trigger-time jitter enters through
    the node values (module docstring).

    ``max_lag > 0`` bounds the lag grid of the later rows to ``min(L, max_lag)`` ticks after the
    re-arming (cost C K L max_lag instead of C K L^2): a next trigger later than that is not
    modelled (its probability is reported by ``ReadoutTensors.log_Sl``, the survival through the
    band). ``max_lag = 0`` keeps the exact grid.
    """
    W = Q.shape[1]
    D1, L = lag_geometry(W, el)
    LB = min(L, max_lag) if max_lag > 0 else L
    x, logw = hermite_nodes(n_nodes)
    dtype = Q.dtype
    x = jnp.asarray(x, dtype)
    w = jnp.asarray(np.exp(logw), dtype)
    logw = jnp.asarray(logw, dtype)
    sig_e = max(float(np.hypot(el.uncorrelated_noise_e, el.discriminator_noise_e)), 1.0)
    thr = el.threshold_e
    M = el.max_hits_per_pixel
    HR = el.hold_ticks + el.reset_cycles
    s_idx = jnp.arange(L)
    d_idx = jnp.arange(LB)
    t_of = s_idx[:, None] + D1 + d_idx[None, :]  # (L, LB) tick of (row s, lag delta)
    lag_okf = (d_idx[None, :] < (L - s_idx)[:, None]).astype(dtype)
    t_idx = jnp.arange(W)
    delta_of = t_idx[None, :] - s_idx[:, None] - D1  # (L, W) lag of tick t from row s
    dense_ok = (delta_of >= 0) & (delta_of < LB)

    def first_trigger(z, mask):
        # a trigger probability within Phi(-Z_CLIP) = 1e-19 of 0 or 1 is exact to float32
        log_stay, log_fire = log_stay_fire(z)
        log_stay = log_stay * mask  # masked ticks: stay with probability 1 (a multiply, no select)
        n = z.shape[-1]
        # inclusive cumulative sum as a triangular matmul: 4x faster than cumsum on XLA:CPU
        cum = log_stay @ jnp.triu(jnp.ones((n, n), z.dtype))
        # masked entries get LOG_ZERO added (exp underflows to exactly 0, zero derivative)
        log_g = cum - log_stay + log_fire + (1.0 - mask) * LOG_ZERO
        return log_g, cum[..., -1]

    def one(Qc, fc):
        z0 = (straggling_nodes(x[:, None], el, fc, Qc[None, :]) + Qc[None, :] - thr) / sig_e
        log_g0, log_S0 = first_trigger(z0, jnp.ones((1, W), dtype))
        f0 = w @ jnp.exp(log_g0)  # (W,) mixture over the nodes
        log_g0 = log_g0 + logw[:, None]
        log_S0 = log_S0 + logw
        if L == 0:
            return (log_g0, jnp.zeros((n_nodes, 0, 0), dtype), log_S0,
                    jnp.zeros((n_nodes, 0), dtype), f0, jnp.zeros(0, dtype))
        q_reset = Qc[s_idx + HR]  # (L,) charge lost at the reset of row s
        q_t = Qc[jnp.minimum(t_of, W - 1)]  # (L, LB)
        q_in = (q_t - q_reset[:, None])[None]  # (1, L, LB) charge in the integrator
        z = (straggling_nodes(x[:, None, None], el, fc, q_in) + q_in - thr) / sig_e  # (K, L, LB)
        log_g, log_Sl = first_trigger(z, lag_okf[None])
        # the node mixture as a weighted sum of exp (no logsumexp: the per-node values are at
        # most 1, and exp(LOG_ZERO) = 0 exactly)
        Gl = jnp.einsum("k,kld->ld", w, jnp.exp(log_g))  # (L, LB)
        log_gl = log_g + logw[:, None, None]
        log_Sl = log_Sl + logw[:, None]
        Gd = jnp.where(dense_ok, Gl[s_idx[:, None], jnp.clip(delta_of, 0, LB - 1)], 0.0)  # (L, W)

        def slot(f, _):
            return f[:L] @ Gd, f

        _, fs = jax.lax.scan(slot, f0, None, length=M)  # (M, W): f_0 .. f_{M-1}
        lam = fs.sum(0)
        A = fs[: M - 1, :L].sum(0) if M > 1 else jnp.zeros(L, dtype)
        return log_g0, log_gl, log_S0, log_Sl, lam, safe_log(A)

    if straggling is None:
        out = jax.vmap(lambda Qc: one(Qc, None))(Q)
    else:
        out = jax.vmap(one)(Q, jnp.asarray(straggling, dtype))
    log_g0, log_gl, log_S0, log_Sl, lam, log_A = out
    return ReadoutTensors(log_g0, log_gl, log_S0, log_Sl, lam, log_A, lam.sum(-1))


def log_adc_prob(adc, mu, el: Electronics, mark: str = "gaussian", extra_var=None):
    """log P(ADC code | held charge ~ N(mu, sigma_uncorr)).

    ``extra_var`` (optional, e^2, broadcast with mu): variance added to the held charge's (the
    straggling below the latent, :func:`held_charge_moments`); None: unchanged.

    ``mark="exact"``: the bin probability ``Phi((q_hi - mu)/s) - Phi((q_lo - mu)/s)``.
    ``mark="gaussian"`` (DESIGN.md section 4, cheaper): the density ``N(q | mu, sigma_q)`` at the
    bin centre times the bin width, ``sigma_q^2 = sigma_uncorr^2 + step^2/12`` (quantisation); the
    saturated code is always the censored tail ``Phi((mu - q_lo)/sigma_u)``.
    """
    lo, hi = adc_bin_edges(adc, el)
    s = max(el.uncorrelated_noise_e, 1.0)
    if extra_var is not None:  # straggling below the latent length (issue 12)
        s = jnp.sqrt(s * s + extra_var)
    if mark == "exact":
        return log_diff_ndtr((lo - mu) / s, (hi - mu) / s)
    step = el.electrons_per_adc
    sq2 = s * s + step * step / 12.0
    q = 0.5 * (lo + lo + step)
    gauss = -0.5 * (q - mu) ** 2 / sq2 - 0.5 * jnp.log(2 * np.pi * sq2) + np.log(step)
    sat = adc >= el.adc_counts - 1
    return jnp.where(sat, log_ndtr((mu - lo) / s), gauss)


#: skewness below which the offset's shifted log-normal is taken at this value (a Gaussian to
#: float32 precision; keeps the shape parameter away from 0/0)
SKEW_MIN = 1e-3


def lognormal_shape(g):
    """Shape of the standardised shifted log-normal of skewness g (>= SKEW_MIN):
    ``(s, r)`` with ``Y = expm1(s Z - s^2/2) / r`` of mean 0, sd 1 and skewness g, Z standard
    normal, ``r = sqrt(exp(s^2) - 1)``. From ``g = (w + 2) sqrt(w - 1)``, ``w = exp(s^2)``:
    ``c^3 = 1 + g^2/2 + g sqrt(1 + g^2/4)``, ``w - 1 = (c - 1)^2 / c`` (written without the
    cancellations of ``c + 1/c - 2`` at small g)."""
    g = jnp.maximum(g, SKEW_MIN)
    c1 = jnp.expm1(jnp.log1p(0.5 * g * g + g * jnp.sqrt(1.0 + 0.25 * g * g)) / 3.0)  # c - 1
    wm1 = c1 * c1 / (1.0 + c1)
    return jnp.sqrt(jnp.log1p(wm1)), jnp.sqrt(wm1)


def straggling_nodes(x: jax.Array, el: Electronics, straggling, q):
    """Node values of the comparator offset ``rho + e q`` for the charge q in the integrator
    (module docstring): the quantile map of the shifted log-normal with the offset's mean 0, sd
    ``sigma_v = sqrt(sigma_reset^2 + (f q)^2)`` and skewness ``g = k q^3 / sigma_v^3``
    (:func:`lognormal_shape`), at the Gaussian nodes x; ``straggling = (f, k)`` the channel's
    relative sd and relative third cumulant; x broadcasts with q. ``straggling`` None: the reset
    noise alone."""
    if straggling is None:
        return x * el.reset_noise_e
    f, k = straggling[..., 0], straggling[..., 1]
    sv = jnp.sqrt(el.reset_noise_e**2 + (f * q) ** 2)
    s, r = lognormal_shape(k * (q / sv) ** 3)
    return sv * jnp.expm1(s * x - 0.5 * s * s) / r


def held_charge_moments(v, q, el: Electronics, straggling, q_t, trigger: bool | str = True):
    """Mean and extra variance (electrons, e^2) of the held charge ``rho + (1 + e) q`` given the
    node v at the trigger tick (charge ``q_t``): ``v + q`` and None without straggling; with it
    ``v + q + beta v (q - q_t)`` and ``gamma^2 (q - q_t)^2`` (module docstring; the Gaussian
    regression of e on the offset, with the node's skewed value). ``trigger`` False (the scale in
    the mark only, v the reset-noise node): ``v + q`` and ``(f q)^2``.

    ``trigger="timing"``: the node v = rho + e_t q_t sets the trigger time, but the held charge's
    scale e_h is independent of e_t (the opposite bound to the shared e: the early charge that
    fires the comparator and the charge held H ticks later come from different segments). Then
    ``E[rho | v] = v sigma_r^2 / sigma_v^2`` and ``Var[rho | v] = sigma_r^2 (f q_t)^2 /
    sigma_v^2`` (Gaussian regression), so the mean is ``q + v sigma_r^2 / sigma_v^2`` and the
    extra variance ``sigma_r^2 (f q_t)^2 / sigma_v^2 + (f q)^2``."""
    if straggling is None:
        return v + q, None
    f = straggling[..., 0]
    if not trigger:
        return v + q, (f * q) ** 2
    sr2 = el.reset_noise_e**2
    f2 = f * f
    sv2 = sr2 + f2 * q_t * q_t
    if trigger == "timing":
        return q + v * (sr2 / sv2), sr2 * f2 * q_t * q_t / sv2 + f2 * q * q
    d = q - q_t
    return v + q + (f2 * q_t / sv2) * v * d, (f2 * sr2 / sv2) * d * d


class HitRows(NamedTuple):
    """What the intensity of each of N hits needs from its channel: K nodes, R candidate rows.

    The later reset rows that can produce a hit at tick t are the R = LB rows whose lag band
    covers t (``s = t - D1 - j``, j < LB); past the window end, the last LB rows (a row whose band
    ended before the end has no modelled trigger there; with the exact grid, LB = L, all rows).
    So the per-hit work is K x LB whatever the window, and the hits of every bucket can be
    evaluated together (:func:`hit_rows_intensity`) once their rows are padded to a common R.
    """

    tt: jax.Array  # (N,) tick index of the hit in its window
    window: jax.Array  # (N,) window length W of its bucket
    log_g0: jax.Array  # (N, K) log P(first trigger at t, node k) from the window start
    log_S0: jax.Array  # (N, K) log P(no trigger in the window, node k) from the start
    q_trig: jax.Array  # (N,) charge at the trigger tick, Q[t]
    q_held: jax.Array  # (N,) charge held after an in-window trigger, Q[t + H]
    q_end: jax.Array  # (N,) charge at the window end, Q[W - 1]
    log_gl: jax.Array  # (N, K, R) log P(trigger at t, node k | row), LOG_ZERO off the band
    log_Sl: jax.Array  # (N, K, R) log P(no trigger through the band, node k | row)
    log_A: jax.Array  # (N, R) log intensity of the row, LOG_ZERO where it does not exist
    q_reset: jax.Array  # (N, R) charge lost at the row's reset
    straggling: jax.Array | None  # (N, 2) the channel's charge straggling (f, k), or None


def hit_rows(Q: jax.Array, rt: ReadoutTensors, chan: jax.Array, t: jax.Array, el: Electronics,
             n_rows: int | None = None, straggling=None) -> HitRows:
    """Gather :class:`HitRows` for hits (chan, t) of one bucket; ``n_rows`` (>= its LB, default
    LB) pads the rows so that buckets concatenate."""
    W = Q.shape[1]
    D1, L = lag_geometry(W, el)
    LB = rt.log_gl.shape[-1]
    R = LB if n_rows is None else int(n_rows)
    HR = el.hold_ticks + el.reset_cycles
    K = rt.log_g0.shape[1]
    j = jnp.arange(R)

    def one(c, tt):
        tc = jnp.clip(tt, 0, W - 1)  # before the start: as at tick 0 (the charge is 0 there)
        Qc = Q[c]
        f = None if straggling is None else straggling[c]
        head = (tt, jnp.asarray(W, tt.dtype), rt.log_g0[c, :, tc], rt.log_S0[c], Qc[tc],
                Qc[jnp.minimum(tc + el.hold_ticks, W - 1)], Qc[W - 1])
        if L == 0 or R == 0:
            zero = jnp.zeros(R, Q.dtype)
            lz = jnp.full((K, R), LOG_ZERO, Q.dtype)
            return (*head, lz, lz, zero + LOG_ZERO, zero, f)
        s = jnp.where(tt >= W, L - 1, tc - D1) - j  # (R,) candidate rows, newest first
        ok = (s >= 0) & (j < LB) & (tt >= 0)
        sc = jnp.clip(s, 0, L - 1)
        lg = rt.log_gl[c, :, sc, jnp.minimum(j, LB - 1)].T  # (K, R): one gather per hit
        return (*head, jnp.where(ok, lg, LOG_ZERO), jnp.where(ok, rt.log_Sl[c][:, sc], LOG_ZERO),
                jnp.where(ok, rt.log_A[c][sc], LOG_ZERO), Qc[sc + HR], f)

    return HitRows(*jax.vmap(one)(chan, t))


def hit_rows_intensity(rows: HitRows, adc: jax.Array, el: Electronics, n_nodes: int = N_NODES,
                       mark: str = "gaussian", trigger: bool | str = True) -> jax.Array:
    """PPP log intensity ``log(lambda(t) P(code | t))`` of hits from their :class:`HitRows`.

    One logsumexp over row 0 and the candidate rows of [log P(trigger at t, node k) +
    log P(code | held charge mu_k)], ``mu = rho_k + Q[t + H] - Q[reset]``. Past the window end
    (``W <= t < W + EDGE_TICKS``) the charge is constant, Q[W-1], and the trigger weight is each
    row's survival to the end times ``(1 - h)^(t - W) h`` with h the plateau's trigger
    probability; farther out (and before ``-EDGE_TICKS``): LOG_ZERO, the floor. ``trigger``
    False: the rows' straggling widens the mark only (the readout tensors were made without it)."""
    x = jnp.asarray(hermite_nodes(n_nodes)[0], rows.q_end.dtype)
    sig_e = max(float(np.hypot(el.uncorrelated_noise_e, el.discriminator_noise_e)), 1.0)
    thr = el.threshold_e
    later = rows.log_gl.shape[-1] > 0

    def one(r: HitRows, a):
        W = r.window
        f = r.straggling
        fn = f if trigger else None  # the straggling in the node values (trigger) or not
        inside = (r.tt >= -EDGE_TICKS) & (r.tt < W)
        past = (r.tt >= W) & (r.tt < W + EDGE_TICKS)
        n_after = jnp.clip(r.tt - W, 0, EDGE_TICKS)
        q_held = jnp.where(past, r.q_end, r.q_held)
        q_t = jnp.where(past, r.q_end, r.q_trig)  # charge at the trigger tick
        v = straggling_nodes(x, el, fn, q_t)  # (K,) offset nodes at the trigger tick
        ls0, lf0 = log_stay_fire((v + r.q_end - thr) / sig_e)
        w0 = jnp.where(past, r.log_S0 + n_after * ls0 + lf0, r.log_g0)  # (K,)
        mu, var = held_charge_moments(v, q_held, el, f, q_t, trigger)
        out = logsumexp(w0 + log_adc_prob(a, mu, el, mark, var))
        if later:
            qr = r.q_reset[None, :]
            v = straggling_nodes(x[:, None], el, fn, q_t - qr)  # (K, R) (or (K, 1))
            ls, lf = log_stay_fire((v + r.q_end - qr - thr) / sig_e)
            wl = jnp.where(past, r.log_Sl + n_after * ls + lf, r.log_gl)  # (K, R)
            mu, var = held_charge_moments(v, q_held - qr, el, f, q_t - qr, trigger)
            terms = wl + r.log_A[None, :] + log_adc_prob(a, mu, el, mark, var)
            out = jnp.logaddexp(out, logsumexp(terms))
        return jnp.where(inside | past, out, LOG_ZERO)

    return jax.vmap(one)(rows, adc)


def hit_log_intensity(
    Q: jax.Array, rt: ReadoutTensors, chan: jax.Array, t: jax.Array, adc: jax.Array,
    el: Electronics, n_nodes: int = N_NODES, mark: str = "gaussian", straggling=None,
    trigger: bool | str = True,
) -> jax.Array:
    """PPP log intensity of hits of one bucket: ``log(lambda(t) P(code | t))``, mixed over rows
    and rho (:func:`hit_rows` then :func:`hit_rows_intensity`).

    chan, t, adc : (N,) channel index in the bucket, tick index in its window, ADC code.
    straggling : optional (C, 2) charge straggling (f, k) per channel of the bucket; ``trigger``:
    whether ``rt`` was made with it (False: it widens the mark only).

    **Window edges.** The window origin moves in whole ticks with the parameters, so a hit near
    an edge can leave the window when a parameter changes. Within ``EDGE_TICKS`` of the edges the
    intensity is continued instead of dropped: after the end (where the charge has all arrived
    and stays at ``Q[W-1]``) from each row's survival to the end times ``(1 - h)^(t - W) h`` with
    h the trigger probability on the plateau; before the start (no charge yet) as at tick 0.
    Farther out: LOG_ZERO (the floor).
    """
    return hit_rows_intensity(hit_rows(Q, rt, chan, t, el, straggling=straggling), adc, el,
                              n_nodes, mark, trigger)


def sequential_log_prob(
    Q: jax.Array, rt: ReadoutTensors, t: jax.Array, adc: jax.Array, valid: jax.Array,
    el: Electronics, log_eps: float, n_nodes: int = N_NODES, mark: str = "gaussian",
    straggling=None, trigger: bool | str = True,
) -> jax.Array:
    """Exact sequential log-likelihood of each channel's observed hit sequence, (C,).

    t, adc, valid : (C, M) tick index in the window, ADC code and validity of the hit slots, hits
    sorted in time within a channel. Each hit is conditioned on the reset fixed by the previous
    observed hit; the channel ends with the probability of no further trigger (unless M hits were
    seen). Each hit term is floored at ``log_eps``; an impossible sequence (a hit inside the dead
    time, or outside the window) therefore costs ``log_eps`` per hit instead of -inf.
    """
    C, W = Q.shape
    M = t.shape[1]
    D1, L = lag_geometry(W, el)
    LB = rt.log_gl.shape[-1]
    HR = el.hold_ticks + el.reset_cycles
    x = jnp.asarray(hermite_nodes(n_nodes)[0], Q.dtype)

    def one(c, tc_, ac_, vc_):
        Qc = Q[c]
        f = None if straggling is None else straggling[c]
        prev = jnp.concatenate([jnp.array([-1], tc_.dtype), tc_[:-1]])  # previous trigger tick

        def hit_term(m):
            tt = tc_[m]
            s = prev[m]
            inside = (tt >= 0) & (tt < W)
            tcl = jnp.clip(tt, 0, W - 1)
            q_held = Qc[jnp.minimum(tcl + el.hold_ticks, W - 1)]
            first = m == 0
            if L > 0:
                sc = jnp.clip(s, 0, L - 1)
                delta = tt - s - D1
                ok_later = (s >= 0) & (s < L) & (delta >= 0) & (delta < L - s) & (delta < LB)
                lg_later = rt.log_gl[c, :, sc, jnp.clip(delta, 0, LB - 1)]
                q_reset = Qc[jnp.clip(s + HR, 0, W - 1)]
            else:
                ok_later = jnp.array(False)
                lg_later = jnp.full(x.shape, LOG_ZERO, Q.dtype)
                q_reset = jnp.zeros((), Q.dtype)
            lg = jnp.where(first, rt.log_g0[c, :, tcl], lg_later)
            qr = jnp.where(first, 0.0, q_reset)
            q_t = Qc[tcl] - qr  # charge in the integrator at the trigger tick
            v = straggling_nodes(x, el, f if trigger else None, q_t)
            mu, var = held_charge_moments(v, q_held - qr, el, f, q_t, trigger)
            val = logsumexp(lg + log_adc_prob(ac_[m], mu, el, mark, var))
            ok = inside & (first | ok_later)
            return jnp.maximum(jnp.where(ok, val, LOG_ZERO), log_eps)

        terms = jax.vmap(hit_term)(jnp.arange(M))
        n = vc_.sum()
        hits_ll = jnp.where(vc_, terms, 0.0).sum()
        last = jnp.where(n > 0, tc_[jnp.maximum(n - 1, 0)], -1)
        surv0 = logsumexp(rt.log_S0[c])
        if L > 0:
            in_grid = (last >= 0) & (last < L)
            surv_l = jnp.where(in_grid, logsumexp(rt.log_Sl[c][:, jnp.clip(last, 0, L - 1)]), 0.0)
        else:
            surv_l = jnp.zeros((), Q.dtype)
        surv = jnp.where(n == 0, surv0, surv_l)
        return hits_ll + jnp.where(n < M, surv, 0.0)

    return jax.vmap(one)(jnp.arange(C), t, adc, valid)
