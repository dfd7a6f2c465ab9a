"""The one MAP + Laplace fitter: exact chunked Hessian, compile once per shape, same answer as the
campaign path and the ``run_laplace`` wrapper.

Problem: a 3 cm piece of one generated muon (Module 0, > 60 deg to the drift axis) with E and D_T
free, the other four fixed at the demo target; every noise term on; fixed seeds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lartpc_bayes.calibrate import DEMO_TARGET
from lartpc_bayes.detector import load_card
from lartpc_bayes.detector.physics import DetectorParams
from lartpc_bayes.forward.generator import SelectionCuts, generate
from lartpc_bayes.forward.simulate import simulate_hits
from lartpc_bayes.infer import LaplaceFitter, run_laplace
from lartpc_bayes.infer.laplace import _chunked_hessian
from lartpc_bayes.likelihood import hits_to_table
from lartpc_bayes.model import build_problem

CARD = load_card("module0")


@pytest.fixture(scope="module")
def problem_and_tables():
    seg = generate(CARD, "muons", 1, 11, cuts=SelectionCuts(min_angle_to_drift_deg=60))
    seg = seg.select(np.cumsum(seg.dx) <= 3.0)
    params = DetectorParams.from_dict(DEMO_TARGET)
    fixed = {p: DEMO_TARGET[p] for p in ("A_B", "k_B", "tau", "D_L")}
    hits = [simulate_hits(jax.random.key(s), CARD, seg, params)[0] for s in (1, 2)]
    problem = build_problem(CARD, seg, hits[0], latent_length_cm=5.0, fixed=fixed)
    tables = [hits_to_table(problem.plan, h, CARD.electronics.max_hits_per_pixel)[0] for h in hits]
    return problem, tables


@pytest.fixture(scope="module")
def fitter(problem_and_tables):
    """One compiled fitter for the module (its L-BFGS loop, gradient and Hessian compile once;
    every test below fits tables of the same shape with it)."""
    return LaplaceFitter(problem_and_tables[0])


def test_chunked_hessian_equals_jax_hessian():
    # a non-separable quartic with a data argument: the chunked columns must reproduce the full
    # forward-over-reverse Hessian for any chunk size (including one that does not divide dim)
    A = jnp.asarray(np.random.default_rng(0).normal(size=(7, 7)), jnp.float32)

    def U(x, t):
        y = A @ x + t
        return jnp.sum(y**4) + jnp.sum(jnp.sin(x) * x[::-1])

    x = jnp.linspace(-0.5, 0.7, 7, dtype=jnp.float32)
    ref = np.asarray(jax.hessian(U)(x, 0.3))
    for chunk in (1, 3, 7, 16):
        H = np.asarray(_chunked_hessian(U, chunk)(x, 0.3))
        np.testing.assert_allclose(H, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())


def test_fitter_compiles_once_per_shape(problem_and_tables, fitter):
    _, tables = problem_and_tables
    fits = [fitter.fit(tb, seed=0, num_draws=200) for tb in tables]
    assert all(f["ok"] for f in fits), [f.get("error") for f in fits]
    # two data sets, one compiled value-and-gradient (L-BFGS) and one compiled Hessian
    assert fitter._value_and_grad._cache_size() == 1  # the host L-BFGS calls it
    assert fitter._hessian._cache_size() == 1
    # different data give different optima (the table is an argument, not a baked constant)
    assert not np.allclose(fits[0]["x_map"], fits[1]["x_map"])
    for f in fits:
        assert f["newton_decrement"] < 0.05
        assert set(f["draws"]) >= {"E", "D_T", "dEdx"}


def test_run_laplace_is_the_fitter(problem_and_tables, fitter):
    problem, tables = problem_and_tables
    direct = fitter.fit(tables[0], seed=4, num_draws=500)
    wrapped = run_laplace(dataclasses.replace(problem, table=tables[0]), seed=4, num_samples=500,
                          fitter=fitter)
    for p in ("E", "D_T"):
        np.testing.assert_allclose(wrapped.samples[p][0], direct["draws"][p], rtol=1e-6)
    np.testing.assert_allclose(wrapped.info["cov"], direct["cov_unconstrained"], rtol=1e-6)


def test_pseudo_correlation_is_na_along_flat_directions():
    # the talk-002 pseudo-correlation: the inverse normalised Hessian scaled to unit diagonal;
    # where the Hessian is flat (A_B and k_B at fixed dE/dx measure only a ratio) it says n/a
    # instead of the +-1 (or |r| > 1) that a pseudo-inverse of rounding noise would print
    from lartpc_bayes.infer.common import _pseudo_correlation

    nom = np.array([0.8, 0.05, 0.5])
    H = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    corr, sd = _pseudo_correlation(H, nom)
    cov = np.linalg.inv(H)
    np.testing.assert_allclose(sd, np.sqrt(np.diag(cov)) * nom, rtol=1e-12)
    np.testing.assert_allclose(corr, cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))),
                               rtol=1e-12)
    flat = np.array([[1.0, 1.0, 0.0], [1.0, 1.0 + 1e-12, 0.0], [0.0, 0.0, 2.0]])
    corr, sd = _pseudo_correlation(flat, nom)
    assert np.all(np.isnan(corr[:2])) and np.all(np.isnan(corr[:, :2])) and np.all(np.isnan(sd[:2]))
    assert corr[2, 2] == pytest.approx(1.0) and sd[2] == pytest.approx(np.sqrt(0.5) * 0.5)
