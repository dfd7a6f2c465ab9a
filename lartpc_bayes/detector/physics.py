"""Microphysics of ionisation charge in liquid argon: recombination, drift, lifetime, diffusion.

Pure JAX functions of the calibration parameters (:class:`DetectorParams`, a pytree) and of the
static card constants. Units: dE/dx in MeV/cm, E in kV/cm, densities in g/cm^3, times in us,
lengths in cm, diffusion coefficients in cm^2/us, charges in electrons.

Sources (see ``shared/references/larnd-sim.md`` section 1):

* Birks: ``R = A_B / (1 + k_B (dE/dx) / (E rho))``, A_B = 0.800, k_B = 0.0486 (kV/cm)(g/cm^2)/MeV
  (ICARUS, Amoruso et al., NIM A 523 (2004) 275).
* Modified Box: ``R = ln(alpha + xi) / xi``, ``xi = beta (dE/dx) / (E rho)``, alpha = 0.93,
  beta = 0.207 (kV/cm)(g/cm^2)/MeV (ArgoNeuT, JINST 8 (2013) P08005), clipped at 0 as in larnd-sim.
* W_ion = 23.6 eV per electron-ion pair (Miyajima et al., Phys. Rev. A 10 (1974) 1452).
* Electron mobility: Walkowiak parametrisation (NIM A 449 (2000) 288, as the BNL LAr properties page
  and larnd-sim ``electron_mobility``), ``v_d = E mu(E, T)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.special import ndtr

from .card import PARAM_NAMES, DetectorCard, Physics

#: Walkowiak mobility coefficients a0..a5 (E in kV/cm, mu in cm^2/(kV us) after the 1e-3 factor).
MOBILITY_A = (551.6, 7158.3, 4440.43, 4.29, 43.63, 0.2053)
#: Reference temperature of the parametrisation, K.
MOBILITY_T0_K = 89.0


class DetectorParams(NamedTuple):
    """The six calibration parameters in physical units (scalars or arrays, a JAX pytree).

    A_B : Birks amplitude (dimensionless)
    k_B : Birks constant, (kV/cm)(g/cm^2)/MeV
    E   : drift field, kV/cm
    tau : electron lifetime, us
    D_L : longitudinal diffusion coefficient, cm^2/us
    D_T : transverse diffusion coefficient, cm^2/us
    """

    A_B: float
    k_B: float
    E: float
    tau: float
    D_L: float
    D_T: float

    @staticmethod
    def from_dict(d: dict[str, float]) -> DetectorParams:
        missing = [k for k in PARAM_NAMES if k not in d]
        if missing:
            raise KeyError(f"missing calibration parameter(s) {missing}")
        return DetectorParams(*(d[k] for k in PARAM_NAMES))

    def to_dict(self) -> dict[str, float]:
        return dict(zip(PARAM_NAMES, self, strict=True))


def nominal_params(card: DetectorCard, **overrides: float) -> DetectorParams:
    """Nominal parameters of a card, optionally overriding some (``tau=1500.0``)."""
    d = card.nominal()
    unknown = set(overrides) - set(d)
    if unknown:
        raise KeyError(f"unknown calibration parameter(s) {sorted(unknown)}; known: {PARAM_NAMES}")
    d.update({k: float(v) for k, v in overrides.items()})
    return DetectorParams.from_dict(d)


def birks_recombination(dEdx, E, A_B, k_B, density: float):
    """Birks recombination survival fraction ``A_B / (1 + k_B dEdx / (E rho))``."""
    return A_B / (1.0 + k_B * dEdx / (E * density))


def box_recombination(dEdx, E, alpha: float, beta: float, density: float):
    """Modified Box survival fraction ``max(0, ln(alpha + xi)/xi)``, ``xi = beta dEdx/(E rho)``.

    The xi -> 0 limit is handled with the double-where trick so values and gradients stay finite;
    there the model is unphysical (ln(alpha)/xi < 0) and the fraction is clipped at 0, as larnd-sim.
    """
    xi = beta * dEdx / (E * density)
    ok = xi > 1e-6
    xs = jnp.where(ok, xi, 1.0)
    r = jnp.where(ok, jnp.log(alpha + xs) / xs, 0.0)
    return jnp.maximum(r, 0.0)


def recombination(dEdx, params: DetectorParams, physics: Physics):
    """Recombination survival fraction with the card's model (Birks uses A_B, k_B from params)."""
    if physics.recombination == "box":
        return box_recombination(
            dEdx, params.E, physics.box_alpha, physics.box_beta, physics.lar_density_g_cm3
        )
    return birks_recombination(dEdx, params.E, params.A_B, params.k_B, physics.lar_density_g_cm3)


def ionization_electrons(dE, dEdx, params: DetectorParams, physics: Physics):
    """Electrons escaping recombination: ``n_e = R(dEdx) dE / W_ion`` (dE in MeV)."""
    return recombination(dEdx, params, physics) * dE / physics.w_ion_MeV


def electron_mobility(E, temperature_K: float):
    """Electron mobility in LAr, cm^2/(kV us), Walkowiak parametrisation.

    ``mu = (a0 + a1 E + a2 E^1.5 + a3 E^2.5) / (1 + (a1/a0) E + a4 E^2 + a5 E^3) (T/89)^-1.5 1e-3``
    """
    a0, a1, a2, a3, a4, a5 = MOBILITY_A
    num = a0 + a1 * E + a2 * E**1.5 + a3 * E**2.5
    den = 1.0 + (a1 / a0) * E + a4 * E**2 + a5 * E**3
    return num / den * (temperature_K / MOBILITY_T0_K) ** -1.5 * 1e-3


def drift_velocity(E, temperature_K: float):
    """Electron drift velocity ``v_d = E mu(E, T)``, cm/us (0.15965 at 0.5 kV/cm, 87.17 K)."""
    return E * electron_mobility(E, temperature_K)


def lifetime_factor(t_drift_us, tau_us):
    """Fraction of electrons surviving attachment after ``t_drift_us``: ``exp(-t/tau)``."""
    return jnp.exp(-t_drift_us / tau_us)


def diffusion_sigma(D_cm2_us, t_drift_us, floor_cm: float = 0.0):
    """Gaussian diffusion width ``sqrt(2 D t + floor^2)``, cm.

    The floor (default 0) keeps the width, and derivatives with respect to it, finite for charge
    produced on the anode plane itself.
    """
    return jnp.sqrt(2.0 * D_cm2_us * t_drift_us + floor_cm**2)


def pad_fraction(lo_cm, hi_cm, sigma_cm):
    """Fraction of a 1-D Gaussian of width sigma centred at 0 inside [lo, hi] (lo < hi), cm.

    Evaluated as a difference of normal CDFs taken in the tail where both are small, so the
    cancellation error never exceeds float rounding of the smaller tail: for lo > 0 use
    ``Phi(-lo) - Phi(-hi)``.
    """
    a = lo_cm / sigma_cm
    b = hi_cm / sigma_cm
    upper = a > 0
    return jnp.where(upper, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))
