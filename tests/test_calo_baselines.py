"""Bayesian talk-004 baselines: the per-layer posterior recovers the weights of a linear toy, NUTS
agrees with the Laplace approximation, and absolute residuals break the low-energy response."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lartpc_bayes.calo.baselines import (
    CalibrationFit,
    fit_laplace,
    fit_nuts,
    resolution_sigma,
    width_parameters,
)
from lartpc_bayes.calo.card import load_card
from lartpc_bayes.calo.generator import simulate

CARD = load_card()
# Linear toy: realistic layer energies from the generator, a smooth weight pattern with a rise in
# the back layers (like leakage compensation), an offset, and the resolution-shaped likelihood.
W_TRUE = 1.0 + 0.2 * np.sin(np.arange(50) / 4.0) + np.where(np.arange(50) >= 40, 0.6, 0.0)
BETA_TRUE, A_TRUE, B_TRUE, C_TRUE = 0.3, 0.15, 0.08, 0.02


def _linear_toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    layers = simulate(CARD, n, seed=seed).layers.astype(np.float64)
    mu = layers @ W_TRUE + BETA_TRUE
    rng = np.random.default_rng(seed + 1000)
    y = mu + np.asarray(resolution_sigma(mu, A_TRUE, B_TRUE, C_TRUE)) * rng.standard_normal(n)
    return layers, y


@pytest.fixture(scope="module")
def toy() -> tuple[np.ndarray, np.ndarray]:
    return _linear_toy(20000, seed=101)


@pytest.fixture(scope="module")
def laplace_fit(toy: tuple[np.ndarray, np.ndarray]) -> CalibrationFit:
    return fit_laplace("perlayer", *toy, CARD.calibration, draws=20000, seed=1)


def test_laplace_posterior_recovers_linear_toy(laplace_fit: CalibrationFit) -> None:
    # With 2e4 events the N(1, 1) weight prior is negligible and the posterior of (w, beta) is
    # Gaussian to good approximation (Bernstein-von Mises), so the Mahalanobis distance of the truth
    # is chi^2 with 51 dof; its 99.9 % quantile (86.7) bounds it. The covariance is estimated from
    # 2e4 draws: its inverse is biased by (S-1)/(S-p-2) = 1.003, negligible.
    theta = np.concatenate([laplace_fit.samples["w"], laplace_fit.samples["beta"][:, None]], axis=1)
    truth = np.append(W_TRUE, BETA_TRUE)
    d = theta.mean(axis=0) - truth
    d2 = float(d @ np.linalg.solve(np.cov(theta, rowvar=False), d))
    assert d2 < stats.chi2.ppf(0.999, 51), d2
    # and the resolution terms within 4 posterior sd of the values that generated the data
    for name, true in (("a", A_TRUE), ("b", B_TRUE), ("c", C_TRUE)):
        mean, sd = width_parameters(laplace_fit)[name]
        assert abs(mean - true) < 4 * sd, (name, mean, sd)


def test_nuts_recovers_weights_and_agrees_with_laplace() -> None:
    x, y = _linear_toy(5000, seed=202)
    nuts = fit_nuts("perlayer", x, y, CARD.calibration, warmup=150, samples=250, chains=2, seed=3)
    lap = fit_laplace("perlayer", x, y, CARD.calibration, draws=4000, seed=3)
    d = nuts.diagnostics
    assert d["divergences"] == 0 and d["r_hat_max"] < 1.05
    mean, sd = nuts.mean(), nuts.std()
    # Each weight within 4.5 posterior sd of the truth: for 51 near-Gaussian z-scores the chance of
    # any |z| > 4.5 is below 51 * 6.8e-6 = 3.5e-4.
    z = (mean["w"] - W_TRUE) / sd["w"]
    assert np.max(np.abs(z)) < 4.5, z
    # NUTS vs Laplace: means differ by < 0.35 sd (Monte Carlo error of a mean with ESS >= 200 is
    # <= 0.07 sd, times 5) and sds agree within 25 % (sd of an sd estimate with ESS 200 is 5 %).
    lm, ls = lap.mean(), lap.std()
    assert np.max(np.abs(mean["w"] - lm["w"]) / sd["w"]) < 0.35
    np.testing.assert_allclose(sd["w"], ls["w"], rtol=0.25)


def test_predictive_width_and_round_trip(laplace_fit: CalibrationFit, toy: tuple) -> None:
    layers, y = toy
    mu, sigma = laplace_fit.predict(layers[:500])
    m = laplace_fit.mean()
    np.testing.assert_allclose(mu, layers[:500] @ m["w"] + m["beta"], rtol=1e-10)
    lik = np.sqrt(
        np.mean(laplace_fit.samples["a"] ** 2) * np.maximum(mu, 0)
        + np.mean(laplace_fit.samples["b"] ** 2)
        + np.mean(laplace_fit.samples["c"] ** 2) * mu**2
    )
    assert np.all(sigma >= lik)  # parameter uncertainty only adds
    again = CalibrationFit.from_tree(laplace_fit.to_tree())
    np.testing.assert_array_equal(again.predict(layers[:500])[0], mu)
    assert again.name == "perlayer_resolution_laplace"
    pit = laplace_fit.pit(layers, y)
    assert 0.6 < np.mean(np.abs(pit - 0.5) < 0.3413) < 0.76


def test_robust_likelihood_resists_leakage_outliers(toy: tuple[np.ndarray, np.ndarray]) -> None:
    # 0.3 % of the toy events get a true energy 1.5-5x their linear prediction, like photons that
    # convert deep in the stack and leak most of their energy. The robust likelihood keeps the
    # truth inside the chi^2(51) 99.9 % bound of the test above; the Gaussian one excludes it
    # (d^2 = 320 against the bound 88 with these seeds) although it widens its own posterior by
    # inflating the stochastic term (a = 0.20 instead of 0.15) to absorb the outliers.
    layers, y = toy
    rng = np.random.default_rng(7)
    out = rng.random(y.size) < 0.003
    mu_true = layers @ W_TRUE + BETA_TRUE
    y_out = np.where(out, mu_true * rng.uniform(1.5, 5.0, y.size), y)
    truth = np.append(W_TRUE, BETA_TRUE)
    bound = stats.chi2.ppf(0.999, 51)

    def mahalanobis(fit: CalibrationFit) -> float:
        theta = np.concatenate([fit.samples["w"], fit.samples["beta"][:, None]], axis=1)
        d = theta.mean(axis=0) - truth
        return float(d @ np.linalg.solve(np.cov(theta, rowvar=False), d))

    robust = fit_laplace("perlayer", layers, y_out, CARD.calibration, "robust", draws=20000)
    gauss = fit_laplace("perlayer", layers, y_out, CARD.calibration, "resolution", draws=20000)
    assert mahalanobis(robust) < bound
    assert mahalanobis(gauss) > bound
    assert width_parameters(gauss)["a"][0] > A_TRUE + 0.03
    frac, frac_sd = width_parameters(robust)["outlier_frac"]
    assert abs(frac - out.mean()) < 4 * frac_sd
    assert abs(width_parameters(robust)["a"][0] - A_TRUE) < 4 * width_parameters(robust)["a"][1]


def test_absolute_residuals_bias_low_energies() -> None:
    # alpha*sum + beta on the 1-500 GeV log-uniform spectrum. Absolute residuals let high-energy
    # events decide beta (about -0.5 GeV: invisible at 100 GeV, -30 % at 1-2 GeV). Relative
    # residuals keep the 1-2 GeV median response within 3 % (their O(sigma^2) bias is ~2 %).
    ev = simulate(CARD, 40000, seed=55)
    test = simulate(CARD, 40000, seed=56)
    absolute = fit_laplace("linear", ev.layers, ev.e_true, CARD.calibration, "absolute")
    relative = fit_laplace("linear", ev.layers, ev.e_true, CARD.calibration, "relative")
    low = (test.e_true >= 1.0) & (test.e_true < 2.0)
    high = test.e_true >= 100.0
    r_abs = absolute.predict(test.layers)[0] / test.e_true
    r_rel = relative.predict(test.layers)[0] / test.e_true
    assert absolute.mean()["beta"] < -0.3
    assert np.median(r_abs[low]) < 0.85
    assert abs(np.median(r_rel[low]) - 1.0) < 0.03
    assert abs(np.median(r_abs[high]) - 1.0) < 0.02  # both are fine at high energy
    assert abs(np.median(r_rel[high]) - 1.0) < 0.02
