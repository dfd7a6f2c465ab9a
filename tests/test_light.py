"""Light readout (issue 15): yield conservation, solid angle, library, SIREN, light likelihood,
joint charge + light fit.

Tolerances are derived, not tuned:

* conservation and the solid angle are exact identities: float64 rounding (rtol 1e-12 / 1e-9);
* the cell quadrature of the attenuation across a tile: 5 cm cells against 0.5 cm cells, bound
  0.5 % (the docstring's claim; second-order error ~ (cell/L_att)^2/24 ~ 1e-4, plus the
  near-field variation of r across a cell);
* the SIREN must reproduce the held-out voxels better than a photon library of the *same number
  of stored numbers* (a coarser LUT, trilinearly interpolated): that is the surrogate's purpose;
  and absolute bounds at 2x the values measured at this fixed seed (median 5 %, p95 26 %);
* the likelihood gradient against central differences in float64: step h = 1e-5 relative, error
  O(h^2 f''') ~ 1e-9 relative, bound 1e-6;
* the joint fit: every |pull| < 3 (a calibrated posterior fails this with probability 0.5 % for
  two parameters; the seed is fixed, so a pass is deterministic).
"""

from __future__ import annotations

import itertools

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lartpc_bayes.data import make_segments
from lartpc_bayes.detector import PARAM_NAMES, DetectorParams, load_card, nominal_params
from lartpc_bayes.light import (
    LightData,
    build_library,
    channel_mask,
    check_quanta_consistency,
    compare,
    expected_pe,
    fit_joint,
    load_library,
    load_light_card,
    on_axis_solid_angle,
    photon_yield,
    plan_light,
    poisson_log_likelihood,
    quanta,
    read_light,
    rectangle_solid_angle,
    save_library,
    simulate_light,
    train_on_library,
    visibility,
    write_light,
)
from lartpc_bayes.light.siren import library_data

CARD = load_card("module0")
LC = load_light_card("light_module0")


def test_quanta_conserved_at_every_R():
    dE = np.array([0.01, 0.5, 2.1, 40.0])
    w_ion = CARD.physics.w_ion_MeV
    for R in np.linspace(0.0, 1.0, 11):
        n_e, n_ph = quanta(dE, R, w_ion, LC.w_ph_MeV)
        np.testing.assert_allclose(n_e + n_ph, dE / LC.w_ph_MeV, rtol=1e-12)
        assert np.all(n_ph >= 0)
    # the two statements of the physics agree: W_ion / W_ph - 1 = 23.6 / 19.5 - 1 = 0.2103
    assert check_quanta_consistency(w_ion, LC.w_ph_MeV, LC.excitation_ratio) == pytest.approx(
        0.2103, abs=1e-4)
    with pytest.raises(ValueError):
        check_quanta_consistency(w_ion, 21.0e-6, 0.21)


def test_light_anticorrelated_with_charge():
    """d n_ph / d theta = - d n_e / d theta for A_B, k_B, E and dE/dx at fixed dE."""
    p = nominal_params(CARD)
    ph = CARD.physics

    def n_e(p, dEdx):
        from lartpc_bayes.detector import recombination

        return recombination(dEdx, p, ph) * 1.0 / ph.w_ion_MeV

    def n_ph(p, dEdx):
        return photon_yield(1.0, dEdx, p, ph, LC.w_ph_MeV)

    ge = jax.grad(n_e, argnums=(0, 1))(p, 2.1)
    gp = jax.grad(n_ph, argnums=(0, 1))(p, 2.1)
    for name in ("A_B", "k_B", "E"):
        a, b = getattr(ge[0], name), getattr(gp[0], name)
        assert abs(a) > 0
        np.testing.assert_allclose(b, -a, rtol=1e-5)
    np.testing.assert_allclose(gp[1], -ge[1], rtol=1e-5)
    # MIP light yield: 1/19.5 eV - 0.697/23.6 eV = 2.17e4 photons/MeV at 0.5 kV/cm (Birks)
    y = float(photon_yield(1.0, 2.1, p, ph, LC.w_ph_MeV))
    assert y == pytest.approx(1 / 19.5e-6 - 0.697 / 23.6e-6, rel=2e-3)


def test_light_card_layout():
    """16 channels per TPC (2 ArCLight + 6 LCM per wall), 48 SiPMs per TPC as larnd-sim."""
    assert LC.n_channels == 32
    for t in range(2):
        tiles = [x for x in LC.tiles if x.tpc == t]
        assert len(tiles) == 16
        sipms = sum(6 if x.kind == "arclight" else 2 for x in tiles)
        assert sipms == 48
        box = LC.tpcs[t]
        for x in tiles:
            assert x.plane_cm in (box.lo[x.axis], box.hi[x.axis])
            u, v = x.other_axes
            assert box.lo[u] <= x.lo[0] < x.hi[0] <= box.hi[u]
            assert box.lo[v] <= x.lo[1] < x.hi[1] <= box.hi[v]
    # tiles of one wall do not overlap
    w = sorted((x.lo[0], x.hi[0]) for x in LC.tiles if x.tpc == 0 and x.inward > 0)
    assert all(a[1] <= b[0] + 1e-9 for a, b in itertools.pairwise(w))


@pytest.mark.parametrize("d", [0.7, 5.0, 20.0, 55.0])
def test_visibility_at_tile_centre_matches_analytic_solid_angle(d):
    """A point on the axis of a tile: V / PDE * 4 pi = 4 arcsin(ab / sqrt((a^2+4d^2)(b^2+4d^2)))
    without attenuation, exactly (whatever the cell subdivision), and the attenuated visibility
    of 5 cm cells agrees with 0.5 cm cells within 0.5 %."""
    c = next(i for i, t in enumerate(LC.tiles) if t.kind == "arclight" and t.tpc == 0)
    tile = LC.tiles[c]
    p = tile.center.copy()
    p[tile.axis] += tile.inward * d
    a, b = tile.size
    omega = on_axis_solid_angle(a, b, d)
    for cell in (100.0, 5.0, 1.0):
        v = visibility(LC, p[None], attenuation_cm=1e15, max_cell_cm=cell)[0, c]
        np.testing.assert_allclose(v / tile.pde * 4 * np.pi, omega, rtol=1e-9)
    v5 = visibility(LC, p[None], max_cell_cm=5.0)[0, c]
    v05 = visibility(LC, p[None], max_cell_cm=0.5)[0, c]
    assert abs(v5 / v05 - 1) < 5e-3
    assert v05 < omega / (4 * np.pi) * tile.pde  # attenuation only removes light
    # the rectangle formula is additive and antisymmetric
    np.testing.assert_allclose(
        rectangle_solid_angle(-1.0, 2.0, -3.0, 4.0, 2.0),
        rectangle_solid_angle(-1.0, 0.5, -3.0, 4.0, 2.0)
        + rectangle_solid_angle(0.5, 2.0, -3.0, 4.0, 2.0), rtol=1e-12)


def test_other_tpc_sees_nothing():
    p = np.array([[0.0, -20.0, -15.0]])  # TPC 0
    v = visibility(LC, p)[0]
    assert np.all(v[LC.tile_tpc == 1] == 0) and np.all(v[LC.tile_tpc == 0] > 0)


def test_module0_library_build_save_load(tmp_path):
    """Module-0 library at the card's 2 cm voxels (its build time, 1-4 s against the issue's
    one minute, is a measurement for docs/light.md, not an assertion), HDF5 round trip, look-up
    at voxel centres returns the stored values."""
    lib = build_library(LC)
    assert lib.vis.shape == (2, 32, 63, 16, 32)
    path = save_library(lib, tmp_path / "lib.h5", LC)
    assert not list(tmp_path.glob("*.tmp"))
    back = load_library(path)
    np.testing.assert_array_equal(back.vis, lib.vis)
    assert back.meta["attenuation_cm"] == pytest.approx(LC.attenuation_cm)
    with h5py.File(path) as f:
        assert f["tiles"].shape == (32,)
    xyz, _ = lib.centres()
    pts = xyz.reshape(-1, 3)[::997]
    np.testing.assert_allclose(lib.lookup(LC, pts), lib.vis.reshape(-1, 32)[::997], rtol=1e-5,
                               atol=1e-12)


def test_siren_reproduces_library_on_heldout_voxels():
    lib = build_library(LC, 5.0)
    _model, info = train_on_library(LC, lib, width=32, depth=3, steps=1500, batch=1024, lr=3e-3,
                                   seed=0)
    data = library_data(LC, lib)
    ho = info["heldout"]
    # a LUT storing as many numbers as the SIREN has parameters (16 visible channels per voxel)
    vol = 2 * np.prod(np.array(LC.tpcs[0].hi) - np.array(LC.tpcs[0].lo))
    vox = (vol / (info["n_params"] / 16)) ** (1 / 3)
    small = build_library(LC, vox)
    lut = compare(small.lookup(LC, data.xyz[ho]), data.vis[ho], data.mask[ho])
    assert info["heldout_median_w"] < lut["median_w"]
    assert info["heldout_p95_w"] < lut["p95_w"]
    assert info["heldout_median_w"] < 0.10 and info["heldout_p95_w"] < 0.5
    assert info["n_params"] < data.mask.sum() / 10


def test_poisson_light_likelihood_gradient_matches_finite_differences():
    seg = make_segments([[-10.0, -30.0, -20.0], [-8.0, -28.0, -19.0]],
                        [[-8.0, -28.0, -19.0], [-6.0, -26.0, -18.0]], [6.0, 6.5],
                        event_id=[0, 0])
    plan = plan_light(LC, seg)
    with jax.enable_x64(True):
        pe = np.asarray(simulate_light(1, plan, seg.dEdx, nominal_params(CARD), CARD.physics,
                                       LC).pe)
        x0 = jnp.array([0.8, 0.0486, 0.5, 1.9, 2.2, 1.05], jnp.float64)

        def f(x):
            p = DetectorParams(x[0], x[1], x[2], 2600.0, 4e-6, 8.8e-6)
            mu = expected_pe(plan._replace(vis=plan.vis.astype(np.float64)), x[3:5], p,
                             CARD.physics, LC, gain=x[5])
            return poisson_log_likelihood(mu, jnp.asarray(pe, jnp.float64))

        g = np.asarray(jax.grad(f)(x0))
        assert g.dtype == np.float64
        for i in range(x0.size):
            h = 1e-5 * abs(float(x0[i]))
            e = jnp.zeros_like(x0).at[i].set(h)
            fd = (float(f(x0 + e)) - float(f(x0 - e))) / (2 * h)
            assert abs(g[i] - fd) <= 1e-6 * max(abs(fd), 1e-3 * np.abs(g).max()), (i, g[i], fd)


def test_write_light_beside_hits(tmp_path):
    path = tmp_path / "hits.h5"
    with h5py.File(path, "w") as f:
        f["hits/adc"] = np.arange(5)
    light = LightData(np.array([3, 4]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    write_light(path, light, light_card="light_module0")
    write_light(path, light._replace(pe=light.pe * 2), light_card="light_module0")
    back = read_light(path)
    np.testing.assert_array_equal(back.pe, light.pe * 2)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["hits/adc"][:], np.arange(5))
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow  # ~80 s on the shared 2-core machine: compiling the charge likelihood + Hessian
def test_joint_fit_recovers_target():
    """A_B and k_B free (E, tau, D_L, D_T fixed at the truth), one 4 cm muon piece, charge +
    light: both within 3 posterior sd of the target."""
    from lartpc_bayes.forward.generator import SelectionCuts, generate
    from lartpc_bayes.forward.simulate import simulate_hits
    from lartpc_bayes.model import build_problem

    target = {"A_B": 0.83, "k_B": 0.055, "E": 0.5, "tau": 2600.0, "D_L": 4e-6, "D_T": 8.8e-6}
    seg = generate(CARD, "muons", 1, 11, cuts=SelectionCuts(min_angle_to_drift_deg=60))
    seg = seg.select(np.cumsum(seg.dx) <= 4.0)
    P = DetectorParams.from_dict(target)
    hits, _ = simulate_hits(jax.random.key(5), CARD, seg, P)
    fixed = {k: v for k, v in target.items() if k not in ("A_B", "k_B")}
    problem = build_problem(CARD, seg, hits, latent_length_cm=4.0, fixed=fixed)
    lp = plan_light(LC, seg)
    light = simulate_light(5, lp, seg.dEdx, P, CARD.physics, LC)
    fit = fit_joint(problem, lp, LC, light.pe, use_light=True, seed=0, num_samples=2000,
                    scan_E=False)
    assert fit["newton_decrement"] < 0.05
    for p in ("A_B", "k_B"):
        s = fit["samples"][p]
        assert 0 < s.std() < CARD.param(p).high - CARD.param(p).low
        assert abs(s.mean() - target[p]) < 3 * s.std(), (p, s.mean(), s.std())
    assert set(PARAM_NAMES) - set(fixed) == {"A_B", "k_B"}
    assert channel_mask(LC, seg.start).shape == (seg.n, 32)


def test_simulate_cli_writes_light_beside_the_hits(tmp_path):
    """``lartpc-bayes simulate --light``: the light/ group of the hit file, one row per event."""
    from lartpc_bayes.cli import main
    from lartpc_bayes.io import read_hits
    from lartpc_bayes.light import read_light

    out = tmp_path / "hits.h5"
    rc = main(["simulate", "--detector", "module0", "--sample", "muons", "--n-tracks", "2",
               "--seed", "4", "--light", "light_module0", "-q", "-o", str(out)])
    assert rc == 0
    hf = read_hits(out)  # the hit file is intact
    lt = read_light(out)
    assert lt.pe.ndim == 2 and lt.pe.shape[0] == len(np.unique(hf.hits.event_id))
    assert np.all(lt.pe >= 0) and lt.pe.sum() > 100  # two muons give hundreds of pe
    assert np.allclose(lt.pe, np.round(lt.pe))  # Poisson counts
