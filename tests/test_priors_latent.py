"""Issue 12: the latent dE/dx prior per latent length against the generator's latent means."""

import numpy as np
import pytest

from lartpc_bayes.detector import load_card
from lartpc_bayes.forward.generator import generate_sample
from lartpc_bayes.forward.latent_prior import (
    latent_prior_params,
    latent_prior_table,
    split_t_cdf,
    split_t_ppf,
)
from lartpc_bayes.model import MIP_PRIOR, build_problem, latent_lengths, latent_segments

KEYS = ("loc", "s_left", "s_right", "nu_left", "nu_right")
QS = np.array([0.1, 0.25, 0.5, 0.75, 0.9])


@pytest.fixture(scope="module")
def card():
    return load_card("module0")


def test_prior_quantiles_match_generator_latent_means(card):
    """PIT of the generator's true latent means through the per-length prior: the fraction below
    each prior quantile q is q within 3.5 binomial sd sqrt(q (1 - q) / n) (n latents, fixed seed),
    for 5 cm latents (the demo's) and 2 cm ones."""
    seg = generate_sample(card, "muons", 120, 7).segments
    rho = card.physics.lar_density_g_cm3
    for L in (5.0, 2.0):
        s2l, n = latent_segments(seg, L)
        lengths = latent_lengths(seg, s2l, n)
        keep = lengths > 0.5 * L  # latents of a short track piece are a handful of segments
        m = np.bincount(s2l, seg.dE, n) / np.maximum(lengths, 1e-9)
        pr = latent_prior_params(lengths, rho)
        u = np.array([split_t_cdf(m[i], *(pr[k][i] for k in KEYS)) for i in range(n)])[keep]
        nk = u.size
        assert nk > 300
        frac = (u[:, None] < QS[None]).mean(0)
        tol = 3.5 * np.sqrt(QS * (1 - QS) / nk)
        assert np.all(np.abs(frac - QS) < tol), (L, nk, frac)
        # the published 0.4 cm-segment prior fails the same check at this length
        u0 = split_t_cdf(m[keep], *(MIP_PRIOR[k] for k in KEYS))
        assert np.abs(np.median(u0) - 0.5) > 0.2


def test_table_fit_within_mc_error():
    """The split-t fit's quantiles against the quantiles of an independent Monte-Carlo sample
    (the generator's deposit sampler) at each grid length: within 4 MC standard errors of a
    quantile, sqrt(q (1 - q) / n) / pdf, plus the split-t shape error. Measured (issue 12): the
    form misses the 10-90 % quantiles by <= 0.42 % for L >= 3.2 cm (up to 6 MC sd), by up to
    1.1 % at 1.6 cm, 2.0 % at 0.8 cm and 3.4 % (the 90 % quantile) at 0.4 cm; the allowance here
    is 0.5 % of the quantile on 3.2-205 cm."""
    from lartpc_bayes.forward import generator as gen
    from lartpc_bayes.forward.latent_prior import sample_latent_means, split_t_logpdf

    rho = 1.38
    rows = latent_prior_table(rho)
    for r in rows[3:]:  # 3.2 - 205 cm
        rng = np.random.default_rng(99)
        n = 20_000
        m = sample_latent_means(rng, r["length_cm"], n, density=rho,
                                config=gen.GeneratorConfig())
        p = [r[k] for k in KEYS]
        qf = split_t_ppf(QS, *p)
        se = np.sqrt(QS * (1 - QS) / n) / np.exp(split_t_logpdf(qf, *p))
        se_fit = np.sqrt(QS * (1 - QS) / r["n_mc"]) / np.exp(split_t_logpdf(qf, *p))
        dev = np.abs(np.quantile(m, QS) - qf)
        assert np.all(dev < 4 * np.hypot(se, se_fit) + 0.005 * qf), (r, dev)


@pytest.mark.slow  # measured 3.6 min on the loaded shared 2-core machine (charge Jacobian jit)
def test_build_problem_uses_per_length_prior(card):
    seg = generate_sample(card, "muons", 2, 3).segments
    pb = build_problem(card, seg, None, latent_length_cm=5.0)
    assert np.shape(pb.prior["loc"]) == (pb.n_latent,)
    L = latent_lengths(seg, pb.seg_to_latent, pb.n_latent)
    # the location grows with the latent length towards the ~2.0 MeV/cm mean
    assert np.all(np.diff(pb.prior["loc"][np.argsort(L)]) >= -1e-9)
    pb0 = build_problem(card, seg, None, latent_length_cm=5.0, latent_prior="published",
                        charge_fluctuations=False)
    assert pb0.prior == MIP_PRIOR and pb0.charge_straggling is None
    with pytest.raises(ValueError, match="latent_prior"):
        build_problem(card, seg, None, latent_prior="bogus")
