"""Metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf

from lartpc_bayes.calo import metrics as M

# Quantile levels: Phi(-1) = 0.158655..., Phi(1) = 0.841345... (NumPy "linear" interpolation:
# q(p) of n sorted values sits at position p (n - 1)).


def test_interquantile_resolution_by_hand() -> None:
    # r = 1..5: positions 0.158655*4 = 0.634621 -> 1.634621 and 0.841345*4 = 3.365379 -> 4.365379,
    # median 3, so sigma_rel = (4.365379 - 1.634621) / (2 * 3) = 0.455126.
    med, res = M.interquantile_resolution(np.array([5.0, 1.0, 4.0, 2.0, 3.0]))
    assert med == pytest.approx(3.0)
    assert res == pytest.approx((4.365379 - 1.634621) / 6.0, abs=1e-6)


def test_width68_by_hand() -> None:
    # t = (-2, 0, 2): positions 0.317311 -> -2 + 2*0.317311 = -1.365379 and 1.682689 -> 1.365379.
    assert M.width68(np.array([-2.0, 0.0, 2.0])) == pytest.approx(1.365379, abs=1e-6)


def test_coverage_and_pit_by_hand() -> None:
    pit = np.array([0.1, 0.5, 0.9, 0.2])
    # |u - 0.5| = 0.4, 0, 0.4, 0.3: inside 0.68/2 = 0.34 -> 2 of 4; inside 0.95/2 -> all 4.
    assert M.coverage(pit, 0.68) == pytest.approx(0.5)
    assert M.coverage(pit, 0.95) == pytest.approx(1.0)
    dens, edges = M.pit_histogram(pit, n_bins=2)
    # bins [0, .5): 0.1, 0.2 -> 2 ; [.5, 1]: 0.5, 0.9 -> 2 ; density = count * 2 / 4 = 1.
    np.testing.assert_allclose(dens, [1.0, 1.0])
    np.testing.assert_allclose(edges, [0.0, 0.5, 1.0])
    chi2, p = M.pit_chi2(pit, n_bins=2)
    assert chi2 == pytest.approx(0.0) and p == pytest.approx(1.0)
    # counts (3, 1) for 2 bins: chi2 = (1^2 + 1^2)/2 = 1.
    assert M.pit_chi2(np.array([0.1, 0.2, 0.3, 0.9]), n_bins=2)[0] == pytest.approx(1.0)


def test_calibration_error_by_hand() -> None:
    # PIT at the 4 points 1/8, 3/8, 5/8, 7/8: coverage(p) is the fraction with |u - 1/2| < p/2,
    # i.e. 0 for p <= 0.25, 1/2 for 0.25 < p <= 0.75 and 1 above. Levels 0.05..0.95 (step 0.05):
    # |cov - p| = p for p in {.05,.10,.15,.20,.25} (sum 0.75), |0.5 - p| for .30...75 (sum 1.25),
    # 1 - p for .80,.85,.90,.95 (sum 0.5); mean = (0.75 + 1.25 + 0.5) / 19 = 0.131579.
    pit = np.array([1, 3, 5, 7]) / 8.0
    assert M.calibration_error(pit) == pytest.approx(2.5 / 19.0, abs=1e-9)


def test_binned_metrics_two_bins_by_hand() -> None:
    edges = np.array([1.0, 10.0, 100.0])
    e_true = np.array([2.0, 2.0, 2.0, 50.0, 50.0])
    e_model = np.array([1.8, 2.0, 2.4, 50.0, 55.0])  # R = 0.9, 1.0, 1.2 | 1.0, 1.1
    pull = np.array([-1.0, 0.0, 1.0, 0.5, 0.5])
    pit = np.array([0.2, 0.5, 0.95, 0.6, 0.1])
    out = M.binned_metrics(e_true, e_model, edges, pull=pull, pit=pit)
    np.testing.assert_array_equal(out["count"], [3, 2])
    # bin 0: R sorted (0.9, 1.0, 1.2), q16 at 0.317311 -> 0.931731, q84 at 1.682689 -> 1.136538
    assert out["response"][0] == pytest.approx(1.0)
    assert out["resolution"][0] == pytest.approx((1.136538 - 0.931731) / 2.0, abs=1e-6)
    # bin 1: R (1.0, 1.1), median 1.05, q16 = 1.015866, q84 = 1.084134
    assert out["response"][1] == pytest.approx(1.05)
    assert out["linearity"][1] == pytest.approx(0.05)
    assert out["resolution"][1] == pytest.approx((1.084134 - 1.015866) / 2.1, abs=1e-6)
    assert out["pull_width"][0] == pytest.approx(0.682689, abs=1e-6)
    assert out["pull_width"][1] == pytest.approx(0.0)
    # coverage68: |u - .5| < 0.341345 -> bin 0: 0.2, 0.5 in, 0.95 out -> 2/3; bin 1: 0.6 in, 0.1 out
    np.testing.assert_allclose(out["coverage68"], [2 / 3, 0.5])
    # coverage95: |u - .5| < 0.475 -> bin 0: 0.3, 0, 0.45 all in; bin 1: 0.1, 0.4 in
    np.testing.assert_allclose(out["coverage95"], [1.0, 1.0])


def test_empty_bin_is_nan() -> None:
    out = M.binned_metrics(np.array([2.0]), np.array([2.0]), np.array([1.0, 10.0, 100.0]))
    assert out["count"].tolist() == [1, 0]
    assert np.isnan(out["resolution"][1]) and out["response"][0] == pytest.approx(1.0)


def test_mixture_half_width() -> None:
    # one width: the 68.27 % half-width of N(0, s) is s.
    assert M.mixture_half_width(np.array([0.1, 0.1])) == pytest.approx(0.1, rel=1e-9)
    s = np.array([0.05, 0.2])
    h = M.mixture_half_width(s)
    assert np.mean(erf(h / (math.sqrt(2) * s))) == pytest.approx(M.P68, abs=1e-12)
    assert 0.05 < h < 0.2


def test_true_resolution_in_bins_matches_formula_for_one_energy() -> None:
    edges = np.array([1.0, 3.0, 30.0])
    e = np.array([2.0, 2.0, 20.0])
    out = M.true_resolution_in_bins(e, edges, lambda x: 0.17 / np.sqrt(x))
    np.testing.assert_allclose(out, [0.17 / math.sqrt(2.0), 0.17 / math.sqrt(20.0)], rtol=1e-9)


def test_fit_resolution_curve_recovers_terms() -> None:
    e = np.geomspace(1.0, 500.0, 15)
    sigma = np.sqrt(0.17**2 / e + 0.05**2 / e**2 + 0.01**2)
    fit = M.fit_resolution_curve(e, sigma, np.full_like(e, 1e-4))
    assert fit["a"] == pytest.approx(0.17, rel=1e-4)
    assert fit["b"] == pytest.approx(0.05, rel=1e-3)
    assert fit["c"] == pytest.approx(0.01, rel=1e-3)


def test_bootstrap_errors_scale_like_quantile_errors() -> None:
    # For a Gaussian sample the sd of the median is sqrt(pi/2) sigma/sqrt(n) (asymptotic); with
    # n = 4000, sigma = 0.1 that is 0.00198. 100 bootstrap resamples estimate an sd with ~7 %
    # relative error (1/sqrt(2*99)), so +-25 % is > 3 sigma.
    rng = np.random.default_rng(5)
    e_true = np.full(4000, 10.0)
    e_model = e_true * (1.0 + 0.1 * rng.standard_normal(4000))
    out = M.binned_metrics(e_true, e_model, np.array([1.0, 100.0]), n_boot=100, seed=1)
    assert out["response_err"][0] == pytest.approx(math.sqrt(math.pi / 2) * 0.1 / 63.246, rel=0.25)
