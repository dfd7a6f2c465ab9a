r"""Hits -> 3-D points in (u, v, t_drift): one point per pixel channel (event, pixel).

A LArPix hit is a threshold crossing at tick ``k`` (ticks of ``dt`` from the event's t = 0) with
the charge integrated over the following hold window. The package's hit files and the packet/flow
readers already express ticks relative to the event t0 (the trigger / flow event t0 / the
``lartpc_bayes/events`` table of a packet file), so by default

.. math:: t_{drift} = (k + 1/2)\, dt - t_0, \qquad t_0 = 0,

(the crossing lies uniformly inside its tick). ``t0_us`` overrides it per event;
``t0="crossing"`` (:func:`crossing_t0`) takes it from an anode-cathode-crossing track itself.

Per pixel channel the point keeps the in-plane pixel centre ``(u, v)`` (cm), the drift time of
its first and last crossing (us), the number of hits and the summed charge (electrons, ADC bin
centres). The nominal drift distance ``d = v_d(E_nom) t_drift`` is only used for clustering and
for placing segments on the host; the model recomputes it with the sampled E
(:mod:`lartpc_bayes.reco.geometry`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..data import Hits
from ..detector import DetectorCard
from ..detector import geometry as geo
from ..detector.physics import drift_velocity


class Points(NamedTuple):
    """One entry per pixel channel; all arrays (P,).

    event, tpc, pixel : ids. u, v : pixel centre in the plane, cm (card plane axes).
    t_first, t_last : drift time (us, from the event t0) of the first / last crossing.
    n_hits : hits on the channel. charge : summed charge, electrons.
    """

    event: np.ndarray
    tpc: np.ndarray
    pixel: np.ndarray
    u: np.ndarray
    v: np.ndarray
    t_first: np.ndarray
    t_last: np.ndarray
    n_hits: np.ndarray
    charge: np.ndarray

    @property
    def n(self) -> int:
        return int(self.pixel.shape[0])

    def select(self, m: np.ndarray) -> Points:
        return Points(*(np.asarray(a)[m] for a in self))


def nominal_drift_velocity(card: DetectorCard) -> float:
    """v_d at the card's nominal E, cm/us (the placement velocity of reconstructed points)."""
    return float(drift_velocity(card.param("E").nominal, card.physics.temperature_K))


def adc_charge(adc: np.ndarray, card: DetectorCard) -> np.ndarray:
    """Charge (electrons) at the centre of ADC bin ``adc`` (ndlar_flow's convention)."""
    el = card.electronics
    g = el.gain_mV_per_ke * 1e-3
    return (np.asarray(adc, np.float64) * (el.v_ref_mV - el.v_cm_mV) / el.adc_counts
            + el.v_cm_mV - el.v_pedestal_mV) / g


def hits_to_points(
    hits: Hits, card: DetectorCard, t0_us: dict[int, float] | float | None = None
) -> Points:
    """Group hits by (event, pixel) into :class:`Points`.

    t0_us : event t0 (us) subtracted from the hit times: a mapping event id -> t0, one number for
        all events, or None (0: the hit ticks are already relative to the event t0).
    """
    h = hits.sorted()
    if h.n == 0:
        z = np.zeros(0)
        zi = np.zeros(0, np.int64)
        return Points(zi, zi, zi, z, z, z, z, zi, z)
    dt = card.electronics.tick_us
    t = (h.tick.astype(np.float64) + 0.5) * dt
    if isinstance(t0_us, dict):
        missing = sorted(set(np.unique(h.event_id).tolist()) - set(t0_us))
        if missing:
            raise ValueError(f"t0_us has no entry for event(s) {missing[:5]}")
        t = t - np.array([t0_us[int(e)] for e in h.event_id])
    elif t0_us is not None:
        t = t - float(t0_us)
    key = np.stack([h.event_id, h.pixel_id], 1)
    uk, first, inv, cnt = np.unique(key, axis=0, return_index=True, return_inverse=True,
                                    return_counts=True)
    inv = inv.ravel()
    last = first + cnt - 1  # hits are sorted by (event, pixel, tick)
    q = np.bincount(inv, weights=adc_charge(h.adc, card), minlength=uk.shape[0])
    centre = geo.pixel_center(card, uk[:, 1])
    tpc, _, _ = geo.pixel_from_id(card, uk[:, 1])
    pa = card.geometry.plane_axes
    return Points(uk[:, 0].astype(np.int64), tpc.astype(np.int64), uk[:, 1].astype(np.int64),
                  centre[:, pa[0]], centre[:, pa[1]], t[first], t[last], cnt.astype(np.int64), q)


def drift_to_position(card: DetectorCard, tpc: np.ndarray, d_cm: np.ndarray) -> np.ndarray:
    """Drift-axis coordinate (cm) of points at drift distance ``d_cm`` from their TPC's anode:
    ``z = anode - sign d`` (inverse of :func:`lartpc_bayes.detector.drift_distance`)."""
    g = card.geometry
    anode = np.array([t.anode_cm for t in g.tpcs])[tpc]
    sign = np.array([t.drift_sign for t in g.tpcs])[tpc]
    return anode - sign * np.asarray(d_cm)


def crossing_t0(
    t_drift_us: np.ndarray, card: DetectorCard, tpc: int, tolerance: float = 0.03
) -> float | None:
    r"""t0 of an anode-cathode-crossing track from its own drift-time span, or None.

    A track that crosses the whole drift volume has first arrival at the anode (t_drift = t0)
    and last at the cathode (t0 + L / v_d). Its span ``t_max - t_min`` must equal ``L / v_d(E)``
    for some E in the card's prior range (widened by ``tolerance``); then ``t0 = t_min`` (the
    anode end, independent of E). Otherwise None (the track does not cross; use the file's t0).
    """
    t = np.asarray(t_drift_us, np.float64)
    if t.size < 2:
        return None
    L = card.geometry.tpcs[tpc].drift_length_cm
    spec = card.param("E")
    T = card.physics.temperature_K
    v_lo = float(drift_velocity(spec.low, T))
    v_hi = float(drift_velocity(spec.high, T))
    span = float(t.max() - t.min())
    if L / v_hi * (1 - tolerance) <= span <= L / v_lo * (1 + tolerance):
        return float(t.min())
    return None
