"""Energy loss of charged particles in liquid argon: mean dE/dx, Landau-Vavilov fluctuations, range.

Everything here follows the PDG review "Passage of particles through matter" (S. Navas et al.
(Particle Data Group), Phys. Rev. D 110, 030001 (2024), chapter 34; equation numbers below refer to
that chapter) with the liquid-argon constants of the PDG "Atomic and nuclear properties" table
(https://pdg.lbl.gov/2024/AtomicNuclearProperties/, entry "Liquid argon (Ar)").

Units: lengths in cm, areal thickness ("mass units") in g/cm^2, energies and masses in MeV (c = 1),
stopping powers in MeV/cm (or MeV cm^2/g where stated), densities in g/cm^3. Projectile charge
z = 1.

Two kinds of functions live here:

* host functions (NumPy, float64): :func:`bethe_bloch_mean_dedx`, :func:`landau_vavilov_mpv`,
  :func:`landau_xi`, :func:`stopping_power`, :func:`csda_range_table`,
  :func:`kinetic_energy_to_range`, :func:`range_to_kinetic_energy`, the fluctuation samplers used
  by the event generator and the truncated-Landau moments;
* JAX functions, jit/grad/vmap safe: :func:`dedx_from_residual_range` (alias
  :func:`residual_range_to_dedx`) and :func:`kinetic_energy_from_residual_range`. They interpolate a
  table built once per (mass, density) on the host and are the stopping-particle prior mean of the
  NumPyro model.

Validity. The Bethe equation (eq. 34.5) without shell, Barkas and Bloch corrections is accurate to a
few per cent for 0.05 < beta*gamma < ~500 in argon; radiative losses of muons (eq. 34.40) are not
included (about 1 % of the loss at 10 GeV and 15 % at 100 GeV in argon, where the muon critical
energy is several hundred GeV). Below the maximum of the Bethe curve
(proton kinetic energy about 0.25 MeV, the last ~20 um of a proton track) the stopping power is
continued as proportional to the velocity (Lindhard-Scharff regime), which keeps the range table
finite and monotonic; PSTAR would be needed for the last micrometres.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from scipy import stats

# ------------------------------------------------------------------------------------------------
# Constants and their sources
# ------------------------------------------------------------------------------------------------
#: K = 4 pi N_A r_e^2 m_e c^2, MeV cm^2/mol (PDG 2024 Table 34.1).
K_MEV_CM2_PER_MOL: float = 0.307075
#: Electron mass, MeV (PDG 2024 / CODATA 2018).
ELECTRON_MASS_MEV: float = 0.51099895
#: Particle masses, MeV (PDG 2024 summary tables).
MUON_MASS_MEV: float = 105.6583755
PION_MASS_MEV: float = 139.57039
PROTON_MASS_MEV: float = 938.27208816

#: Argon: Z = 18, A = 39.948 g/mol (PDG atomic & nuclear properties).
ARGON_Z: int = 18
ARGON_A_G_PER_MOL: float = 39.948
ARGON_Z_OVER_A: float = ARGON_Z / ARGON_A_G_PER_MOL  # mol/g
#: Mean excitation energy of (liquid) argon, MeV (PDG table: I = 188.0 eV). M. Strait,
#: arXiv:2212.06286 recommends 197 +- 7 eV for the liquid; we keep the PDG value used by Geant4.
ARGON_I_MEV: float = 188.0e-6
#: Density of liquid argon in the PDG table (at the normal boiling point), g/cm^3.
LAR_DENSITY_PDG: float = 1.396
#: Density used by larnd-sim (consts/detector.py LAR_DENSITY) and by the detector cards, g/cm^3.
LAR_DENSITY_LARNDSIM: float = 1.38
#: Sternheimer density-effect parameters of liquid argon (PDG table, from Sternheimer, Berger &
#: Seltzer, At. Data Nucl. Data Tables 30 (1984) 261): -C, x0, x1, a, k, delta0.
STERNHEIMER_CBAR: float = 5.2146
STERNHEIMER_X0: float = 0.2000
STERNHEIMER_X1: float = 3.0000
STERNHEIMER_A: float = 0.19559
STERNHEIMER_K: float = 3.0000
STERNHEIMER_DELTA0: float = 0.0
#: Radiation length of argon, g/cm^2 (PDG table: 19.55 g/cm^2 = 14.0 cm at 1.396 g/cm^3).
ARGON_X0_G_CM2: float = 19.55
#: Bichsel's constant j in the Landau-Vavilov most probable loss (PDG eq. 34.12).
LANDAU_J: float = 0.200
#: Mode of the classical Landau density phi(lambda) (Landau 1944; PDG section 34.2.9).
LANDAU_LAMBDA_MODE: float = -0.22278298
#: scipy.stats.landau (Boost convention) is the stable law S1(alpha=1, beta=1, sigma=1, mu=0); the
#: classical Landau variable is lambda = (pi/2) x + ln(pi/2) (checked numerically in the tests).
_LANDAU_SCALE: float = math.pi / 2.0
_LANDAU_SHIFT: float = math.log(math.pi / 2.0)


# ------------------------------------------------------------------------------------------------
# Kinematics helpers
# ------------------------------------------------------------------------------------------------
def beta_gamma_from_kinetic_energy(kinetic_MeV, mass_MeV: float) -> np.ndarray:
    """beta*gamma = p/M = sqrt(T (T + 2M))/M for kinetic energy T (MeV)."""
    t = np.asarray(kinetic_MeV, dtype=np.float64)
    return np.sqrt(np.maximum(t, 0.0) * (t + 2.0 * mass_MeV)) / mass_MeV


def kinetic_energy_from_momentum(p_MeV, mass_MeV: float) -> np.ndarray:
    """T = sqrt(p^2 + M^2) - M (MeV), written to avoid cancellation at small p."""
    p = np.asarray(p_MeV, dtype=np.float64)
    return p * p / (np.sqrt(p * p + mass_MeV * mass_MeV) + mass_MeV)


def max_energy_transfer(beta_gamma, mass_MeV: float) -> np.ndarray:
    """W_max = 2 m_e c^2 (beta gamma)^2 / (1 + 2 gamma m_e/M + (m_e/M)^2), MeV (PDG eq. 34.4)."""
    bg = np.asarray(beta_gamma, dtype=np.float64)
    gamma = np.sqrt(1.0 + bg * bg)
    r = ELECTRON_MASS_MEV / mass_MeV
    return 2.0 * ELECTRON_MASS_MEV * bg * bg / (1.0 + 2.0 * gamma * r + r * r)


def _beta2(bg: np.ndarray) -> np.ndarray:
    return bg * bg / (1.0 + bg * bg)


# ------------------------------------------------------------------------------------------------
# Density effect
# ------------------------------------------------------------------------------------------------
def sternheimer_parameters(density: float = LAR_DENSITY_LARNDSIM) -> tuple[float, float]:
    """(C-bar, a) of the Sternheimer parametrization for liquid argon at ``density`` (g/cm^3).

    The PDG parameters hold at 1.396 g/cm^3. The asymptotic constant is C-bar = 2 ln(I/hbar w_p) + 1
    with the plasma energy hbar w_p = 28.816 sqrt(rho <Z/A>) eV (PDG eq. 34.6 and footnote), so a
    different density shifts it by -ln(rho/rho_PDG) (check: I = 188 eV, rho = 1.396 gives
    hbar w_p = 22.85 eV and C-bar = 5.2146). ``a`` is then re-derived from continuity of delta at x0
    (delta0 = 0): a = (C-bar - 2 ln10 x0)/(x1 - x0)^k, which reproduces the tabulated 0.19559.
    """
    cbar = STERNHEIMER_CBAR - math.log(density / LAR_DENSITY_PDG)
    a = (cbar - 2.0 * math.log(10.0) * STERNHEIMER_X0) / (
        (STERNHEIMER_X1 - STERNHEIMER_X0) ** STERNHEIMER_K
    )
    return cbar, a


def density_effect_delta(beta_gamma, density: float = LAR_DENSITY_LARNDSIM) -> np.ndarray:
    """Sternheimer density-effect correction delta(beta gamma) (PDG eq. 34.7, the Sternheimer form).

    With x = log10(beta gamma): delta = 2 ln10 x - C-bar for x >= x1;
    2 ln10 x - C-bar + a (x1 - x)^k for x0 <= x < x1; delta0 10^(2 (x - x0)) below x0 (delta0 = 0
    for an insulator such as LAr).
    """
    bg = np.asarray(beta_gamma, dtype=np.float64)
    cbar, a = sternheimer_parameters(density)
    x = np.log10(np.maximum(bg, 1e-30))
    ln10 = math.log(10.0)
    high = 2.0 * ln10 * x - cbar
    mid = high + a * np.clip(STERNHEIMER_X1 - x, 0.0, None) ** STERNHEIMER_K
    low = STERNHEIMER_DELTA0 * 10.0 ** (2.0 * (x - STERNHEIMER_X0))
    return np.where(x >= STERNHEIMER_X1, high, np.where(x >= STERNHEIMER_X0, mid, low))


# ------------------------------------------------------------------------------------------------
# Mean energy loss
# ------------------------------------------------------------------------------------------------
def bethe_bloch_mean_dedx(
    beta_gamma, mass_MeV: float, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Mean electronic energy loss <-dE/dx> in liquid argon, MeV/cm (PDG eq. 34.5).

        <-dE/dx> = rho K z^2 (Z/A) / beta^2 [ 1/2 ln(2 m_e c^2 beta^2 gamma^2 W_max / I^2)
                                              - beta^2 - delta(beta gamma)/2 ]

    with W_max from :func:`max_energy_transfer` and delta from :func:`density_effect_delta`. Valid
    for about 0.05 < beta gamma < 500 (no shell/Barkas/Bloch corrections, no radiative losses).
    Example: the minimum, at beta gamma ~ 3.5, is 1.51 MeV cm^2/g, i.e. 2.11 MeV/cm at 1.396 g/cm^3.
    """
    bg = np.asarray(beta_gamma, dtype=np.float64)
    b2 = _beta2(bg)
    wmax = max_energy_transfer(bg, mass_MeV)
    log_term = 0.5 * np.log(2.0 * ELECTRON_MASS_MEV * bg * bg * wmax / ARGON_I_MEV**2)
    bracket = log_term - b2 - 0.5 * density_effect_delta(bg, density)
    return density * K_MEV_CM2_PER_MOL * ARGON_Z_OVER_A / b2 * bracket


def restricted_mean_dedx(
    beta_gamma, mass_MeV: float, t_cut_MeV, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Restricted mean loss (energy transfers below ``t_cut_MeV`` only), MeV/cm (PDG eq. 34.13).

        <-dE/dx>_{T<Tcut} = rho K (Z/A)/beta^2 [ 1/2 ln(2 m_e c^2 beta^2 gamma^2 T_up / I^2)
                             - beta^2/2 (1 + T_up/W_max) - delta/2 ],   T_up = min(T_cut, W_max).
    """
    bg = np.asarray(beta_gamma, dtype=np.float64)
    b2 = _beta2(bg)
    wmax = max_energy_transfer(bg, mass_MeV)
    tup = np.minimum(np.asarray(t_cut_MeV, dtype=np.float64), wmax)
    log_term = 0.5 * np.log(2.0 * ELECTRON_MASS_MEV * bg * bg * tup / ARGON_I_MEV**2)
    bracket = log_term - 0.5 * b2 * (1.0 + tup / wmax) - 0.5 * density_effect_delta(bg, density)
    return density * K_MEV_CM2_PER_MOL * ARGON_Z_OVER_A / b2 * bracket


# ------------------------------------------------------------------------------------------------
# Landau-Vavilov most probable loss
# ------------------------------------------------------------------------------------------------
def landau_xi(beta_gamma, thickness_cm, density: float = LAR_DENSITY_LARNDSIM) -> np.ndarray:
    """Landau width parameter xi = (K/2) (Z/A) z^2 (rho x) / beta^2, MeV (PDG section 34.2.9).

    xi is the energy above which, on average, one collision with the free-electron (Rutherford)
    cross section happens in the thickness x: the Landau tail is P(Delta - Delta_p > E) ~ xi/E.
    """
    bg = np.asarray(beta_gamma, dtype=np.float64)
    t = np.asarray(thickness_cm, dtype=np.float64) * density
    return 0.5 * K_MEV_CM2_PER_MOL * ARGON_Z_OVER_A * t / _beta2(bg)


def landau_vavilov_mpv_loss(
    beta_gamma, thickness_cm, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Most probable energy loss Delta_p in a layer of thickness x, MeV (PDG eq. 34.12).

        Delta_p = xi [ ln(2 m c^2 beta^2 gamma^2 / I) + ln(xi / I) + j - beta^2 - delta ]

    with j = 0.200 (Bichsel). Valid in the thin-absorber (Landau) regime kappa = xi/W_max << 1; the
    particle enters only through beta*gamma (z = 1).
    """
    bg = np.asarray(beta_gamma, dtype=np.float64)
    xi = landau_xi(bg, thickness_cm, density)
    b2 = _beta2(bg)
    xi_safe = np.where(xi > 0, xi, 1.0)
    bracket = (
        np.log(2.0 * ELECTRON_MASS_MEV * bg * bg / ARGON_I_MEV)
        + np.log(xi_safe / ARGON_I_MEV)
        + LANDAU_J
        - b2
        - density_effect_delta(bg, density)
    )
    return np.where(xi > 0, xi * bracket, 0.0)


def landau_vavilov_mpv(
    beta_gamma, mass_MeV: float, thickness_cm, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Most probable dE/dx, Delta_p / x in MeV/cm, for a layer of ``thickness_cm`` (PDG eq. 34.12).

    ``mass_MeV`` is accepted for a signature uniform with :func:`bethe_bloch_mean_dedx`; eq. 34.12
    depends on the particle only through beta*gamma. Unlike the mean, the most probable dE/dx grows
    with the thickness (as ln x): for a few-GeV muon it is about 1.68 MeV/cm in 0.4 cm of LAr at
    1.38 g/cm^3 against a mean of 2.2 MeV/cm.
    """
    del mass_MeV  # eq. 34.12 has no mass dependence at fixed beta*gamma
    x = np.asarray(thickness_cm, dtype=np.float64)
    return landau_vavilov_mpv_loss(beta_gamma, x, density) / np.where(x > 0, x, 1.0)


def vavilov_kappa(
    beta_gamma, mass_MeV: float, thickness_cm, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """kappa = xi / W_max: Landau regime for kappa < ~0.01, Gaussian (Bohr) for kappa > ~10."""
    return landau_xi(beta_gamma, thickness_cm, density) / max_energy_transfer(beta_gamma, mass_MeV)


# ------------------------------------------------------------------------------------------------
# Stopping power with a low-energy continuation, and the CSDA range table
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _bethe_peak(mass_MeV: float, density: float) -> tuple[float, float]:
    """(T_peak MeV, S_peak MeV cm^2/g): maximum of the Bethe mass stopping power."""
    t = np.geomspace(1e-4, 10.0, 20001) * (mass_MeV / PROTON_MASS_MEV)
    bg = beta_gamma_from_kinetic_energy(t, mass_MeV)
    s = bethe_bloch_mean_dedx(bg, mass_MeV, density) / density
    i = int(np.argmax(s))
    return float(t[i]), float(s[i])


def stopping_power(
    kinetic_MeV, mass_MeV: float, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Electronic stopping power used for ranges, MeV/cm.

    The Bethe mean (:func:`bethe_bloch_mean_dedx`) above the maximum of the Bethe curve (for a
    proton T ~ 0.24 MeV, beta ~ 0.022) and, below it, the velocity-proportional continuation
    S = S_peak sqrt(T / T_peak) (Lindhard-Scharff), continuous at the peak. Positive for T > 0.
    """
    t = np.asarray(kinetic_MeV, dtype=np.float64)
    t_pk, s_pk = _bethe_peak(float(mass_MeV), float(density))
    bethe = bethe_bloch_mean_dedx(
        beta_gamma_from_kinetic_energy(np.maximum(t, t_pk), mass_MeV), mass_MeV, density
    )
    low = density * s_pk * np.sqrt(np.maximum(t, 0.0) / t_pk)
    return np.where(t >= t_pk, bethe, low)


class RangeTable(NamedTuple):
    """CSDA range table in mass units (density-independent apart from the density effect).

    kinetic_MeV : (n,) log-spaced kinetic energies.
    range_g_cm2 : (n,) CSDA range R(T) = int_0^T dT'/S(T') in g/cm^2 (divide by rho for cm).
    stopping_MeV_cm2_g : (n,) mass stopping power S(T)/rho.
    t_peak_MeV, s_peak_MeV_cm2_g : the matching point of the low-energy continuation.
    """

    kinetic_MeV: np.ndarray
    range_g_cm2: np.ndarray
    stopping_MeV_cm2_g: np.ndarray
    t_peak_MeV: float
    s_peak_MeV_cm2_g: float


@lru_cache(maxsize=64)
def _range_table(mass_MeV: float, density: float) -> RangeTable:
    t_pk, s_pk = _bethe_peak(mass_MeV, density)
    t = np.geomspace(1e-6 * mass_MeV / PROTON_MASS_MEV, 1e6, 6001)
    s = stopping_power(t, mass_MeV, density) / density
    # Below the peak S = s_pk sqrt(T/t_pk) integrates to R(T) = 2 sqrt(T t_pk)/s_pk exactly.
    r0 = 2.0 * math.sqrt(t[0] * t_pk) / s_pk
    integrand = t / s  # dR/dlnT
    dlnt = np.diff(np.log(t))
    r = r0 + np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * dlnt)])
    for a in (t, r, s):
        a.setflags(write=False)
    return RangeTable(t, r, s, t_pk, s_pk)


def csda_range_table(
    mass_MeV: float = PROTON_MASS_MEV, density: float = LAR_DENSITY_LARNDSIM
) -> RangeTable:
    """The (cached, read-only) CSDA range table of a particle of mass ``mass_MeV`` in LAr.

    Built on 6001 log-spaced kinetic energies from 1e-6 M/M_p MeV to 1 TeV by trapezoidal
    integration of dT/S in ln T (relative integration error < 1e-6).
    """
    return _range_table(float(mass_MeV), float(density))


def kinetic_energy_to_range(
    kinetic_MeV, mass_MeV: float = PROTON_MASS_MEV, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """CSDA range (cm) of a particle of kinetic energy T (MeV) in LAr of ``density``.

    Log-log interpolation of :func:`csda_range_table`; 0 for T <= 0. Reference points (tests): NIST
    PSTAR (argon) CSDA ranges of protons, e.g. 100 MeV -> 10.92 g/cm^2 (7.91 cm at 1.38 g/cm^3).
    """
    tab = csda_range_table(mass_MeV, density)
    t = np.asarray(kinetic_MeV, dtype=np.float64)
    tt = np.clip(t, tab.kinetic_MeV[0], tab.kinetic_MeV[-1])
    lr = np.interp(np.log(tt), np.log(tab.kinetic_MeV), np.log(tab.range_g_cm2))
    below = 2.0 * np.sqrt(np.maximum(t, 0.0) * tab.t_peak_MeV) / tab.s_peak_MeV_cm2_g
    r = np.where(t < tab.kinetic_MeV[0], below, np.exp(lr))
    return np.where(t > 0, r, 0.0) / density


def range_to_kinetic_energy(
    range_cm, mass_MeV: float = PROTON_MASS_MEV, density: float = LAR_DENSITY_LARNDSIM
) -> np.ndarray:
    """Inverse of :func:`kinetic_energy_to_range`: kinetic energy (MeV) for a CSDA range (cm)."""
    tab = csda_range_table(mass_MeV, density)
    r = np.asarray(range_cm, dtype=np.float64) * density
    rr = np.clip(r, tab.range_g_cm2[0], tab.range_g_cm2[-1])
    lt = np.interp(np.log(rr), np.log(tab.range_g_cm2), np.log(tab.kinetic_MeV))
    below = (np.maximum(r, 0.0) * tab.s_peak_MeV_cm2_g / 2.0) ** 2 / tab.t_peak_MeV
    t = np.where(r < tab.range_g_cm2[0], below, np.exp(lt))
    return np.where(r > 0, t, 0.0)


# ------------------------------------------------------------------------------------------------
# JAX: dE/dx and kinetic energy as functions of the residual range (stopping-particle prior mean)
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _residual_range_grid(
    mass_MeV: float, density: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ln R [g/cm^2], ln S [MeV cm^2/g], ln T [MeV]) on 1024 log-spaced R in 1e-5..1e5 g/cm^2."""
    log_r = np.linspace(math.log(1e-5), math.log(1e5), 1024)
    t = range_to_kinetic_energy(np.exp(log_r) / density, mass_MeV, density)
    s = stopping_power(t, mass_MeV, density) / density
    return log_r, np.log(s), np.log(t)


def _check_static(mass_MeV, density) -> tuple[float, float]:
    try:
        return float(mass_MeV), float(density)
    except TypeError as exc:  # a tracer: the table is built on the host per (mass, density)
        raise TypeError(
            "mass_MeV and density must be concrete Python numbers (the range table is built on the "
            "host); mark them static when jitting"
        ) from exc


def _interp_log_range(residual_range_cm, mass_MeV, density, column: int):
    m, rho = _check_static(mass_MeV, density)
    log_r, log_s, log_t = _residual_range_grid(m, rho)
    fp = (log_s, log_t)[column]
    r = jnp.asarray(residual_range_cm)
    dtype = r.dtype if jnp.issubdtype(r.dtype, jnp.floating) else jnp.result_type(float)
    r_min = math.exp(log_r[0])
    # Clamp before the log: below 1e-5 g/cm^2 (70 nm) and beyond 1e5 g/cm^2 the value is held
    # constant, so both the value and the gradient (zero there) stay finite, also at R <= 0.
    lr = jnp.log(jnp.clip(r.astype(dtype) * rho, r_min, math.exp(log_r[-1])))
    return jnp.exp(jnp.interp(lr, jnp.asarray(log_r, dtype), jnp.asarray(fp, dtype)))


def dedx_from_residual_range(
    residual_range_cm, mass_MeV: float = PROTON_MASS_MEV, density: float = LAR_DENSITY_LARNDSIM
):
    """Mean dE/dx (MeV/cm) of a stopping particle at residual range R (cm): the Bragg curve.

    dE/dx(R) = rho S(T(R)) with T(R) the inverse CSDA range. Pure JAX (jit/grad/vmap safe):
    piecewise-linear interpolation of ln S against ln(rho R) on a host-built grid of 1024 points
    (1e-5 to 1e5 g/cm^2; agrees with the float64 host table to 0.2 % in float32). R is clamped to
    the grid, so the result and its gradient are finite everywhere, including R = 0, negative R and
    R beyond the table (the gradient is zero where clamped). ``mass_MeV`` and ``density`` must be
    concrete numbers. For a proton at 1.38 g/cm^3: 2.9 MeV/cm at R = 100 cm, 6.5 at 10 cm, 13.0 at
    2 cm, 24 at 0.5 cm, peaking near 380 MeV/cm in the last few micrometres.
    """
    return _interp_log_range(residual_range_cm, mass_MeV, density, 0) * density


#: Alias named after the issue text.
residual_range_to_dedx = dedx_from_residual_range


def kinetic_energy_from_residual_range(
    residual_range_cm, mass_MeV: float = PROTON_MASS_MEV, density: float = LAR_DENSITY_LARNDSIM
):
    """Kinetic energy T(R) (MeV) of a stopping particle with residual range R (cm); pure JAX.

    The energy deposited between residual ranges R1 > R2 is T(R1) - T(R2), so the segment-averaged
    dE/dx of a latent segment is (T(R1) - T(R2))/(R1 - R2). Same clamping as
    :func:`dedx_from_residual_range` (T is held at its value at 1e-5 g/cm^2 below it, ~1e-4 MeV).
    """
    return _interp_log_range(residual_range_cm, mass_MeV, density, 1)


# ------------------------------------------------------------------------------------------------
# Multiple scattering
# ------------------------------------------------------------------------------------------------
def radiation_length_cm(density: float = LAR_DENSITY_LARNDSIM) -> float:
    """X0 of argon in cm: 19.55 g/cm^2 / rho (14.0 cm at 1.396 g/cm^3, 14.17 cm at 1.38)."""
    return ARGON_X0_G_CM2 / density


def highland_theta0(
    p_MeV, beta, step_cm, density: float = LAR_DENSITY_LARNDSIM, log_length_cm=None
) -> np.ndarray:
    """Plane-projected rms scattering angle (rad), Highland/Lynch-Dahl formula (PDG eq. 34.16).

        theta0 = 13.6 MeV / (beta c p) sqrt(x/X0) [1 + 0.038 ln(x z^2 / (X0 beta^2))]

    The logarithmic term makes theta0 not additive in quadrature: applied step by step to thin
    steps it underestimates the deflection of the whole track. Passing ``log_length_cm`` (the total
    path) evaluates the bracket for that length while sqrt(x/X0) uses the step, so that the sum in
    quadrature over the steps reproduces Highland for the full path.
    """
    x0 = radiation_length_cm(density)
    x = np.asarray(step_cm, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    lx = x if log_length_cm is None else np.asarray(log_length_cm, dtype=np.float64)
    bracket = 1.0 + 0.038 * np.log(np.maximum(lx, 1e-12) / (x0 * b * b))
    p = np.asarray(p_MeV, dtype=np.float64)
    return 13.6 / (b * p) * np.sqrt(x / x0) * np.maximum(bracket, 0.0)


# ------------------------------------------------------------------------------------------------
# delta-ray cut: electron range (Katz & Penfold)
# ------------------------------------------------------------------------------------------------
def electron_range_katz_penfold(kinetic_MeV) -> np.ndarray:
    """Practical range of electrons (g/cm^2), Katz & Penfold, Rev. Mod. Phys. 24 (1952) 28.

    R = 0.412 T^(1.265 - 0.0954 ln T) for T <= 2.5 MeV and R = 0.530 T - 0.106 above (T in MeV);
    nearly material independent in mass units for low-Z media.
    """
    t = np.maximum(np.asarray(kinetic_MeV, dtype=np.float64), 1e-12)
    low = 0.412 * t ** (1.265 - 0.0954 * np.log(t))
    return np.where(t <= 2.5, low, 0.530 * t - 0.106)


def delta_ray_cut_for_thickness(thickness_cm, density: float = LAR_DENSITY_LARNDSIM) -> np.ndarray:
    """Kinetic energy (MeV) of an electron whose range equals the layer ``thickness_cm``.

    Knock-on electrons above this energy leave the segment (in edep-sim they are separate tracks),
    so a segment's own deposit is cut there: 1.26 MeV for 0.4 cm at 1.38 g/cm^3.
    """
    grid = np.geomspace(1e-4, 1e3, 2001)
    rng = electron_range_katz_penfold(grid)
    r = np.asarray(thickness_cm, dtype=np.float64) * density
    return np.exp(np.interp(np.log(np.maximum(r, 1e-30)), np.log(rng), np.log(grid)))


# ------------------------------------------------------------------------------------------------
# Fluctuations: truncated Landau (thin layers) and a Vavilov-type sampler (any kappa)
# ------------------------------------------------------------------------------------------------
def landau_loc_scale(mpv_MeV, xi_MeV) -> tuple[np.ndarray, np.ndarray]:
    """scipy.stats.landau (loc, scale) of the Landau loss density with mode Delta_p and width xi.

    The classical Landau variable is lambda = (Delta - Delta_p)/xi + lambda_mode, lambda_mode =
    -0.22278; scipy's standard variable x satisfies lambda = (pi/2) x + ln(pi/2). Hence
    Delta = loc + scale x with scale = (pi/2) xi and loc = Delta_p + xi (ln(pi/2) - lambda_mode).
    """
    xi = np.asarray(xi_MeV, dtype=np.float64)
    loc = np.asarray(mpv_MeV, dtype=np.float64) + xi * (_LANDAU_SHIFT - LANDAU_LAMBDA_MODE)
    return loc, _LANDAU_SCALE * xi


@lru_cache(maxsize=1)
def _landau_moment_tables() -> tuple[np.ndarray, ...]:
    """Standard (scipy) Landau: grid x, CDF F(x), partial moments M_n = int x^n f (n = 1, 2, 3)."""
    x = np.concatenate([np.linspace(-6.0, 20.0, 26001), np.geomspace(20.0, 1e7, 8001)[1:]])
    f = stats.landau.pdf(x)
    cdf = stats.landau.cdf(x)
    dx = np.diff(x)

    def partial(n):
        y = x**n * f
        return np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * dx)])

    return x, cdf, partial(1), partial(2), partial(3)


def truncated_landau_standard_cumulants(x_max) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and third central moment (cumulant) of the standard (scipy) Landau variable
    truncated to x <= x_max.

    Partial moments are integrated on a dense grid (x from -6, where the density is < 1e-40, to
    1e7); the upper tail f ~ (2/pi)/x^2 makes the untruncated mean infinite and the truncated mean
    grow as (2/pi) ln x_max, the variance as (2/pi) x_max and the third moment as x_max^2/pi.
    """
    x, cdf, m1, m2, m3 = _landau_moment_tables()
    xm = np.clip(np.asarray(x_max, dtype=np.float64), x[0] + 1e-9, x[-1])
    f = np.interp(xm, x, cdf)
    mean = np.interp(xm, x, m1) / f
    e2 = np.interp(xm, x, m2) / f
    e3 = np.interp(xm, x, m3) / f
    var = e2 - mean**2
    return mean, var, e3 - 3 * mean * e2 + 2 * mean**3


def truncated_landau_standard_moments(x_max) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the standard (scipy) Landau variable truncated to x <= x_max
    (:func:`truncated_landau_standard_cumulants`)."""
    mean, var, _ = truncated_landau_standard_cumulants(x_max)
    return mean, var


def truncated_landau_mean(mpv_MeV, xi_MeV, max_loss_MeV) -> np.ndarray:
    """Mean energy loss (MeV) of the Landau density (mode Delta_p, width xi) cut at ``max_loss``."""
    loc, scale = landau_loc_scale(mpv_MeV, xi_MeV)
    mean, _ = truncated_landau_standard_moments((np.asarray(max_loss_MeV) - loc) / scale)
    return loc + scale * mean


def sample_truncated_landau(
    rng: np.random.Generator, mpv_MeV, xi_MeV, max_loss_MeV
) -> np.ndarray:
    """Draw energy losses (MeV) from the Landau density truncated to [0, max_loss_MeV].

    Exact inverse-CDF sampling: u ~ U(F(x_lo), F(x_hi)), x = F^-1(u), Delta = loc + scale x
    (:func:`landau_loc_scale`). The cut at ``max_loss`` ~ Delta_p + T_cut removes the events with a
    knock-on electron above T_cut (the Landau tail is P(Delta - Delta_p > E) ~ xi/E).
    """
    loc, scale = landau_loc_scale(mpv_MeV, xi_MeV)
    loc, scale, hi = np.broadcast_arrays(loc, scale, np.asarray(max_loss_MeV, dtype=np.float64))
    f_lo = stats.landau.cdf(-loc / scale)
    f_hi = stats.landau.cdf((hi - loc) / scale)
    u = f_lo + (f_hi - f_lo) * rng.uniform(size=loc.shape)
    u = np.clip(u, 1e-300, 1.0 - 1e-16)
    return np.clip(loc + scale * stats.landau.ppf(u), 0.0, hi)


def sample_vavilov_loss(
    rng: np.random.Generator,
    mean_MeV,
    xi_MeV,
    wmax_MeV,
    beta2,
    n_hard: float = 30.0,
) -> np.ndarray:
    """Energy-loss fluctuations for any kappa = xi/W_max (Landau -> Vavilov -> Gaussian), MeV.

    Vavilov's density is that of the total loss from collisions with the free-electron cross section
    d sigma/dE ~ (xi/E^2) (1 - beta^2 E/W_max) on (0, W_max]. We sample it as a compound Poisson sum
    of the "hard" collisions above eps = xi/(n_hard + kappa) (expected number xi (1/eps - 1/W_max) =
    n_hard, thinned by (1 - beta^2 E/W_max)) plus a Gaussian for the many soft collisions below eps,
    with variance xi eps (1 - beta^2 eps / (2 W_max)) (its skewness is 0.5 n_hard^-1/2 ~ 0.09). The
    total is shifted so that its mean is ``mean_MeV`` (the Bethe/CSDA mean loss); its variance is
    exactly Bohr's xi W_max (1 - beta^2/2).

    Why Gaussian at large kappa: when the layer is thick enough that xi >> W_max, every single
    collision is small against the total loss and there are many of them, so the sum is Gaussian by
    the central limit theorem (PDG: Vavilov -> Gaussian for kappa >~ 10; the Landau tail is cut at
    W_max). For a stopping proton in 0.4 cm of LAr kappa ~ 1 at 125 MeV and grows to > 10 below
    ~40 MeV, so the end of the track is Gaussian-fluctuated and the start Vavilov-like. Result
    clipped at 0.
    """
    mean, xi, w, b2 = np.broadcast_arrays(
        *(np.asarray(a, dtype=np.float64) for a in (mean_MeV, xi_MeV, wmax_MeV, beta2))
    )
    kappa = xi / w
    eps = xi / (n_hard + kappa)
    n = rng.poisson(n_hard, size=mean.shape)
    idx = np.repeat(np.arange(mean.size), n.ravel())
    u = rng.uniform(size=idx.size)
    inv_e = 1.0 / eps.ravel()[idx] - u * (1.0 / eps.ravel()[idx] - 1.0 / w.ravel()[idx])
    e = 1.0 / inv_e
    keep = rng.uniform(size=idx.size) < 1.0 - b2.ravel()[idx] * e / w.ravel()[idx]
    hard = np.bincount(idx, weights=np.where(keep, e, 0.0), minlength=mean.size).reshape(mean.shape)
    mean_hard = xi * (np.log(w / eps) - b2 * (1.0 - eps / w))
    var_soft = xi * eps * (1.0 - b2 * eps / (2.0 * w))
    soft = rng.normal(size=mean.shape) * np.sqrt(var_soft)
    return np.maximum(mean + hard - mean_hard + soft, 0.0)
