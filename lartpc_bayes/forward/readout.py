r"""Stochastic LArPix readout: the "real" simulator that makes fake data.

Model of one self-triggering channel (larnd-sim ``fee.py``, DESIGN.md section 3), per tick j of the
channel's window, with ``q_j = Q[j] - Q[j-1]`` the charge arriving during tick j (electrons):

1. The integrator starts at ``rho ~ N(0, sigma_reset)`` and adds ``q_j`` every tick.
2. When armed, it triggers at the first tick where
   ``integ + N(0, sigma_uncorr) >= threshold + N(0, sigma_disc)`` (fresh noise every tick).
3. After the crossing tick s it integrates ``H = hold_ticks`` more ticks (18 for LArPix: 3 + 15
   cycles), samples ``integ + N(0, sigma_uncorr)`` and digitises it with the 8-bit ADC.
4. It then resets: the charge of the next ``R = reset_cycles`` ticks is lost and the integrator
   restarts from a new reset-noise value; it is busy (charge integrates, no trigger) for
   ``B = busy_cycles`` more ticks. The next trigger can come at tick ``s + H + R + B + 1`` at the
   earliest, with the integrator holding the charge of ticks after ``r = s + H + R``.
5. At most ``max_hits_per_pixel`` hits per channel.

Differences from larnd-sim, on purpose: no discard of a held sample that fell below threshold
(DESIGN.md's readout has none; with Q non-decreasing it needs a downward noise fluctuation after a
crossing at the threshold), no buffer rise time, no periodic reset, and a hold that runs past the
end of a channel window is sampled at the window end (no charge arrives there by construction).

The digitiser is ``ADC = min(round(max(Q G + V_ped - V_cm, 0) 2^bits / (V_ref - V_cm)), 2^bits-1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Hits
from ..detector import Electronics
from .charge import ChargePlan


def digitize(q_e, el: Electronics):
    """ADC code (float array of integers) of a charge ``q_e`` in electrons."""
    g = el.gain_mV_per_ke * 1e-3
    x = (
        jnp.maximum(q_e * g + el.v_pedestal_mV - el.v_cm_mV, 0.0)
        * el.adc_counts
        / (el.v_ref_mV - el.v_cm_mV)
    )
    return jnp.minimum(jnp.round(x), el.adc_counts - 1)


def adc_to_charge(adc, el: Electronics):
    """Charge, electrons, at the centre of ADC bin ``adc``:
    ``(adc (V_ref - V_cm)/2^bits + V_cm - V_ped) / G`` (ndlar_flow ``calib_prompt_hits``)."""
    g = el.gain_mV_per_ke * 1e-3
    return (adc * (el.v_ref_mV - el.v_cm_mV) / el.adc_counts + el.v_cm_mV - el.v_pedestal_mV) / g


def adc_bin_edges(adc, el: Electronics):
    """Charge interval (lo, hi), electrons, digitised to ``adc`` (hi = +inf for the last code)."""
    step = el.electrons_per_adc
    q = adc_to_charge(adc, el)
    lo = q - 0.5 * step
    hi = jnp.where(adc >= el.adc_counts - 1, jnp.inf, q + 0.5 * step)
    return lo, hi


class ChannelHits(NamedTuple):
    """Fixed-size hit slots per channel: tick (window index), ADC, valid flag; shape (C, M)."""

    tick: jax.Array  # int32, index into the channel window
    adc: jax.Array  # int32
    valid: jax.Array  # bool


def simulate_channels(
    key: jax.Array, Q: jax.Array, el: Electronics, noise: bool = True
) -> ChannelHits:
    """Run the stochastic readout on cumulative charges ``Q`` (C, W) electrons.

    Noise draws come from ``key`` (reproducible); ``noise=False`` switches every noise term off.
    """
    C, W = Q.shape
    M = el.max_hits_per_pixel
    H, R, B = el.hold_ticks, el.reset_cycles, el.busy_cycles
    dtype = Q.dtype
    q = jnp.diff(Q, axis=1, prepend=jnp.zeros((C, 1), dtype))
    ks = jax.random.split(key, 4)
    scale = 1.0 if noise else 0.0
    n_trig = (
        scale
        * jnp.hypot(el.uncorrelated_noise_e, el.discriminator_noise_e)
        * jax.random.normal(ks[0], (C, W), dtype)
    )
    n_samp = scale * el.uncorrelated_noise_e * jax.random.normal(ks[1], (C, W), dtype)
    n_reset = scale * el.reset_noise_e * jax.random.normal(ks[2], (C, W + 1), dtype)
    thr = el.threshold_e

    def one_channel(q_c, trig_c, samp_c, reset_c):
        # state: integ, hold (ticks left in hold, 0 = none), lost (reset ticks left), wait (busy
        # ticks left), n hits, hit arrays, pending trigger tick
        init = (reset_c[0], 0, 0, 0, 0, jnp.zeros(M, jnp.int32), jnp.zeros(M, dtype), 0)

        def step(carry, xs):
            integ, hold, lost, wait, n, ticks, held, s_tick = carry
            j, qj, nt, ns, nr = xs
            in_reset = lost > 0
            lost_next = jnp.maximum(lost - 1, 0)
            # reset ticks drop their charge; the integrator restarts after the last one
            integ = jnp.where(in_reset, jnp.where(lost == 1, nr, integ), integ + qj)
            holding = (~in_reset) & (hold > 0)
            sample_now = holding & (hold == 1)
            held_val = integ + ns
            can_store = n < M
            held = jnp.where(
                sample_now & can_store, held.at[jnp.minimum(n, M - 1)].set(held_val), held
            )
            n = jnp.where(sample_now, n + 1, n)
            hold_next = jnp.where(holding, hold - 1, hold)
            lost_next = jnp.where(sample_now, R, lost_next)
            wait_next = jnp.where(
                sample_now, B, jnp.where((~in_reset) & (~holding) & (wait > 0), wait - 1, wait)
            )
            # after a sample with R == 0 the reset is immediate
            integ = jnp.where(sample_now & (R == 0), nr, integ)
            armed = (~in_reset) & (~holding) & (wait == 0) & (n < M)
            fire = armed & (integ + nt >= thr)
            ticks = jnp.where(fire, ticks.at[jnp.minimum(n, M - 1)].set(j), ticks)
            hold_next = jnp.where(fire, H, hold_next)
            s_tick = jnp.where(fire, j, s_tick)
            return (integ, hold_next, lost_next, wait_next, n, ticks, held, s_tick), None

        xs = (jnp.arange(W, dtype=jnp.int32), q_c, trig_c, samp_c, reset_c[1:])
        (integ, hold, _, _, n, ticks, held, _), _ = jax.lax.scan(step, init, xs)
        # a hold still open at the window end is sampled there (no further charge arrives)
        pending = hold > 0
        held = jnp.where(
            pending & (n < M), held.at[jnp.minimum(n, M - 1)].set(integ + samp_c[-1]), held
        )
        n = jnp.where(pending, n + 1, n)
        valid = jnp.arange(M) < jnp.minimum(n, M)
        return ticks, held, valid

    ticks, held, valid = jax.vmap(one_channel)(q, n_trig, n_samp, n_reset)
    adc = digitize(held, el).astype(jnp.int32)
    return ChannelHits(ticks, adc, valid)


def simulate_plan(
    key: jax.Array,
    charges: tuple[tuple[jax.Array, jax.Array], ...],
    el: Electronics,
    noise: bool = True,
) -> tuple[ChannelHits, ...]:
    """Stochastic readout of every bucket; ticks are converted to absolute ticks (origin + j)."""
    out = []
    for k, (Q, origin) in zip(jax.random.split(key, len(charges)), charges, strict=True):
        h = simulate_channels(k, Q, el, noise)
        out.append(ChannelHits(h.tick + origin[:, None], h.adc, h.valid))
    return tuple(out)


def collect_hits(plan: ChargePlan, channel_hits: tuple[ChannelHits, ...]) -> Hits:
    """Flatten per-channel hit slots into a :class:`Hits` table (host NumPy), sorted."""
    ev, pix, tick, adc = [], [], [], []
    for ch, h in zip(plan.channels, channel_hits, strict=True):
        valid = np.asarray(h.valid) & (ch.event >= 0)[:, None]  # drop padding channels
        c_idx, _ = np.nonzero(valid)
        ev.append(ch.event[c_idx])
        pix.append(ch.pixel[c_idx])
        tick.append(np.asarray(h.tick)[valid].astype(np.int64))
        adc.append(np.asarray(h.adc)[valid].astype(np.int64))

    def cat(xs):
        return np.concatenate(xs) if xs else np.zeros(0, np.int64)

    return Hits(cat(ev), cat(pix), cat(tick), cat(adc)).sorted()
