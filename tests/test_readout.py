"""Stochastic LArPix readout: hand-computed hits without noise, noise statistics over many seeds.

Electronics of the Module-0 card: threshold 5000 e, H = 18 hold ticks, R = 1 reset tick, B = 9 busy
ticks, so after a crossing at tick s the sample is taken at the end of tick s + H (charge of ticks
s+1 .. s+H integrated), the charge of tick s + H + 1 is lost in the reset, ticks s+H+2 .. s+H+10
integrate but cannot trigger, and tick s + H + R + B + 1 = s + 29 is the first that can.

ADC by hand (Module 0: G = 4 mV/ke, V_ped - V_cm = 580 - 288 = 292 mV, 256/(V_ref - V_cm) =
256/1012 = 0.252964 ADC/mV):  ADC(Q) = round((0.004 Q + 292) * 0.252964)
    Q =  5000 e -> 312.0 mV ->  78.925 ->  79
    Q =  7000 e -> 320.0 mV ->  80.949 ->  81
    Q =  7200 e -> 320.8 mV ->  81.151 ->  81
    Q = 10500 e -> 334.0 mV ->  84.490 ->  84
    Q = 20000 e -> 372.0 mV ->  94.103 ->  94
    Q = 20500 e -> 374.0 mV ->  94.609 ->  95
    Q = 30000 e -> 412.0 mV -> 104.221 -> 104
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import ndtr

from lartpc_bayes.detector import load_card
from lartpc_bayes.forward.readout import adc_bin_edges, adc_to_charge, digitize, simulate_channels

CARD = load_card("module0")
EL = CARD.electronics
THR = EL.threshold_e

sim = jax.jit(simulate_channels, static_argnums=(2, 3))


def hand_adc(q):
    """The digitiser written out from DESIGN.md section 3 (Python floats, no JAX)."""
    mv = q * EL.gain_mV_per_ke * 1e-3 + EL.v_pedestal_mV - EL.v_cm_mV
    return min(round(max(mv, 0.0) * 256 / (EL.v_ref_mV - EL.v_cm_mV)), 255)


def cumulative(W, deposits):
    """(W,) cumulative charge from {tick: electrons arriving during that tick}."""
    q = np.zeros(W, np.float32)
    for t, c in deposits.items():
        q[t] += c
    return np.cumsum(q, dtype=np.float32)


def hits_of(h, c):
    """List of (tick, adc) of channel c."""
    v = np.asarray(h.valid[c])
    ticks, adcs = np.asarray(h.tick[c])[v].tolist(), np.asarray(h.adc[c])[v].tolist()
    return list(zip(ticks, adcs, strict=True))


def test_hand_adc_table():
    table = {5000: 79, 7000: 81, 7200: 81, 10500: 84, 20000: 94, 20500: 95, 30000: 104}
    for q, a in table.items():
        assert hand_adc(q) == a
    assert np.asarray(digitize(jnp.asarray(list(table), jnp.float32), EL)).tolist() == list(
        table.values()
    )


W = 96
# Each case: deposits {tick: electrons} and the hits (trigger tick, held charge) worked out by hand;
# the expected ADC is hand_adc(held charge) (table in the module docstring).
CASES = {
    # step at tick 10 -> crossing at 10, sample at end of tick 28 includes the 500 e of tick 28
    "single_step": ({10: 20000.0, 28: 500.0}, [(10, 20500.0)]),
    # same step but the extra charge in tick 29 (= s + H + 1, the reset tick) is lost
    "reset_tick_lost": ({10: 20000.0, 29: 500.0}, [(10, 20000.0)]),
    # 300 e per tick: integrator 300 (j + 1) crosses 5000 at j = 16 (5100; 4800 at j = 15); sample
    # at 34: 300 * 35 = 10500 -> 84. Tick 35 lost, restart at 0, 300 (j - 35) crosses at j = 52
    # (5100); then sample at 70: 300 * 35 = 10500 -> 84; tick 71 lost; 300 (j - 71) crosses at
    # j = 88; its hold (to 106) runs past the window end (95): sampled there, 300 * (95 - 71) =
    # 7200 -> round((28.8 + 292) * 0.252964) = round(81.15) = 81.
    "slow_ramp": ({t: 300.0 for t in range(W)}, [(16, 10500.0), (52, 10500.0), (88, 7200.0)]),
    # dead time: hit at 5 (30000 -> 104); 3000 e in the reset tick 24 lost; 6000 e at 27 during
    # busy (kept, but cannot trigger); first armed tick 5 + 29 = 34 triggers on 6000 e; 1000 e at 40
    # inside the hold -> sample 7000 -> 81 (10000 -> 84 if the reset charge were kept).
    "dead_time": ({5: 30000.0, 24: 3000.0, 27: 6000.0, 40: 1000.0}, [(5, 30000.0), (34, 7000.0)]),
    # a crossing 8 ticks before the end: the hold runs past the window and is sampled at its end
    "hold_past_end": ({W - 8: 20000.0}, [(W - 8, 20000.0)]),
    # below threshold in total (2000 + 2999 = 4999 e): no hit
    "below_threshold": ({3: 2000.0, 20: 2999.0}, []),
    # exactly at threshold: integrator >= threshold fires
    "at_threshold": ({7: 5000.0}, [(7, 5000.0)]),
    # three well separated pulses (30 ticks apart >= 29 dead ticks): three hits
    "three_pulses": ({0: 20000.0, 30: 20000.0, 60: 20000.0}, [(0, 2e4), (30, 2e4), (60, 2e4)]),
}


@pytest.fixture(scope="module")
def noiseless_hits():
    Q = jnp.asarray(np.stack([cumulative(W, d) for d, _ in CASES.values()]))
    return sim(jax.random.key(0), Q, EL, False)


@pytest.mark.parametrize("name", list(CASES))
def test_noiseless_hand_computed_hits(noiseless_hits, name):
    c = list(CASES).index(name)
    expected = [(t, hand_adc(q)) for t, q in CASES[name][1]]
    assert hits_of(noiseless_hits, c) == expected


def test_max_hits_cap():
    dep = CASES["three_pulses"][0]
    Q = jnp.asarray(cumulative(W, dep))[None]
    el2 = replace(EL, max_hits_per_pixel=2)
    h = sim(jax.random.key(0), Q, el2, False)
    assert h.tick.shape == (1, 2)
    assert hits_of(h, 0) == [(0, hand_adc(2e4)), (30, hand_adc(2e4))]
    # one slot: only the first hit, and no trigger after it (the integrator is disarmed)
    el1 = replace(EL, max_hits_per_pixel=1)
    h1 = sim(jax.random.key(0), Q, el1, False)
    assert hits_of(h1, 0) == [(0, hand_adc(2e4))]


def test_reset_cycles_zero_and_two():
    # R = 0: nothing is lost and the next trigger can come at s + H + B + 1; R = 2 loses two ticks.
    dep = {5: 30000.0, 24: 3000.0, 25: 2500.0, 40: 100.0}
    Q = jnp.asarray(cumulative(W, dep))[None]
    r0 = sim(jax.random.key(0), Q, replace(EL, reset_cycles=0), False)
    # R = 0: ticks 24, 25 kept (5500 e); first armed tick 5 + 18 + 9 + 1 = 33; sample at 51:
    # 5600 e -> round((22.4 + 292) * 0.252964) = round(79.53) = 80
    assert hits_of(r0, 0) == [(5, 104), (33, 80)]
    r2 = sim(jax.random.key(0), Q, replace(EL, reset_cycles=2), False)
    # R = 2: ticks 24 and 25 lost, 100 e left: no second hit
    assert hits_of(r2, 0) == [(5, 104)]


# --- digitiser -------------------------------------------------------------------------------


@pytest.mark.parametrize("card_name", ["module0", "2x2", "ndlar"])
def test_digitize_inverse_and_saturation(card_name):
    el = load_card(card_name).electronics
    codes = jnp.arange(256, dtype=jnp.float32)
    q = adc_to_charge(codes, el)
    # bin centres map back to their code, and so do points just inside the bin edges
    np.testing.assert_array_equal(np.asarray(digitize(q, el)), np.arange(256))
    lo, hi = adc_bin_edges(codes, el)
    step = el.electrons_per_adc
    inner_lo = np.asarray(lo) + 0.01 * step
    inner_hi = np.minimum(np.asarray(hi), np.asarray(q) + 1e6) - 0.01 * step
    np.testing.assert_array_equal(np.asarray(digitize(inner_lo, el)), np.arange(256))
    np.testing.assert_array_equal(np.asarray(digitize(inner_hi, el)), np.arange(256))
    np.testing.assert_allclose(np.diff(np.asarray(q)), step, rtol=1e-4)
    # saturation at 2^8 - 1 and clipping at 0
    assert float(digitize(jnp.float32(1e7), el)) == 255
    assert float(digitize(jnp.float32(adc_to_charge(255.0, el) + 10 * step), el)) == 255
    assert float(digitize(jnp.float32(-1e7), el)) == 0
    assert np.isinf(np.asarray(hi)[-1])


def test_digitize_module0_numbers():
    # larnd-sim.md: Module 0 988 e/ADC, pedestal 73.9 ADC, saturation ~179 ke
    assert abs(EL.electrons_per_adc - 988.28) < 0.01
    assert float(digitize(jnp.float32(0.0), EL)) == 74
    assert abs(float(adc_to_charge(255.0, EL)) - 179_012) < 10


# --- noise -----------------------------------------------------------------------------------

N_SEEDS = 4000
BASE_SEED = 20240611
SIG_R, SIG_U, SIG_D = EL.reset_noise_e, EL.uncorrelated_noise_e, EL.discriminator_noise_e
SIG_TRIG = float(np.hypot(SIG_U, SIG_D))  # per-tick trigger noise (uncorrelated + discriminator)


def run_seeds(Q, el, n=N_SEEDS, seed=BASE_SEED):
    keys = jax.random.split(jax.random.key(seed), n)
    f = jax.jit(jax.vmap(lambda k: simulate_channels(k, Q, el, True)))
    return f(keys)


W_NOISE = 29  # ticks 0..28: a crossing at tick >= 0 leaves no armed tick (next one >= 29)
Q_STEP = 50_000.0  # 45 ke above threshold = 37 sd of (reset + trigger) noise: crossing at tick 0
C_PLATEAU = THR - 1500.0  # flat 3500 e from tick 0, 1500 e below threshold


def noise_charges():
    step = cumulative(W_NOISE, {0: Q_STEP})
    plateau = cumulative(W_NOISE, {0: C_PLATEAU})
    return jnp.asarray(np.stack([step, plateau]))


@pytest.fixture(scope="module")
def fine_adc_hits():
    # 16-bit ADC over the same voltage range: step 15.4 e, so the held charge is seen before the
    # 8-bit quantisation (residual quantisation sd 15.4/sqrt(12) = 4.5 e, included below).
    el16 = replace(EL, adc_bits=16)
    return el16, run_seeds(noise_charges(), el16)


def test_step_far_above_threshold_fine_adc(fine_adc_hits):
    el16, h = fine_adc_hits
    valid = np.asarray(h.valid[:, 0])  # (seeds, M)
    # exactly one hit, always at the step tick: the integrator is at Q + N(0, 900) >= 5000 + noise
    # with overwhelming probability (37 sd), and the next armed tick (29) is outside the window.
    assert np.all(valid.sum(axis=1) == 1)
    assert np.all(np.asarray(h.tick[:, 0, 0]) == 0)
    q = np.asarray(adc_to_charge(h.adc[:, 0, 0].astype(jnp.float32), el16), dtype=np.float64)
    # held = Q + reset noise + sampling noise (both zero mean): mean Q, sd sqrt(900^2 + 500^2) =
    # 1029.6 e (+ quantisation step^2/12). Statistical errors with N = 4000 seeds:
    # SE(mean) = sd/sqrt(N) = 16.3 e, SE(sd) = sd/sqrt(2(N-1)) = 11.5 e; 4 SE bounds (fixed seed).
    sd = np.sqrt(SIG_R**2 + SIG_U**2 + el16.electrons_per_adc**2 / 12)
    n = q.size
    assert abs(q.mean() - Q_STEP) < 4 * sd / np.sqrt(n), q.mean()
    assert abs(q.std(ddof=1) - sd) < 4 * sd / np.sqrt(2 * (n - 1)), q.std(ddof=1)


def test_step_far_above_threshold_8bit():
    h = run_seeds(noise_charges()[:1], EL)
    assert np.all(np.asarray(h.valid[:, 0]).sum(axis=1) == 1)
    q = np.asarray(adc_to_charge(h.adc[:, 0, 0].astype(jnp.float32), EL), dtype=np.float64)
    # 8-bit: the quantisation adds step^2/12 (step 988 e) to the variance; its bias (Sheppard) is
    # ~ exp(-2 pi^2 sd^2/step^2) ~ 1e-9 of a step for sd = 1030 e, negligible.
    sd = np.sqrt(SIG_R**2 + SIG_U**2 + EL.electrons_per_adc**2 / 12)  # 1068 e
    n = q.size
    assert abs(q.mean() - Q_STEP) < 4 * sd / np.sqrt(n), q.mean()
    assert abs(q.std(ddof=1) - sd) < 4 * sd / np.sqrt(2 * (n - 1)), q.std(ddof=1)


def _plateau_expectations(T):
    """Per-tick noise model of a flat charge c from tick 0 (no further charge).

    Integrator c + r, r ~ N(0, sigma_reset), fixed until a hit; at every tick it fires if
    c + r + n_j >= thr with fresh n_j ~ N(0, sigma_trig). Given r, the no-fire probability per
    tick is p(r) = Phi((thr - c - r)/sigma_trig), so P(first fire at tick j) = E_r[p^j (1 - p)].
    The expectation over r is a Gauss-Hermite quadrature (200 nodes, exact to ~1e-12 here).
    Held charge of a hit: c + r + N(0, sigma_uncorr), with r weighted by P(fired | r) = 1 - p^T:
    mean c + E[r (1 - p^T)] / E[1 - p^T], variance Var(r | fired) + sigma_uncorr^2.
    """
    x, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / w.sum()
    r = SIG_R * x
    p = ndtr((THR - C_PLATEAU - r) / SIG_TRIG)
    first = np.array([(w * p**j * (1 - p)).sum() for j in range(T)])
    fired = 1 - p**T
    wf = w * fired / (w * fired).sum()
    mean_r = (wf * r).sum()
    sd_held = np.sqrt((wf * (r - mean_r) ** 2).sum() + SIG_U**2)
    return first, C_PLATEAU + mean_r, sd_held


def test_plateau_near_threshold_trigger_probability(fine_adc_hits):
    el16, h = fine_adc_hits
    valid = np.asarray(h.valid[:, 1])
    n_hits = valid.sum(axis=1)
    assert n_hits.max() <= 1  # at most one crossing fits in 29 ticks
    first, mean_held, sd_held = _plateau_expectations(W_NOISE)
    # closed form at tick 0: Phi((c - thr)/sqrt(sigma_r^2 + sigma_trig^2)) = Phi(-1.231) = 0.109
    p0 = ndtr((C_PLATEAU - THR) / np.hypot(SIG_R, SIG_TRIG))
    assert first[0] == pytest.approx(p0, rel=1e-10)
    p_any = first.sum()  # 0.563 over 29 ticks
    n = n_hits.size
    ticks = np.asarray(h.tick[:, 1, 0])
    # binomial errors sqrt(p (1 - p)/N): 0.0049 at tick 0, 0.0078 for any hit; 4 SE bounds
    frac0 = np.mean((n_hits == 1) & (ticks == 0))
    assert abs(frac0 - p0) < 4 * np.sqrt(p0 * (1 - p0) / n), (frac0, p0)
    assert abs(n_hits.mean() - p_any) < 4 * np.sqrt(p_any * (1 - p_any) / n), (n_hits.mean(), p_any)
    # whole first-trigger-tick distribution: chi-square over bins {0}, {1}, {2,3}, {4..7},
    # {8..15}, {16..28}, {no hit} (every bin expects > 100 counts); p-value > 1e-3 (fixed seed)
    edges = [0, 1, 2, 4, 8, 16, W_NOISE]
    bins = list(itertools.pairwise(edges))
    exp_p = [first[a:b].sum() for a, b in bins] + [1 - p_any]
    obs = [np.sum((n_hits == 1) & (ticks >= a) & (ticks < b)) for a, b in bins]
    obs.append(np.sum(n_hits == 0))
    exp_n = np.array(exp_p) * n
    assert exp_n.min() > 100
    chi2 = float(((np.array(obs) - exp_n) ** 2 / exp_n).sum())
    assert stats.chi2.sf(chi2, len(obs) - 1) > 1e-3, (obs, exp_n.round(1))
    # mean held charge of the hits that fired (4075 e): biased upward by the selection on r;
    # sd given a hit 818 e (quadrature), SE = 818/sqrt(2250) = 17 e; 4 SE bound
    q = np.asarray(adc_to_charge(h.adc[:, 1, 0].astype(jnp.float32), el16), np.float64)[n_hits == 1]
    assert abs(q.mean() - mean_held) < 4 * sd_held / np.sqrt(q.size), (q.mean(), mean_held)
    assert abs(q.std(ddof=1) - sd_held) < 4 * sd_held / np.sqrt(2 * (q.size - 1))
    assert mean_held > C_PLATEAU + 300.0  # the selection effect the check is sensitive to


def test_same_key_same_hits():
    Q = jnp.asarray(np.stack([cumulative(W, d) for d, _ in CASES.values()]))
    a = sim(jax.random.key(7), Q, EL, True)
    b = sim(jax.random.key(7), Q, EL, True)
    c = sim(jax.random.key(8), Q, EL, True)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a.adc), np.asarray(c.adc))
