"""Microphysics and detector cards against published numbers.

Reference values (shared/references/larnd-sim.md section 1, DESIGN.md section 2) are quoted to a
fixed number of digits; every tolerance below is half a unit of the last quoted digit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from lartpc_bayes.detector import MODELS_DIR, PARAM_NAMES, CardError, load_card, parse_card
from lartpc_bayes.detector.physics import (
    DetectorParams,
    birks_recombination,
    box_recombination,
    diffusion_sigma,
    drift_velocity,
    electron_mobility,
    ionization_electrons,
    lifetime_factor,
    nominal_params,
    recombination,
)

RHO = 1.38  # g/cm^3, larnd-sim LAR_DENSITY
T_LAR = 87.17  # K, larnd-sim TEMPERATURE
A_B, K_B = 0.800, 0.0486  # Amoruso et al. (ICARUS)
BOX_ALPHA, BOX_BETA = 0.93, 0.207  # ArgoNeuT
W_ION = 23.6e-6  # MeV


@pytest.fixture(scope="module")
def card():
    return load_card("module0")


# --- recombination ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dedx", "r_birks", "r_box"),
    [(2.1, 0.697, 0.706), (5.0, 0.592, 0.592), (10.0, 0.469, 0.456)],  # larnd-sim.md section 1.1
)
def test_recombination_published_values(dedx, r_birks, r_box):
    rb = float(birks_recombination(dedx, 0.5, A_B, K_B, RHO))
    rx = float(box_recombination(dedx, 0.5, BOX_ALPHA, BOX_BETA, RHO))
    assert abs(rb - r_birks) < 5e-4, rb
    assert abs(rx - r_box) < 5e-4, rx


def test_recombination_dispatch_follows_card(card):
    p = nominal_params(card)
    r_birks = float(recombination(2.1, p, card.physics))
    r_box = float(recombination(2.1, p, replace(card.physics, recombination="box")))
    assert abs(r_birks - 0.697) < 5e-4
    assert abs(r_box - 0.706) < 5e-4


def test_mip_electrons_per_cm(card):
    # 2.1 MeV/cm MIP at 0.5 kV/cm: R dE/dx / W_ion = 0.697 * 2.1 MeV / 23.6 eV = 62,000 e/cm
    # (larnd-sim.md: "~62 000 e-/cm"), before lifetime attenuation.
    p = nominal_params(card)
    n = float(ionization_electrons(2.1, 2.1, p, card.physics))  # 1 cm of track
    assert abs(n - 62_000.0) < 100.0, n
    assert card.physics.w_ion_MeV == pytest.approx(W_ION)


def test_birks_gradients_match_analytic():
    # R = A / (1 + k x), x = dEdx / (E rho): dR/dA = R/A, dR/dk = -A x / (1 + k x)^2,
    # dR/dE = A k x / (E (1 + k x)^2). float32: relative 1e-5 is a few ulps of these O(1) numbers.
    dedx, E = 2.1, 0.5
    x = dedx / (E * RHO)
    g = jax.grad(lambda a, k, e: birks_recombination(dedx, e, a, k, RHO), argnums=(0, 1, 2))(
        A_B, K_B, E
    )
    d = (1 + K_B * x) ** 2
    expect = (1 / (1 + K_B * x), -A_B * x / d, A_B * K_B * x / (E * d))
    np.testing.assert_allclose(np.array(g, dtype=float), expect, rtol=1e-5)


def test_box_finite_values_and_gradients_at_zero_dedx():
    # xi -> 0: ln(alpha + xi)/xi -> ln(0.93)/xi -> -inf, clipped at 0 as larnd-sim; the clip must
    # not leak NaN/inf into values or gradients (double-where trick).
    def f(dedx, e):
        return box_recombination(dedx, e, BOX_ALPHA, BOX_BETA, RHO)

    grad = jax.grad(f, argnums=(0, 1))
    for dedx in [0.0, 1e-30, 1e-12, 1e-6, 1e-3, 0.1, 0.2]:
        val = float(f(jnp.float32(dedx), jnp.float32(0.5)))
        gd, ge = (float(v) for v in grad(jnp.float32(dedx), jnp.float32(0.5)))
        assert math.isfinite(val) and val >= 0.0, (dedx, val)
        assert math.isfinite(gd) and math.isfinite(ge), (dedx, gd, ge)
    # below xi = 1 - alpha (dE/dx < 0.07 E rho / beta = 0.233 MeV/cm) the model is clipped at zero
    assert float(f(0.2, 0.5)) == 0.0
    assert float(f(0.3, 0.5)) > 0.0
    # vectorised gradient through the clip stays finite too
    gv = jax.grad(lambda d: f(d, 0.5).sum())(jnp.array([0.0, 1e-9, 0.5, 2.1]))
    assert np.all(np.isfinite(np.asarray(gv)))


# --- drift -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("e_field", "v_ref"), [(0.45, 0.15128), (0.50, 0.15965), (0.55, 0.16730)])
def test_drift_velocity_walkowiak(e_field, v_ref):
    # larnd-sim.md section 1.2: 0.15128 / 0.159645 / 0.16730 cm/us at 87.17 K
    v = float(drift_velocity(e_field, T_LAR))
    assert abs(v - v_ref) < 5e-6, v


def test_mobility_temperature_scaling():
    # (T/89 K)^-1.5 factor of the parametrisation
    ratio = float(electron_mobility(0.5, 89.0) / electron_mobility(0.5, T_LAR))
    assert ratio == pytest.approx((89.0 / T_LAR) ** -1.5, rel=1e-6)


def test_lifetime_factor():
    v = float(drift_velocity(0.5, T_LAR))
    # larnd-sim.md section 1.2: with tau = 2.2 ms, 0.917 at full Module-0 drift, 0.866 at 50.4 cm
    assert abs(float(lifetime_factor(30.27 / v, 2200.0)) - 0.917) < 5e-4
    assert abs(float(lifetime_factor(50.4 / v, 2200.0)) - 0.866) < 5e-4
    assert float(lifetime_factor(0.0, 2200.0)) == 1.0
    assert float(lifetime_factor(2200.0 * math.log(2), 2200.0)) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize(
    ("drift_cm", "sig_t", "sig_l"), [(30.27, 0.058, 0.039), (50.4, 0.075, 0.050)]
)
def test_diffusion_widths(drift_cm, sig_t, sig_l):
    # larnd-sim.md section 1.2 at nominal D_T = 8.8e-6, D_L = 4.0e-6 cm^2/us, E = 0.5 kV/cm
    td = drift_cm / float(drift_velocity(0.5, T_LAR))
    assert abs(float(diffusion_sigma(8.8e-6, td)) - sig_t) < 5e-4
    assert abs(float(diffusion_sigma(4.0e-6, td)) - sig_l) < 5e-4


def test_longitudinal_width_in_time():
    # sigma_L / v_d at full Module-0 drift: 0.039 cm -> 0.24 us (2.4 ticks), larnd-sim.md
    v = float(drift_velocity(0.5, T_LAR))
    assert abs(float(diffusion_sigma(4.0e-6, 30.27 / v)) / v - 0.24) < 5e-3


def test_diffusion_floor_keeps_gradients_finite_at_zero_drift():
    g = jax.grad(lambda d, t: diffusion_sigma(d, t, 1e-4), argnums=(0, 1))(8.8e-6, 0.0)
    assert all(math.isfinite(float(x)) for x in g)
    assert float(diffusion_sigma(8.8e-6, 0.0, 1e-4)) == pytest.approx(1e-4)


# --- parameters ------------------------------------------------------------------------------


def test_nominal_params_and_overrides(card):
    p = nominal_params(card, tau=1500.0)
    assert isinstance(p, DetectorParams)
    assert p.tau == 1500.0 and p.E == 0.5 and p.A_B == 0.8
    assert tuple(p.to_dict()) == PARAM_NAMES
    assert DetectorParams.from_dict(p.to_dict()) == p
    with pytest.raises(KeyError, match="tauu"):
        nominal_params(card, tauu=1.0)
    with pytest.raises(KeyError, match="D_T"):
        DetectorParams.from_dict({k: 1.0 for k in PARAM_NAMES if k != "D_T"})


# --- cards -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["module0", "2x2", "ndlar"])
def test_shipped_cards_load(name):
    c = load_card(name)
    assert c.name == name
    assert tuple(p.name for p in c.params) == PARAM_NAMES
    for p in c.params:
        assert p.low <= p.nominal <= p.high
    # per-anode pixel counts and ADC steps from larnd-sim.md sections 1.3-1.4
    expect = {
        "module0": (2, (140, 280), 0.4434, 988.0, 30.27),
        "2x2": (8, (140, 280), 0.4434, 941.0, 30.27),
        "ndlar": (2, (256, 800), 0.38, 1064.0, 50.4),
    }[name]
    n_tpc, npix, pitch, e_per_adc, drift = expect
    assert len(c.geometry.tpcs) == n_tpc
    assert all(c.geometry.n_pixels(i) == npix for i in range(n_tpc))
    assert c.geometry.pixel_pitch_cm == pitch
    assert abs(c.electronics.electrons_per_adc - e_per_adc) < 1.0
    assert abs(c.geometry.max_drift_cm - drift) < 0.01
    assert c.electronics.hold_ticks == 18  # 3 + 15 cycles
    assert c.electronics.dead_ticks == 18 + 9 + 1


def test_load_card_by_path_and_unknown_name(tmp_path):
    c = load_card(MODELS_DIR / "module0.yaml")
    assert c.name == "module0"
    with pytest.raises(CardError, match="shipped cards"):
        load_card("no_such_detector")
    missing = tmp_path / "absent.yaml"
    with pytest.raises(CardError, match=str(missing)):
        load_card(missing)


@pytest.fixture(scope="module")
def module0_raw():
    return yaml.safe_load((MODELS_DIR / "module0.yaml").read_text())


def _set(d, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    if value is _DELETE:
        del d[keys[-1]]
    else:
        d[keys[-1]] = value


_DELETE = object()

CARD_ERRORS = [
    # (dotted path to change, new value, fragment the message must contain)
    ("electronics.threshold_e", _DELETE, "missing key 'electronics.threshold_e'"),
    ("physics", _DELETE, "missing key 'physics'"),
    ("parameters.tau", _DELETE, "missing key 'parameters.tau'"),
    ("parameters.E.low", _DELETE, "missing key 'parameters.E.low'"),
    ("geometry.tpcs.0.anode_cm", _DELETE, "missing key 'geometry.tpcs[0].anode_cm'"),
    ("electronics.threshold_e", "5000", "key 'electronics.threshold_e' must be a number"),
    ("electronics.threshold_e", True, "key 'electronics.threshold_e' must be a number"),
    ("electronics.reset_noise_e", float("nan"), "key 'electronics.reset_noise_e' must be finite"),
    ("electronics.adc_bits", 8.5, "key 'electronics.adc_bits' must be an integer"),
    ("geometry.tpcs", {"a": 1}, "key 'geometry.tpcs' has wrong type"),
    ("geometry.drift_axis", "w", "key 'geometry.drift_axis' must be x, y or z"),
    ("physics.recombination", "ionisation", "key 'physics.recombination' must be birks or box"),
    ("electronics.tick_us", 0.0, "key 'electronics.tick_us' must be > 0"),
    ("electronics.reset_noise_e", -1.0, "key 'electronics.reset_noise_e' must be >= 0"),
    ("electronics.v_ref_mV", 200.0, "key 'electronics.v_ref_mV' must exceed v_cm_mV"),
    ("parameters.tau.nominal", 6000.0, "key 'parameters.tau.nominal' = 6000.0 outside"),
    ("parameters.E.low", 0.6, "key 'parameters.E.low/high' must satisfy 0 < low < high"),
    ("parameters.D_L.low", -1e-6, "key 'parameters.D_L.low/high' must satisfy 0 < low < high"),
    ("parameters.gain", {"nominal": 1.0, "low": 0.5, "high": 2.0}, "unknown parameter(s) ['gain']"),
    ("geometry.tpcs.0.x_cm", [-31.038, 31.0], "key 'geometry.tpcs[0].x_cm' spans"),
    ("geometry.tpcs.1.y_cm", [40.0, -83.9], "key 'geometry.tpcs[1].y_cm' must be [min, max]"),
    ("geometry.tpcs.0.cathode_cm", -30.431, "key 'geometry.tpcs[0].cathode_cm' equals anode_cm"),
]


@pytest.mark.parametrize(("path", "value", "fragment"), CARD_ERRORS)
def test_card_errors_name_file_and_key(tmp_path, module0_raw, path, value, fragment):
    raw = copy.deepcopy(module0_raw)
    _set(raw, path, value)
    f = tmp_path / "broken_card.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(CardError) as exc:
        load_card(f)
    msg = str(exc.value)
    assert msg.startswith(str(f) + ":"), msg  # the file ...
    assert fragment in msg, msg  # ... and the key


def test_card_invalid_yaml_and_top_level(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(CardError, match="not valid YAML") as exc:
        load_card(f)
    assert str(f) in str(exc.value)
    with pytest.raises(CardError, match="top level must be a mapping"):
        parse_card([1, 2], "list.yaml")


def test_unmodified_copy_loads(tmp_path, module0_raw):
    # the error tests above start from a card that is itself valid
    f = tmp_path / "copy.yaml"
    f.write_text(yaml.safe_dump(module0_raw))
    c = load_card(f)
    assert c == replace(load_card("module0"), source=str(f))
