"""Toy ECAL generator: GFlash parameters, reproducibility, and sample statistics against the
analytic expectations (quadrature over the profile fluctuations, exact sampling/noise/gain algebra).

Tolerances: a sample mean of n events is compared with its expectation within 5 standard errors
(sd/sqrt(n), sd from the sample); a sample variance s^2 within 5 of its standard errors
sqrt((m4 - s^4)/n), m4 the sample fourth central moment (large-n variance of s^2). Five sigma keeps
the chance of a false failure below 1e-6 per comparison while catching a wrong term: e.g. dropping
the noise b = 0.05 GeV changes the variance at 2 GeV by 0.0025 GeV^2 = 14 standard errors.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from lartpc_bayes.calo.card import load_card
from lartpc_bayes.calo.generator import (
    BLOCK_EVENTS,
    gflash_parameters,
    longitudinal_fractions,
    profile_moments,
    simulate,
    sum_moments,
)
from lartpc_bayes.calo.io import read_events, write_events

CARD = load_card()


def _close_mean(sample: np.ndarray, expected: float, n_sigma: float = 5.0) -> None:
    sample = np.asarray(sample, dtype=np.float64)
    se = sample.std(ddof=1) / math.sqrt(sample.size)
    assert abs(sample.mean() - expected) < n_sigma * se, (sample.mean(), expected, se)


def _close_variance(sample: np.ndarray, expected: float, n_sigma: float = 5.0) -> None:
    x = np.asarray(sample, dtype=np.float64)
    d = x - x.mean()
    s2, m4 = np.mean(d**2), np.mean(d**4)
    se = math.sqrt((m4 - s2**2) / x.size)
    assert abs(x.var(ddof=1) - expected) < n_sigma * se, (x.var(ddof=1), expected, se)


def test_gflash_means_by_hand() -> None:
    # E = 10 GeV in W: y = 10/0.00797 = 1254.705, ln y = 7.134656;
    # T = ln y - 0.812 = 6.322656 X0; alpha = 0.81 + (0.458 + 2.26/74) ln y = 4.295569.
    t, a = gflash_parameters(np.array([10.0]), np.zeros(1), np.zeros(1), CARD.shower, 74.0, 0.00797)
    assert t[0] == pytest.approx(6.322656, rel=1e-6)
    assert a[0] == pytest.approx(4.295569, rel=1e-6)


def test_gflash_fluctuations_and_correlation() -> None:
    # sigma(ln T) = 1/(-1.4 + 1.26 ln y) = 0.131758, sigma(ln a) = 1/(-0.58 + 0.86 ln y) = 0.179992,
    # rho = 0.705 - 0.023 ln y = 0.540903 at 10 GeV. With n = 2e5 the sample sd has relative error
    # 1/sqrt(2n) = 0.16 % and the sample correlation an sd of (1 - rho^2)/sqrt(n) = 0.0016: 5 sigma
    # tolerances 0.8 % and 0.008.
    rng = np.random.default_rng(11)
    n = 200_000
    z1, z2 = rng.standard_normal((2, n))
    t, a = gflash_parameters(np.full(n, 10.0), z1, z2, CARD.shower, 74.0, 0.00797)
    assert np.std(np.log(t)) == pytest.approx(0.131758, rel=0.008)
    assert np.std(np.log(a)) == pytest.approx(0.179992, rel=0.008)
    assert np.corrcoef(np.log(t), np.log(a))[0, 1] == pytest.approx(0.540903, abs=0.008)


def test_gflash_clamps_at_low_energy() -> None:
    # 5 MeV is below the critical energy (ln y < 0): the log arguments and widths are clamped and
    # T >= 1, alpha >= 1.1 hold for any fluctuation.
    rng = np.random.default_rng(2)
    z1, z2 = 3.0 * rng.standard_normal((2, 1000))
    t, a = gflash_parameters(np.full(1000, 0.005), z1, z2, CARD.shower, 74.0, 0.00797)
    assert np.all(np.isfinite(t)) and np.all(t >= 1.0) and np.all(a >= 1.1)


def test_fractions_sum_to_one() -> None:
    rng = np.random.default_rng(3)
    n = 500
    frac, dead, leak = longitudinal_fractions(
        rng.exponential(1.3, n), rng.uniform(1, 12, n), rng.uniform(1.1, 7, n), CARD.geometry
    )
    assert frac.shape == (n, 50) and np.all(frac >= 0)
    np.testing.assert_allclose(frac.sum(axis=1) + dead + leak, 1.0, atol=1e-12)


def test_seed_reproduces_data_independent_of_threads() -> None:
    n = BLOCK_EVENTS + 1000  # two blocks
    a = simulate(CARD, n, seed=5, workers=1)
    b = simulate(CARD, n, seed=5, workers=2)
    np.testing.assert_array_equal(a.layers, b.layers)
    np.testing.assert_array_equal(a.e_true, b.e_true)
    prefix = simulate(CARD, 3000, seed=5)
    np.testing.assert_array_equal(prefix.layers, a.layers[:3000])
    other = simulate(CARD, 3000, seed=6)
    assert not np.array_equal(other.e_true, prefix.e_true)
    assert a.layers.dtype == np.float32 and a.layers.shape == (n, 50)


def test_spectra() -> None:
    # log-uniform on [1, 500]: ln E uniform, mean (ln 500)/2 = 3.107304, sd ln(500)/sqrt(12).
    ev = simulate(CARD, 20000, seed=8)
    assert ev.e_true.min() >= 1.0 and ev.e_true.max() <= 500.0
    _close_mean(np.log(ev.e_true), 0.5 * math.log(500.0))
    flat = simulate(CARD.replace(beam={"spectrum": "uniform"}), 20000, seed=8)
    _close_mean(flat.e_true, 250.5)


@pytest.mark.parametrize("energy", [2.0, 20.0, 200.0])
def test_mean_fractions_and_sum_moments_against_quadrature(energy: float) -> None:
    n = 20000
    ev = simulate(CARD, n, seed=21, energies=energy)
    mom = profile_moments(energy, CARD)
    _close_mean(ev.e_active / energy, mom["active_frac"])
    _close_mean(ev.leak_frac, mom["leak_frac"])
    _close_mean(ev.dead_frac, mom["dead_frac"])
    mean, var = sum_moments(energy, CARD, moments=mom)
    s = ev.layers.astype(np.float64).sum(axis=1)
    _close_mean(s, mean)
    _close_variance(s, var)


def test_resolution_terms_in_a_containing_detector() -> None:
    # Without dead material, 200 layers (90 X0) and no layer-gain spread, S = G U + noise with
    # U ~ Gamma(E (1 - leak)/a^2, a^2), so
    #   Var(S) = (1 + c^2) a^2 E + c^2 E^2 + b^2,  E[S] = E
    # up to the leakage, which the quadrature puts at 5e-6 of E at 1 GeV (showers whose shape
    # parameter hits the alpha >= 1.1 clamp) and < 3e-9 above 4 GeV: the closed form then holds to
    # 4e-7 relative, far below the 5-standard-error tolerance (3.5 % of the variance).
    card = CARD.replace(
        geometry={"dead_material_x0": 0.0, "n_layers": 200},
        response={"layer_gain_spread": 0.0},
    )
    a, b, c = 0.17, 0.05, 0.01
    for energy in (1.0, 10.0, 100.0):
        s = simulate(card, 40000, seed=31, energies=energy).layers.astype(np.float64).sum(axis=1)
        _close_mean(s, energy)
        _close_variance(s, (1 + c**2) * a**2 * energy + (c * energy) ** 2 + b**2)
    # The stochastic term alone (b = c = 0): a^2 = Var(S)/E at E = 4 GeV. The relative error of a
    # from s^2 is ~ sqrt(2/n)/2 = 0.35 % for n = 40000 (Gamma kurtosis is negligible at shape
    # E/a^2 = 138), so "a near 0.17" is checked to 2 %.
    clean = card.replace(response={"noise_b": 0.0, "event_gain_c": 0.0})
    s = simulate(clean, 40000, seed=32, energies=4.0).layers.astype(np.float64).sum(axis=1)
    assert math.sqrt(s.var(ddof=1) / 4.0) == pytest.approx(0.17, rel=0.02)


def test_pi0_two_photon_showers() -> None:
    # A 100 GeV pi0 is two softer photons: each shower is shorter, so less energy leaks than for a
    # single 100 GeV photon (checked at > 5 standard errors of the difference).
    n = 20000
    pi0 = simulate(CARD.replace(beam={"particle": "pi0"}), n, seed=41, energies=100.0)
    gam = simulate(CARD, n, seed=41, energies=100.0)
    assert np.all(pi0.particle == 111) and np.all(gam.particle == 22)
    np.testing.assert_allclose(pi0.e_active / 100.0 + pi0.dead_frac + pi0.leak_frac, 1.0, atol=1e-5)
    diff = gam.leak_frac.mean() - pi0.leak_frac.mean()
    se = math.hypot(gam.leak_frac.std(), pi0.leak_frac.std()) / math.sqrt(n)
    assert diff > 5 * se


def test_electrons_start_at_the_front() -> None:
    ev = simulate(CARD.replace(beam={"particle": "electron"}), 2000, seed=4, energies=50.0)
    assert np.all(ev.t0 == 0.0)
    # electrons shower in the 1 X0 of dead material from t = 0: more dead-material loss than photons
    ph = simulate(CARD, 2000, seed=4, energies=50.0)
    assert ev.dead_frac.mean() > 3 * ph.dead_frac.mean()


def test_hdf5_round_trip_and_atomic_write(tmp_path: Path) -> None:
    ev = simulate(CARD, 1000, seed=9)
    path = write_events(tmp_path / "ev.h5", ev, CARD, seed=9)
    back, card, attrs = read_events(path)
    assert dataclasses.replace(CARD, source=card.source) == card  # same card, new source name
    assert attrs["seed"] == 9 and attrs["n_events"] == 1000
    np.testing.assert_array_equal(back.layers, ev.layers)
    np.testing.assert_array_equal(back.layer_gains, ev.layer_gains)

    class Boom(RuntimeError):
        pass

    from lartpc_bayes.calo.io import atomic_h5

    with pytest.raises(Boom), atomic_h5(tmp_path / "never.h5") as f:
        f.create_dataset("x", data=np.arange(3))
        raise Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.h5"]
