r"""Scintillation yield: the quanta of an energy deposit shared between charge and light.

An energy deposit dE (MeV) in liquid argon makes ``N_q = dE / W_ph`` quanta, W_ph = 19.5 eV
(larnd-sim ``consts/light.py`` ``W_PH``; Doke et al., Jpn. J. Appl. Phys. 41 (2002) 1538): ion
pairs ``n_i = dE / W_ion`` (W_ion = 23.6 eV, Miyajima et al., Phys. Rev. A 10 (1974) 1452) and
excitons ``n_ex = N_q - n_i``. Consistency: ``n_ex / n_i = W_ion / W_ph - 1 = 23.6 / 19.5 - 1
= 0.2103``, the measured ratio 0.21 (Doke et al. 2002; Kubota et al., Phys. Rev. B 20 (1979)
3486). A fraction R of the ion pairs escapes recombination (the charge model's ``recombination``,
Birks or Box) and drifts; the rest recombine into excitons, and every exciton emits one 128 nm
photon:

.. math::

    n_e = R\, n_i, \qquad n_\gamma = n_i (1 - R) + n_{ex}
             = \frac{dE}{W_{ph}} - R \frac{dE}{W_{ion}},

so ``n_e + n_ph = dE / W_ph`` at every R (quanta conservation), and charge and light are
anti-correlated through A_B, k_B, E and dE/dx. This is larnd-sim's ``n_ph = dE/W_PH - n_e``
(``quenching.py``, SCINT_PRESCALE = 1). No exciton quenching (biexcitonic or Hitachi) is modelled:
for MIPs it is below 5 % (Doke 2002), and it would enter as a dE/dx-dependent factor on n_ex.

The card's ``excitation_ratio`` and ``w_ph_MeV`` are two statements of the same physics; the yield
uses W_ph and W_ion (so conservation is exact) and :func:`check_quanta_consistency` compares the
implied ratio with the card's.
"""

from __future__ import annotations

import jax.numpy as jnp

from ..detector import DetectorParams, Physics
from ..detector.physics import recombination

#: W_ph, MeV per scintillation quantum (larnd-sim consts/light.py W_PH; Doke et al. 2002)
W_PH_MEV = 19.5e-6
#: n_ex / n_i (Doke et al. 2002)
EXCITATION_RATIO = 0.21


def quanta(dE, R, w_ion_MeV: float, w_ph_MeV: float = W_PH_MEV):
    """Electrons and photons of deposits ``dE`` (MeV) with recombination survival ``R``.

    Returns ``(n_e, n_ph)`` with ``n_e = R dE/W_ion`` and ``n_ph = dE/W_ph - R dE/W_ion``
    (photons, before any detection).
    """
    n_i = dE / w_ion_MeV
    n_e = R * n_i
    return n_e, dE / w_ph_MeV - n_e


def photon_yield(dE, dEdx, params: DetectorParams, physics: Physics,
                 w_ph_MeV: float = W_PH_MEV):
    """Scintillation photons of segments with deposits dE (MeV) at dE/dx (MeV/cm).

    The recombination survival R is the charge model's (:func:`lartpc_bayes.detector.physics.
    recombination`), at the drift field ``params.E``.
    """
    R = recombination(dEdx, params, physics)
    return quanta(dE, R, physics.w_ion_MeV, w_ph_MeV)[1]


def photons_per_MeV(dEdx, params: DetectorParams, physics: Physics,
                    w_ph_MeV: float = W_PH_MEV):
    """Light yield ``n_ph / dE`` in photons per MeV (about 2.5e4 for a MIP at 0.5 kV/cm)."""
    return photon_yield(jnp.ones_like(jnp.asarray(dEdx, jnp.float32)), dEdx, params, physics,
                        w_ph_MeV)


def check_quanta_consistency(w_ion_MeV: float, w_ph_MeV: float, excitation_ratio: float,
                             rtol: float = 0.01) -> float:
    """The exciton-to-ion ratio implied by the work functions, ``W_ion/W_ph - 1``; raises if it
    differs from ``excitation_ratio`` by more than ``rtol`` (relative)."""
    implied = w_ion_MeV / w_ph_MeV - 1.0
    if abs(implied - excitation_ratio) > rtol * excitation_ratio:
        raise ValueError(
            f"W_ion/W_ph - 1 = {implied:.4f} disagrees with n_ex/n_i = {excitation_ratio}"
        )
    return implied
