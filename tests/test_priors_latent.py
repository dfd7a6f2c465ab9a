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


def _mip_segment_sample(card, dx: float, n: int, seed: int):
    """dE/dx (MeV/cm) of n generated 0.4-0.8 cm MIP segments (4 GeV/c muons), as the generator
    draws them (truncated Landau), and the card's nominal yield h(x) = R(x) x."""
    import jax.numpy as jnp

    from lartpc_bayes.detector.physics import recombination
    from lartpc_bayes.forward import energy_loss as el

    rho = card.physics.lar_density_g_cm3
    bg = 4000.0 / el.MUON_MASS_MEV
    mpv, xi = el.landau_vavilov_mpv_loss(bg, dx, rho), el.landau_xi(bg, dx, rho)
    cut = min(el.delta_ray_cut_for_thickness(dx, rho), el.max_energy_transfer(bg, el.MUON_MASS_MEV))
    X = el.sample_truncated_landau(np.random.default_rng(seed), np.full(n, mpv), np.full(n, xi),
                                   np.full(n, mpv + cut)) / dx
    par = _nominal(card)

    def h(x):
        return np.asarray(recombination(jnp.asarray(x), par, card.physics), np.float64) * x

    return X, h, bg


def _nominal(card):
    import jax.numpy as jnp

    from lartpc_bayes.detector import PARAM_NAMES
    from lartpc_bayes.detector.physics import DetectorParams

    return DetectorParams(*(jnp.asarray(card.nominal()[p], jnp.float32) for p in PARAM_NAMES))


@pytest.mark.parametrize("dx", [0.4, 0.8])
def test_charge_cumulant_ratios_match_monte_carlo(card, dx):
    """Recombination compresses the Landau tail: the exact ratios kappa_n(h(X)) / (h'(m)^n
    kappa_n(X)) against 10^6 generated segments. Measured: the MC estimate spreads by 0.05 % (r_2)
    and 0.08 % (r_3) over seeds, the quadrature sits 0.14 % from the MC mean (the grid's
    midpoint rule); tolerances 0.5 % and 1 %."""
    from lartpc_bayes.forward.latent_prior import charge_cumulant_ratios

    X, h, bg = _mip_segment_sample(card, dx, 1_000_000, 5)
    r2, r3 = charge_cumulant_ratios(np.array([dx]), bg, card.physics.lar_density_g_cm3, h)
    m = X.mean()
    eps = 1e-4 * m
    h1 = (h(np.array([m + eps]))[0] - h(np.array([m - eps]))[0]) / (2 * eps)
    q = h(X)
    mc2 = q.var() / (h1**2 * X.var())
    mc3 = ((q - q.mean()) ** 3).mean() / (h1**3 * ((X - m) ** 3).mean())
    assert r2[0] == pytest.approx(mc2, rel=0.005)
    assert r3[0] == pytest.approx(mc3, rel=0.01)
    assert 0.8 < r2[0] < 0.95 and 0.6 < r3[0] < 0.85  # the tail really is compressed


def test_straggled_dedx_gives_the_mean_charge_of_fluctuating_segments(card):
    """E[h(X)] = h(straggled_dEdx(m, cumulants)) for generated 0.4 cm MIP segments: the charge
    deficit (0.65 %) to 4 MC sd (sd(h)/mean/sqrt(n) = 2.3e-4 at n = 10^6)."""
    import jax.numpy as jnp

    from lartpc_bayes.forward.latent_prior import segment_dedx_cumulants
    from lartpc_bayes.model import straggled_dEdx

    X, h, bg = _mip_segment_sample(card, 0.4, 1_000_000, 6)
    m = X.mean()
    var, k3 = segment_dedx_cumulants(np.array([0.4]), np.array([bg]),
                                     card.physics.lar_density_g_cm3)
    eff = straggled_dEdx(jnp.array([m], jnp.float32), jnp.array([[var[0], k3[0]]], jnp.float32),
                         _nominal(card), card.physics)
    mc = h(X).mean() / h(np.array([m]))[0]
    model = h(np.asarray(eff, np.float64))[0] / h(np.array([m]))[0]
    assert mc < 0.996  # a real deficit
    assert model == pytest.approx(mc, abs=4 * 2.3e-4)
    # no cumulants: the identity
    same = straggled_dEdx(jnp.array([m], jnp.float32), jnp.zeros((1, 2), jnp.float32),
                          _nominal(card), card.physics)
    assert float(same[0]) == pytest.approx(m, rel=1e-6)
