r"""Light likelihood: photo-electrons per channel per event, and its stochastic simulation.

For event e and channel c the expected photo-electron count is

.. math::

    \mu_{ec} = g \sum_{s \in e} n_\gamma(s)\, \bar V_c(s) + b, \qquad
    n_\gamma(s) = \frac{dE_s}{W_{ph}} - R(dE/dx_s; \theta) \frac{dE_s}{W_{ion}},

with ``dE_s = (dE/dx)_s dx_s`` (the same dE/dx latents as the charge model), ``V_c`` the
visibility (pe per photon, PDE included) averaged over ``n_points`` points along the segment, g
the relative light gain (optional calibration parameter, nominal 1) and b the dark counts per
channel and event (card ``dark_pe``). Observed counts are Poisson, ``n_ec ~ Poisson(mu_ec)``;
the Poisson-Gaussian option replaces it by ``Normal(mu, sqrt(ENF mu + sigma_pe^2))`` (SiPM excess
noise factor and electronic noise, continuous pe). The light is time-integrated: the singlet /
triplet structure (card ``singlet_fraction``, ``tau_s_us``, ``tau_t_us``) is not used.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Segments
from ..detector import DetectorParams, Physics
from .card import LightCard
from .library import PhotonLibrary, visibility
from .scintillation import photon_yield


class LightData(NamedTuple):
    """Observed light: ``pe[e, c]`` photo-electrons of event ``event_id[e]`` in channel c."""

    event_id: np.ndarray  # (E,) int64
    pe: np.ndarray  # (E, C) float64 (integers for the Poisson likelihood)


class LightPlan(NamedTuple):
    """Host-side, fixed geometry of the light of a segment set.

    vis       : (N, C) mean visibility of each segment (pe per photon)
    seg_event : (N,) index of each segment's event in ``event_id``
    dx        : (N,) segment length, cm
    event_id  : (E,) event ids
    """

    vis: np.ndarray
    seg_event: np.ndarray
    dx: np.ndarray
    event_id: np.ndarray

    @property
    def n_events(self) -> int:
        return int(self.event_id.size)


def segment_points(segments: Segments, n_points: int) -> np.ndarray:
    """(N, n_points, 3) points at the centres of ``n_points`` equal pieces of each segment."""
    f = (np.arange(n_points) + 0.5) / n_points
    s, e = np.asarray(segments.start), np.asarray(segments.end)
    return s[:, None, :] + f[None, :, None] * (e - s)[:, None, :]


def plan_light(card: LightCard, segments: Segments, *, source=None, n_points: int = 3,
               attenuation_cm: float | None = None) -> LightPlan:
    """Visibility of every segment from ``source``: None (geometric visibility, the truth of the
    fake data), a :class:`~lartpc_bayes.light.library.PhotonLibrary` (trilinear look-up) or a
    trained :class:`~lartpc_bayes.light.siren.Siren`."""
    pts = segment_points(segments, n_points).reshape(-1, 3)
    if source is None:
        v = visibility(card, pts, attenuation_cm=attenuation_cm)
    elif isinstance(source, PhotonLibrary):
        v = source.lookup(card, pts)
    else:
        from .siren import channel_mask, predict

        v = np.asarray(predict(source, jnp.asarray(pts, jnp.float32),
                               jnp.asarray(channel_mask(card, pts))))
    vis = v.reshape(segments.n, n_points, -1).mean(1)
    ev, seg_event = np.unique(np.asarray(segments.event_id), return_inverse=True)
    return LightPlan(vis.astype(np.float32), seg_event.ravel().astype(np.int64),
                     np.asarray(segments.dx, np.float32), ev.astype(np.int64))


def expected_pe(plan: LightPlan, dEdx_seg, params: DetectorParams, physics: Physics,
                card: LightCard, gain=1.0):
    """Expected photo-electrons (E, C) of every event and channel (module docstring)."""
    dEdx_seg = jnp.asarray(dEdx_seg)
    n_ph = photon_yield(dEdx_seg * jnp.asarray(plan.dx), dEdx_seg, params, physics,
                        card.w_ph_MeV)
    per_seg = n_ph[:, None] * jnp.asarray(plan.vis, n_ph.dtype)
    signal = jax.ops.segment_sum(per_seg, jnp.asarray(plan.seg_event),
                                 num_segments=plan.n_events)
    return gain * signal + card.dark_pe


def poisson_log_likelihood(mu, pe):
    """Sum over events and channels of ``n log mu - mu - log n!``."""
    from jax.scipy.special import gammaln

    return jnp.sum(pe * jnp.log(mu) - mu - gammaln(pe + 1.0))


def poisson_gaussian_log_likelihood(mu, pe, excess_noise_factor: float, sigma_pe: float):
    """Gaussian approximation of the SiPM response: ``N(pe | mu, ENF mu + sigma_pe^2)``."""
    var = excess_noise_factor * mu + sigma_pe**2
    return jnp.sum(-0.5 * (pe - mu) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var))


def simulate_light(seed: int, plan: LightPlan, dEdx_seg: np.ndarray, params: DetectorParams,
                   physics: Physics, card: LightCard, gain: float = 1.0,
                   noise: str = "poisson") -> LightData:
    """Stochastic light of the segments: Poisson pe (``noise='poisson'``), Poisson then Gaussian
    SiPM smearing (``'poisson_gaussian'``: ``n + N(0, sqrt((ENF - 1) n + sigma_pe^2))``), or the
    expectation (``'none'``)."""
    # float32 is ample: the relative rounding (1e-7) is far below the Poisson sd of mu >= 0.5
    mu = np.asarray(expected_pe(plan, np.asarray(dEdx_seg, np.float32), params, physics, card,
                                gain), np.float64)
    rng = np.random.default_rng(seed)
    if noise == "none":
        pe = mu
    elif noise == "poisson":
        pe = rng.poisson(mu).astype(np.float64)
    elif noise == "poisson_gaussian":
        n = rng.poisson(mu).astype(np.float64)
        sd = np.sqrt(np.maximum(card.excess_noise_factor - 1.0, 0.0) * n + card.sigma_pe**2)
        pe = n + sd * rng.standard_normal(n.shape)
    else:
        raise ValueError(f"noise must be poisson, poisson_gaussian or none, got {noise!r}")
    return LightData(plan.event_id.copy(), pe)
