"""Gaussian-mixture network: mixture algebra (mode, quantiles, moments), the learning-rate schedule,
and calibration (PIT, coverage, pulls) of a trained network on held-out events."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import logsumexp, ndtr

from lartpc_bayes.calo import metrics as M
from lartpc_bayes.calo.card import load_card
from lartpc_bayes.calo.generator import simulate
from lartpc_bayes.calo.mdn import MdnModel, lr_schedule, train_mdn
from lartpc_bayes.calo.mixture import (
    mixture_cdf,
    mixture_log_prob,
    mixture_mode,
    mixture_moments,
    mixture_quantile,
    mixture_sigma68,
)

CARD = load_card()


def _np_logpdf(y: np.ndarray, w: np.ndarray, mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """float64 reference: log sum_k w_k N(y; mu_k, s_k) for y (N, G) and mixtures (N, K)."""
    z = (y[..., None] - mu[:, None, :]) / s[:, None, :]
    comp = np.log(w)[:, None, :] - 0.5 * z**2 - np.log(s[:, None, :]) - 0.5 * math.log(2 * math.pi)
    return logsumexp(comp, axis=-1)


def _random_mixtures(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(3), n)
    mu = rng.normal(0.0, 0.05, (n, 3))
    s = np.exp(rng.uniform(np.log(0.002), np.log(0.08), (n, 3)))
    return w, mu, s


def test_mode_matches_dense_grid() -> None:
    # Brute force: 20001 grid points over [min mu - 5 s, max mu + 5 s]; the fixed-point/Newton mode
    # must have at least the grid's best density (float32 mode, float64 check, 1e-5 relative
    # slack) and sit within two grid steps of the grid argmax.
    w, mu, s = _random_mixtures(300, seed=1)
    mode = np.asarray(
        mixture_mode(jnp.log(jnp.asarray(w)), jnp.asarray(mu), jnp.asarray(s)), np.float64
    )
    lo = (mu - 5 * s).min(axis=1, keepdims=True)
    hi = (mu + 5 * s).max(axis=1, keepdims=True)
    grid = lo + (hi - lo) * np.linspace(0.0, 1.0, 20001)[None, :]
    lp_grid = _np_logpdf(grid, w, mu, s)
    best = grid[np.arange(300), np.argmax(lp_grid, axis=1)]
    lp_mode = _np_logpdf(mode[:, None], w, mu, s)[:, 0]
    assert np.all(lp_mode >= lp_grid.max(axis=1) - 1e-5)
    step = (hi - lo)[:, 0] / 20000
    # Only where the best and the runner-up mode are not tied within the grid resolution.
    assert np.median(np.abs(mode - best) / step) < 1.0


def test_mode_finds_narrow_peak_a_coarse_grid_misses() -> None:
    # 30 % weight in a 0.001-wide peak at 0 beside a 0.3-wide component at 0.5: peak densities
    # 0.3/(0.001 sqrt(2 pi)) = 120 and 0.7/(0.3 sqrt(2 pi)) = 0.93, so the mode is at ~0.
    # A 301-point grid over [mu_min - 3 s, mu_max + 3 s] has a step of 0.0077 = 7.7 peak widths.
    log_w = jnp.log(jnp.array([[0.3, 0.7, 1e-6]]))
    mu, s = jnp.array([[0.0, 0.5, 0.2]]), jnp.array([[0.001, 0.3, 0.3]])
    mode = float(mixture_mode(log_w, mu, s)[0])
    assert abs(mode) < 1e-5
    grid = np.linspace(0.0 - 0.9, 0.5 + 0.9, 301)
    lp = _np_logpdf(grid[None, :], np.exp(np.asarray(log_w)), np.asarray(mu), np.asarray(s))
    assert abs(grid[np.argmax(lp)]) > 1e-3  # the grid answer is off by more than 1 peak width


def test_quantiles_cdf_and_moments() -> None:
    w, mu, s = _random_mixtures(50, seed=2)
    log_w = jnp.log(jnp.asarray(w))
    for p in (M.Q_LO, 0.5, M.Q_HI):
        q = np.asarray(mixture_quantile(log_w, jnp.asarray(mu), jnp.asarray(s), p), np.float64)
        for i in range(5):  # float64 root of the exact CDF
            ref = optimize.brentq(
                lambda y, i=i, p=p: float(np.sum(w[i] * ndtr((y - mu[i]) / s[i]))) - p, -2.0, 2.0
            )
            assert q[i] == pytest.approx(ref, abs=2e-6)
        cdf = np.asarray(mixture_cdf(log_w, jnp.asarray(mu), jnp.asarray(s), jnp.asarray(q)))
        np.testing.assert_allclose(cdf, p, atol=2e-5)
    # hand example: equal weights at -1 and +1 with unit widths: mean 0, variance 1 + 1 = 2
    mean, var = mixture_moments(
        jnp.log(jnp.array([[0.5, 0.5]])), jnp.array([[-1.0, 1.0]]), jnp.ones((1, 2))
    )
    assert float(mean[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(var[0]) == pytest.approx(2.0, rel=1e-6)
    # one component: sigma68 is sigma, log p is the Gaussian log density
    one = (jnp.zeros((1, 1)), jnp.array([[0.1]]), jnp.array([[0.2]]))
    assert float(mixture_sigma68(*one)[0]) == pytest.approx(0.2, rel=1e-5)
    lp = mixture_log_prob(
        jnp.zeros((1, 1)), jnp.array([[0.1]]), jnp.array([[0.2]]), jnp.array([0.3])
    )
    assert float(lp[0]) == pytest.approx(stats.norm(0.1, 0.2).logpdf(0.3), rel=1e-6)


def test_step_decay_schedule() -> None:
    cfg = CARD.mdn  # lr 1e-4, milestones (25, 100), gamma 0.1
    sched = lr_schedule(cfg, steps_per_epoch=10)
    assert float(sched(0)) == pytest.approx(1e-4)
    assert float(sched(249)) == pytest.approx(1e-4)
    assert float(sched(251)) == pytest.approx(1e-5)
    assert float(sched(1001)) == pytest.approx(1e-6)


@pytest.fixture(scope="module")
def trained() -> tuple[MdnModel, dict[str, np.ndarray]]:
    # A quick network: 4e4 events (3.6e4 for training), Adam 2e-3 with one decay, best-validation
    # epoch kept. The talk's 1e-4 x 150 epochs is the production setting (docs/calorimeter.md).
    cfg = dataclasses.replace(
        CARD.mdn, learning_rate=2e-3, batch_size=512, epochs=12, lr_milestones=(8,)
    )
    train = simulate(CARD, 40000, seed=61)
    test = simulate(CARD, 20000, seed=62)
    net = train_mdn(train.layers, train.e_true, cfg)
    return net, {
        "layers": test.layers,
        "e_true": test.e_true,
        **net.predict(test.layers, test.e_true),
    }


def test_pit_uniform_on_held_out_events(trained: tuple) -> None:
    net, p = trained
    u = p["pit"]
    n = u.size
    # Kolmogorov: P(sqrt(n) D > 1.95) = 0.001 for exactly uniform u. The network is fitted on a
    # finite sample (12 quick epochs), so its PIT CDF may miss the diagonal by what the issue's
    # calibration target allows: 68 % coverage within 3 points is F(0.84) - F(0.16) within 0.03,
    # i.e. 0.015 of CDF at each end of the interval (the quick network measured D = 0.026 here).
    assert stats.kstest(u, "uniform").statistic < 1.95 / math.sqrt(n) + 0.015
    # Issue targets: 68 % coverage within 3 points (the statistical sd is sqrt(.68*.32/n) = 0.0033)
    assert abs(M.coverage(u, M.P68) - M.P68) < 0.03
    assert abs(M.coverage(u, 0.95) - 0.95) < 0.02
    # and pull width in [0.9, 1.1] with sigma = half the central 68 % predictive interval
    pulls = (p["y_mode"] - p["y_true"]) / p["sigma68"]
    assert 0.9 < M.width68(pulls) < 1.1
    # the energy prediction is the mode: E_model = E_EM / 10^mode
    np.testing.assert_allclose(p["e_model"], p["e_em"] / 10.0 ** p["y_mode"], rtol=1e-12)
    assert net.members == 1 and np.all(p["sigma_stat"] == 0.0)


def test_model_round_trip(trained: tuple) -> None:
    net, p = trained
    again = MdnModel.from_tree(net.to_tree())
    q = again.predict(p["layers"][:1000])
    np.testing.assert_allclose(q["y_mode"], p["y_mode"][:1000], rtol=0, atol=1e-7)
    assert again.info["best_epoch_max"] <= 12


def test_deep_ensemble_combines_members() -> None:
    cfg = dataclasses.replace(CARD.mdn, learning_rate=2e-3, batch_size=512, lr_milestones=(50,))
    ev = simulate(CARD, 6000, seed=71)
    ens = train_mdn(ev.layers, ev.e_true, cfg, members=2, epochs=2)
    assert ens.members == 2 and ens.history["val_nll"].shape == (2, 2)
    log_w, mu, _ = ens.mixture(ev.layers[:100])
    assert log_w.shape == (2, 100, 3) and mu.shape == (2, 100, 3)
    p = ens.predict(ev.layers[:100], ev.e_true[:100])
    assert np.all(p["sigma_stat"] > 0) and np.all(p["sigma68"] > 0)
    assert np.all((p["pit"] >= 0) & (p["pit"] <= 1))
