"""Calibration metrics binned in true energy: response, linearity, resolution, pulls, PIT, coverage.

Definitions (talk 003, ATLAS topo-cluster calibration), for ``R = E_model / E_true`` in a bin:

* response ``median(R)`` and linearity ``Delta_E = median(R) - 1``;
* relative resolution ``sigma_rel = (Q(84.13 %) - Q(15.87 %)) / (2 median(R))``, the "68 %
  interquantile over twice the median", robust against tails (quantiles: NumPy's default linear
  interpolation between order statistics);
* pull width: half the 68.27 % interquantile range of the pulls, which is 1 for a unit Gaussian;
* PIT ``u = F_pred(y_true)``, uniform on (0, 1) for calibrated predictive distributions; coverage of
  the central interval of probability ``p`` is ``mean(|u - 1/2| < p/2)``.

The generator's true resolution in a bin is not the formula at the bin centre: a bin mixes energies.
:func:`true_resolution_in_bins` returns the half-width ``h`` of the 68.27 % central interval of the
mixture of ``N(0, sigma(E_j))`` over the bin's events, i.e. the ``sigma_rel`` an ideal calibration
(Gaussian, unbiased, ``sigma/E = a/sqrt(E) (+) b/E (+) c``) would measure on the same events.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats
from scipy.special import erf

#: Gaussian quantile levels of +-1 sigma and the central probability between them (68.27 %).
Q_LO = 0.5 * (1.0 - math.erf(1.0 / math.sqrt(2.0)))
Q_HI = 1.0 - Q_LO
P68 = Q_HI - Q_LO
P95 = 0.95


def energy_bin_edges(e_min: float, e_max: float, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` log-spaced bin edges [GeV] from ``e_min`` to ``e_max``."""
    return np.geomspace(e_min, e_max, n_bins + 1)


def interquantile_resolution(r: np.ndarray) -> tuple[float, float]:
    """``(median(r), (Q_84 - Q_16) / (2 median(r)))`` of a response sample."""
    q_lo, med, q_hi = np.quantile(np.asarray(r, dtype=np.float64), [Q_LO, 0.5, Q_HI])
    return float(med), float((q_hi - q_lo) / (2.0 * med))


def width68(t: np.ndarray) -> float:
    """Half the central 68.27 % interquantile range, ``(Q_84 - Q_16)/2`` (sd for a Gaussian)."""
    q_lo, q_hi = np.quantile(np.asarray(t, dtype=np.float64), [Q_LO, Q_HI])
    return float(0.5 * (q_hi - q_lo))


def coverage(pit: np.ndarray, p: float) -> float:
    """Fraction of truths inside the central predictive interval of probability ``p``."""
    return float(np.mean(np.abs(np.asarray(pit) - 0.5) < 0.5 * p))


def pit_histogram(pit: np.ndarray, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Density histogram of the PIT on ``[0, 1]`` (flat at 1 when calibrated) and its edges."""
    counts, edges = np.histogram(pit, bins=n_bins, range=(0.0, 1.0))
    return counts * n_bins / max(1, counts.sum()), edges


def pit_chi2(pit: np.ndarray, n_bins: int = 20) -> tuple[float, float]:
    """Pearson chi^2 of the PIT histogram against uniform and its p-value (``n_bins - 1`` dof)."""
    counts, _ = np.histogram(pit, bins=n_bins, range=(0.0, 1.0))
    expected = counts.sum() / n_bins
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    return chi2, float(stats.chi2.sf(chi2, n_bins - 1))


def calibration_error(pit: np.ndarray, levels: np.ndarray | None = None) -> float:
    """Mean ``|coverage(p) - p|`` over central-interval levels ``p`` (default 0.05, ..., 0.95)."""
    levels = np.linspace(0.05, 0.95, 19) if levels is None else np.asarray(levels)
    return float(np.mean([abs(coverage(pit, p) - p) for p in levels]))


def mixture_half_width(sigmas: np.ndarray, p: float = P68) -> float:
    """Half-width ``h`` with ``mean_j P(|N(0, sigma_j)| < h) = p``, i.e. ``mean_j erf(h/(sqrt2
    sigma_j)) = p`` (monotone in ``h``; solved by Brent's method)."""
    s = np.asarray(sigmas, dtype=np.float64)

    def f(h: float) -> float:
        return float(np.mean(erf(h / (math.sqrt(2.0) * s)))) - p

    return float(optimize.brentq(f, 0.0, 10.0 * s.max(), xtol=1e-12 * s.max()))


def true_resolution_in_bins(
    e_true: np.ndarray, edges: np.ndarray, resolution: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """68 % half-width of ``R`` per bin for an ideal calibration, ``sigma/E = resolution(E)``."""
    idx = np.digitize(e_true, edges) - 1
    out = np.full(len(edges) - 1, np.nan)
    for b in range(len(edges) - 1):
        sel = idx == b
        if np.any(sel):
            out[b] = mixture_half_width(resolution(e_true[sel]))
    return out


def _bootstrap_sd(
    values: np.ndarray,
    stat: Callable[[np.ndarray], np.ndarray],
    n_boot: int,
    rng: np.random.Generator,
    max_events: int = 20000,
) -> np.ndarray:
    """Bootstrap standard deviation of ``stat`` (a function of a (B, n) array along axis 1).

    Bins larger than ``max_events`` are bootstrapped on a random subsample and the sd is scaled by
    ``sqrt(n_sub / n)`` (the statistics are quantiles, whose error falls as ``1/sqrt(n)``).
    """
    n = values.shape[0]
    sub = values if n <= max_events else rng.choice(values, max_events, replace=False)
    draws = sub[rng.integers(0, sub.shape[0], size=(n_boot, sub.shape[0]))]
    return np.std(stat(draws), axis=0, ddof=1) * math.sqrt(sub.shape[0] / n)


def binned_metrics(
    e_true: np.ndarray,
    e_model: np.ndarray,
    edges: np.ndarray,
    *,
    pull: np.ndarray | None = None,
    pit: np.ndarray | None = None,
    n_boot: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-bin metrics of ``R = e_model / e_true`` in bins of ``e_true`` (see module docstring).

    Returns arrays over bins: ``count``, ``e_median`` [GeV], ``response``, ``linearity``,
    ``resolution`` and, with ``n_boot > 0``, their bootstrap errors ``response_err``,
    ``resolution_err``; with ``pull``: ``pull_median``, ``pull_width``; with ``pit``:
    ``coverage68``, ``coverage95``. Empty bins are NaN.
    """
    e_true = np.asarray(e_true, dtype=np.float64)
    r = np.asarray(e_model, dtype=np.float64) / e_true
    idx = np.digitize(e_true, edges) - 1
    n_bins = len(edges) - 1
    keys = ["e_median", "response", "linearity", "resolution"]
    if n_boot:
        keys += ["response_err", "resolution_err"]
    if pull is not None:
        keys += ["pull_median", "pull_width"]
    if pit is not None:
        keys += ["coverage68", "coverage95"]
    out = {k: np.full(n_bins, np.nan) for k in keys}
    out["count"] = np.zeros(n_bins, dtype=np.int64)
    rng = np.random.default_rng(seed)

    def med(d: np.ndarray) -> np.ndarray:
        return np.median(d, axis=1)

    def res(d: np.ndarray) -> np.ndarray:
        q = np.quantile(d, [Q_LO, 0.5, Q_HI], axis=1)
        return (q[2] - q[0]) / (2.0 * q[1])

    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        out["count"][b] = n
        if n == 0:
            continue
        out["e_median"][b] = np.median(e_true[sel])
        out["response"][b], out["resolution"][b] = interquantile_resolution(r[sel])
        out["linearity"][b] = out["response"][b] - 1.0
        if n_boot and n > 1:
            out["response_err"][b] = _bootstrap_sd(r[sel], med, n_boot, rng)
            out["resolution_err"][b] = _bootstrap_sd(r[sel], res, n_boot, rng)
        if pull is not None:
            out["pull_median"][b] = np.median(pull[sel])
            out["pull_width"][b] = width68(pull[sel])
        if pit is not None:
            out["coverage68"][b] = coverage(pit[sel], P68)
            out["coverage95"][b] = coverage(pit[sel], P95)
    return out


def fit_resolution_curve(
    energy: np.ndarray, sigma_rel: np.ndarray, sigma_err: np.ndarray | None = None
) -> dict[str, float]:
    """Least-squares fit of ``sigma/E = sqrt(a^2/E + b^2/E^2 + c^2)`` to binned resolutions.

    Returns ``a`` [GeV^1/2], ``b`` [GeV], ``c`` and their standard errors (``*_err``, from the
    covariance of :func:`scipy.optimize.curve_fit`, scaled by the fit's chi^2/dof when no errors are
    given). Non-finite bins are ignored; the parameters are constrained to be >= 0.
    """
    e = np.asarray(energy, dtype=np.float64)
    s = np.asarray(sigma_rel, dtype=np.float64)
    ok = np.isfinite(e) & np.isfinite(s)
    err = None if sigma_err is None else np.asarray(sigma_err, dtype=np.float64)
    if err is not None:
        ok &= np.isfinite(err) & (err > 0)

    def model(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return np.sqrt(a**2 / x + b**2 / x**2 + c**2)

    popt, pcov = optimize.curve_fit(
        model,
        e[ok],
        s[ok],
        p0=(0.15, 0.05, 0.01),
        sigma=None if err is None else err[ok],
        absolute_sigma=err is not None,
        bounds=(0.0, np.inf),
    )
    perr = np.sqrt(np.diag(pcov))
    return {
        "a": float(popt[0]),
        "b": float(popt[1]),
        "c": float(popt[2]),
        "a_err": float(perr[0]),
        "b_err": float(perr[1]),
        "c_err": float(perr[2]),
    }


__all__ = [
    "P68",
    "P95",
    "Q_HI",
    "Q_LO",
    "binned_metrics",
    "calibration_error",
    "coverage",
    "energy_bin_edges",
    "fit_resolution_curve",
    "interquantile_resolution",
    "mixture_half_width",
    "pit_chi2",
    "pit_histogram",
    "true_resolution_in_bins",
    "width68",
]
