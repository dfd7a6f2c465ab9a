r"""Segments -> expected cumulative charge on pixels (the collection model).

Every segment is chopped on the host into sub-points of length <= ``step_cm`` (default 0.04 cm,
small against the diffusion widths; the step error is measured in ``tests/test_charge.py``).
Sub-point i carries ``dl_i`` cm of its segment s(i) and, for a segment dE/dx (MeV/cm, the latent of
the model),

.. math:: n_i = R(\mathrm{dE/dx}_s)\, \mathrm{dE/dx}_s\, dl_i / W_{ion}\; e^{-t_{d,i}/\tau},
          \qquad t_{d,i} = d_i / v_d(E),

electrons reach the anode at ``t_i = t0_i + t_{d,i}`` as a Gaussian cloud of widths
``sigma_T = sqrt(2 D_T t_d)`` in the plane and ``sigma_t = sqrt(2 D_L t_d) / v_d`` in time. The
expected cumulative charge of pixel channel c (one pixel in one readout event) at the end of tick j
of its window is

.. math:: Q_c[j] = \sum_{i} n_i\, F_u(i, c)\, F_v(i, c)\,
          \Phi\big(((o_c + j + 1)\,\Delta t - t_i) / \sigma_{t,i}\big),

with F the fraction of the transverse Gaussian over the pixel pad (erf integrals) and ``o_c`` the
window origin (in ticks).

Static shapes. The host decides, from the geometry and the *prior ranges* of the card (so that no
parameter value inside them can need more): which sub-point/pixel pairs exist (a (2n+1)^2 pixel
neighbourhood, n = ceil(n_sigma sigma_T,max / pitch), pairs whose largest possible pad fraction is
below ``prune`` dropped), the channel set, and each channel's window *length*. Channels are grouped
into buckets of equal window length (a few powers of two) so cost follows the data, not the worst
channel. The window *origin* is computed inside the jitted function from the parameters
(``o_c = floor(min_i (t_i - n_sigma sigma_t,i) / dt) - 1``, integer, no gradient), so a new E that
moves every arrival time moves the window with it and never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from ..data import Segments
from ..detector import DetectorCard
from ..detector import geometry as geo
from ..detector.physics import (
    DetectorParams,
    diffusion_sigma,
    drift_velocity,
    ionization_electrons,
    lifetime_factor,
    pad_fraction,
)

#: Floor on the transverse width, cm, and on the arrival-time width, us, for charge produced on the
#: anode plane (keeps derivatives finite; far below any pixel or tick scale).
SIGMA_T_FLOOR_CM = 1e-4
SIGMA_TIME_FLOOR_US = 1e-3

#: Sub-point step limits: at most STEP_PER_SIGMA x the smallest diffusion width,
#: at least MIN_STEP_CM.
STEP_PER_SIGMA = 2.5
MIN_STEP_CM = 0.005

#: Allowed window lengths, ticks: steps of 16 up to 128, then about x1.5 (cost ~ W to W^2).
WINDOW_CLASSES = (32, 48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
#: Window buckets of one likelihood plan at most (:func:`merge_window_classes`): every bucket is
#: traced and compiled once per program (value and gradient, Hessian, batched potential), so the
#: compile time grows with their number, while merging neighbouring classes costs run time
#: (:func:`lartpc_bayes.likelihood.readout_prob.channel_cost`); the likelihood's plans weigh the
#: two (``lartpc_bayes.model.COMPILE_S_PER_BUCKET``) up to this many buckets.
MAX_BUCKETS = 6


def merge_window_classes(windows: np.ndarray, max_buckets: int | None,
                         cost: Callable[[int], float] | None = None,
                         bucket_penalty: float | None = None) -> np.ndarray:
    """Merge neighbouring window classes until at most ``max_buckets`` remain.

    ``windows`` (n_channels,) is every channel's smallest allowed class. The distinct classes
    w_1 < ... < w_n with channel counts n_i are cut into at most ``max_buckets`` contiguous groups,
    each group taking its largest class, with the cut points that minimise
    ``sum_groups (sum_i n_i) cost(max_i w_i)``, ``cost`` the run time of one channel of window w
    (default w, channel-ticks; the likelihood passes its own model,
    :func:`lartpc_bayes.likelihood.readout_prob.channel_cost`); an exact dynamic programme over the
    n <= 16 classes. ``bucket_penalty`` (optional, in units of ``cost``): the price of one more
    bucket (its compilation); the number of groups b <= ``max_buckets`` (or n when None) then
    minimises ``cost(b groups) + bucket_penalty * b``. Without it, ``None`` or a count at least n
    leaves the classes as they are. Returns the merged class of every channel. A merged window
    is only longer, so every channel still fits.
    """
    windows = np.asarray(windows)
    classes, inverse, counts = np.unique(windows, return_inverse=True, return_counts=True)
    n = classes.size
    if max_buckets is not None and max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    if bucket_penalty is None and (max_buckets is None or n <= max_buckets):
        return windows
    max_buckets = n if max_buckets is None else min(max_buckets, n)
    csum = np.concatenate([[0], np.cumsum(counts)])
    unit = [float(cost(int(w))) if cost is not None else float(w) for w in classes]
    # best[b, j]: least cost of classes[:j] in b groups; cut[b, j]: start of the last group
    best = np.full((max_buckets + 1, n + 1), np.inf)
    cut = np.zeros((max_buckets + 1, n + 1), np.int64)
    best[0, 0] = 0.0
    for b in range(1, max_buckets + 1):
        for j in range(1, n + 1):
            for i in range(j):  # last group = classes[i:j], window classes[j - 1]
                c = best[b - 1, i] + (csum[j] - csum[i]) * unit[j - 1]
                if c < best[b, j]:
                    best[b, j], cut[b, j] = c, i
    b = int(np.argmin(best[:, n]))
    if bucket_penalty is not None:  # run time against compilation
        b = int(np.argmin(best[:, n] + bucket_penalty * np.arange(max_buckets + 1)))
    target = np.empty(n, classes.dtype)
    j = n
    while j > 0:
        i = cut[b, j]
        target[i:j] = classes[j - 1]
        j, b = i, b - 1
    return target[inverse]


class SubPoints(NamedTuple):
    """Per sub-point constants (device arrays)."""

    seg: jax.Array  # (S,) int32 segment index
    dl: jax.Array  # (S,) cm of segment represented
    drift: jax.Array  # (S,) cm from the anode along the drift axis
    t0: jax.Array  # (S,) us deposition time
    inside: jax.Array  # (S,) 1.0 inside a drift volume, else 0.0


class Bucket(NamedTuple):
    """Channels sharing one window length W (all device arrays; shapes are the static sizes).

    pair_*   : (P,) one entry per (sub-point, channel) pair
    pair_u/v : (P, 2) pad edges relative to the sub-point, cm: (lo, hi)
    ticks    : (W,) int32 arange(W); its length is the static window length
    chan_mask: (C,) 1.0 for real channels, 0.0 for padding; its length is the static channel count
    """

    pair_sub: jax.Array
    pair_chan: jax.Array
    pair_u: jax.Array
    pair_v: jax.Array
    ticks: jax.Array
    chan_mask: jax.Array

    @property
    def n_channels(self) -> int:
        return int(self.chan_mask.shape[0])

    @property
    def window(self) -> int:
        return int(self.ticks.shape[0])


class Channels(NamedTuple):
    """Host-side identity of the channels of one bucket (NumPy, never traced); -1 for padding."""

    event: np.ndarray  # (C,) int64 event id
    pixel: np.ndarray  # (C,) int64 global pixel id


def padded_size(n: int, minimum: int = 16) -> int:
    """Round ``n`` up on a geometric grid (4 sizes per octave, at most 25 % padding) so that
    batches of similar size share one compiled function."""
    if n <= minimum:
        return minimum
    step = 2 ** (math.floor(math.log2(n)) - 2)
    return math.ceil(n / step) * step


class ChargePlan(NamedTuple):
    """Everything the jitted charge model needs besides the parameters and dE/dx.

    ``sub`` and ``buckets`` are device pytrees (pass them to jitted functions); ``channels`` is the
    host-side identity of each bucket's channels, in the same order.
    """

    sub: SubPoints
    buckets: tuple[Bucket, ...]
    channels: tuple[Channels, ...]
    n_segments: int
    n_segments_padded: int

    def pad_dEdx(self, dEdx_seg) -> jax.Array:
        """dE/dx per segment (MeV/cm) padded with 0 to the plan's static segment count."""
        d = jnp.asarray(dEdx_seg)
        return jnp.concatenate([d, jnp.zeros(self.n_segments_padded - d.shape[0], d.dtype)])

    @property
    def device(self) -> tuple[SubPoints, tuple[Bucket, ...]]:
        """The traced part of the plan: pass this to jitted functions."""
        return (self.sub, self.buckets)


class PlanInfo(NamedTuple):
    """Host-side summary of a plan (for logs and benchmarks)."""

    n_segments: int
    n_subpoints: int
    n_pairs: int
    n_channels: int
    windows: tuple[int, ...]
    channels_per_bucket: tuple[int, ...]


def segment_steps(card: DetectorCard, segments: Segments, step_cm: float = 0.04) -> np.ndarray:
    """Sub-point step of every segment, cm.

    The step must stay small against the narrowest cloud the segment can produce: near the anode
    the diffusion widths shrink (sigma_L ~ 0.008 cm at 2.4 cm drift at the lowest D_L), so it is at
    most ``STEP_PER_SIGMA`` times the smallest width allowed by the prior ranges at the segment's
    smallest drift distance, at most ``step_cm`` and never below ``MIN_STEP_CM``.
    """
    ranges, _, v_max = _param_extremes(card)
    ends = np.concatenate([segments.start, segments.end])
    tpc = geo.tpc_of_points(card, ends)
    d_end = np.where(tpc >= 0, geo.drift_distance(card, np.maximum(tpc, 0), ends), np.inf)
    d_min = np.maximum(np.minimum(d_end[: segments.n], d_end[segments.n :]), 0.0)
    d_lo = min(ranges["D_L"][0], ranges["D_T"][0])
    d_use = np.where(np.isfinite(d_min), d_min, card.geometry.max_drift_cm)
    sig_min = np.sqrt(2 * d_lo * d_use / v_max)
    return np.clip(STEP_PER_SIGMA * sig_min, MIN_STEP_CM, step_cm)


def chop_segments(segments: Segments, seg_step: np.ndarray):
    """Sub-points at the centres of ``ceil(dx / step)`` equal pieces of every segment.

    Returns (segment index, position (S, 3) cm, length represented dl (S,) cm).
    """
    dx = segments.dx
    nsub = np.maximum(1, np.ceil(dx / seg_step - 1e-9)).astype(np.int64)
    seg_of = np.repeat(np.arange(segments.n), nsub)
    k = np.arange(seg_of.size) - np.repeat(np.cumsum(nsub) - nsub, nsub)
    frac = (k + 0.5) / nsub[seg_of]
    pos = segments.start[seg_of] + frac[:, None] * (segments.end - segments.start)[seg_of]
    return seg_of, pos, dx[seg_of] / nsub[seg_of]


def _param_extremes(card: DetectorCard):
    p = {s.name: (s.low, s.high) for s in card.params}
    T = card.physics.temperature_K
    v = np.array([float(drift_velocity(e, T)) for e in np.linspace(*p["E"], 11)])
    return p, float(v.min()), float(v.max())


#: dE/dx (in units of the segment's own) up to which :func:`plan_charge`'s charge pruning holds
DEDX_MARGIN = 3.0


def max_subpoint_charge(
    card: DetectorCard, segments: Segments, seg_of: np.ndarray, dl_cm: np.ndarray,
    dEdx_margin: float = DEDX_MARGIN,
) -> np.ndarray:
    """Upper bound on the electrons of each sub-point reaching the anode, over the card's prior.

    ``n_e <= R_max(dEdx_cap) dEdx_cap dl / W_ion`` with ``dEdx_cap = dEdx_margin * dEdx`` of the
    segment (the charge grows with dE/dx although R falls), R at the largest A_B and E and the
    smallest k_B in the prior ranges, and no lifetime loss.
    """
    from ..detector.physics import DetectorParams, recombination

    ranges = {s.name: (s.low, s.high) for s in card.params}
    corner = DetectorParams(
        A_B=ranges["A_B"][1], k_B=ranges["k_B"][0], E=ranges["E"][1], tau=ranges["tau"][1],
        D_L=ranges["D_L"][0], D_T=ranges["D_T"][0],
    )
    dEdx_cap = dEdx_margin * np.maximum(np.asarray(segments.dEdx, np.float64)[seg_of], 0.0)
    r = np.asarray(recombination(dEdx_cap, corner, card.physics), np.float64)
    return r * dEdx_cap * dl_cm / card.physics.w_ion_MeV


def plan_charge(
    card: DetectorCard,
    segments: Segments,
    *,
    step_cm: float = 0.04,
    n_sigma: float = 5.0,
    prune: float = 1e-7,
    window_classes: tuple[int, ...] = WINDOW_CLASSES,
    max_buckets: int | None = None,
    bucket_cost: Callable[[int], float] | None = None,
    bucket_penalty: float | None = None,
    dtype=jnp.float32,
    pad: bool = False,
    min_charge_e: float = 0.0,
    dEdx_margin: float = DEDX_MARGIN,
    margin_cm: float | np.ndarray = 0.0,
) -> ChargePlan:
    """Chop segments, choose pixel channels and window lengths on the host (static shapes).

    Parameters
    ----------
    step_cm : maximum sub-point length, cm; near the anode the step shrinks to
        ``STEP_PER_SIGMA`` times the smallest allowed diffusion width (not below ``MIN_STEP_CM``).
    n_sigma : transverse and temporal coverage of each Gaussian cloud, in units of the largest
        width allowed by the card's prior ranges.
    prune : pairs whose pad fraction can never exceed this (at any allowed D_T, E) are dropped; the
        charge lost per sub-point is below ``(2n+1)^2 * prune``.
    window_classes : allowed window lengths (ticks); each channel gets the smallest that fits.
    max_buckets : at most this many window buckets (:func:`merge_window_classes` with the
        per-channel cost ``bucket_cost`` of a window and the price ``bucket_penalty`` of one more
        bucket in the same units; None: one per class used). The
        likelihood's plans use :data:`MAX_BUCKETS`; the simulator keeps every class (its hits do
        not depend on the bucketing beyond the window each channel covers).
    pad : round segment, sub-point, pair and channel counts up with :func:`padded_size` (padding
        carries zero charge and masked channels) so that many batches reuse one compilation.
    min_charge_e : drop channels whose largest possible collected charge (electrons) is below
        this: the bound of :func:`max_channel_charge` (every sub-point at ``dEdx_margin`` times
        its segment's dE/dx, the least recombination and no attenuation allowed by the card, each
        pad fraction at its largest over the D_T and E ranges). Such a pixel can only fire on
        noise, so its hits carry no information on the parameters; the likelihood counts hits on
        it at the floor (:func:`lartpc_bayes.likelihood.hits_to_table`). 0 keeps every channel
        (the simulator's choice, so fake data keep their noise hits on those pixels).
    margin_cm : in-plane shift (cm) of the sub-points that the pixel set must cover (geometry
        latents, :mod:`lartpc_bayes.reco.geometry`), one number or one per segment: pad
        fractions are bounded over pads widened by the margin on each side. 0 (default) leaves
        the plan unchanged.
    """
    segments.validate()
    g = card.geometry
    el = card.electronics
    tick = el.tick_us
    ranges, v_min, v_max = _param_extremes(card)
    dl_hi, dt_hi = ranges["D_L"][1], ranges["D_T"][1]
    dt_lo = ranges["D_T"][0]

    # --- chop segments into sub-points -------------------------------------------------------
    seg_of, pos, dl = chop_segments(segments, segment_steps(card, segments, step_cm))
    tpc = geo.tpc_of_points(card, pos)
    inside = tpc >= 0
    tpc_c = np.where(inside, tpc, 0)
    drift = np.where(inside, geo.drift_distance(card, tpc_c, pos), 0.0)
    drift = np.maximum(drift, 0.0)
    t0 = segments.t0[seg_of]
    event = segments.event_id[seg_of]

    # --- transverse neighbourhood from the widest allowed cloud ------------------------------
    td_max = drift / v_min
    sig_t_max = np.sqrt(2 * dt_hi * td_max + SIGMA_T_FLOOR_CM**2)
    sig_t_min = np.sqrt(2 * dt_lo * drift / v_max + SIGMA_T_FLOOR_CM**2)
    margin = np.broadcast_to(np.asarray(margin_cm, np.float64), (segments.n,))[seg_of][:, None]
    nb = max(1, math.ceil((n_sigma * float(sig_t_max.max(initial=0.0))
                           + float(margin.max(initial=0.0))) / g.pixel_pitch_cm))
    off = np.arange(-nb, nb + 1)
    oi, oj = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    u = pos[:, g.plane_axes[0]]
    v = pos[:, g.plane_axes[1]]
    ix0, iy0 = geo.pixel_indices(card, tpc_c, u, v)
    ix = ix0[:, None] + oi[None, :]
    iy = iy0[:, None] + oj[None, :]
    umin = np.array([t.plane_min_cm[0] for t in g.tpcs])[tpc_c]
    vmin = np.array([t.plane_min_cm[1] for t in g.tpcs])[tpc_c]
    p = g.pixel_pitch_cm
    ulo = umin[:, None] + ix * p - u[:, None]
    vlo = vmin[:, None] + iy * p - v[:, None]

    def max_frac(lo, sig_lo, sig_hi):
        # largest pad fraction over sigma in [sig_lo, sig_hi] (fraction is monotone in sigma away
        # from the pad and maximal at the smallest sigma when the centre is inside the pad)
        f1 = np.asarray(pad_fraction(lo - margin, lo + p + margin, sig_lo[:, None]))
        f2 = np.asarray(pad_fraction(lo - margin, lo + p + margin, sig_hi[:, None]))
        return np.maximum(f1, f2)

    keep = (
        inside[:, None]
        & geo.pixel_in_range(card, tpc_c[:, None], ix, iy)
        & (max_frac(ulo, sig_t_min, sig_t_max) * max_frac(vlo, sig_t_min, sig_t_max) > prune)
    )
    ps, pk = np.nonzero(keep)
    pix = geo.pixel_id(card, tpc_c[ps], ix[ps, pk], iy[ps, pk])
    ev = event[ps]
    # channel = unique (event, pixel)
    key = np.stack([ev, pix], axis=1)
    chan_keys, pair_chan_all = np.unique(key, axis=0, return_inverse=True)
    pair_chan_all = pair_chan_all.ravel()
    if min_charge_e > 0 and ps.size:
        # largest possible charge of every pair, summed per channel (an upper bound)
        n_max = max_subpoint_charge(card, segments, seg_of, dl, dEdx_margin)[ps]
        frac = (max_frac(ulo, sig_t_min, sig_t_max) * max_frac(vlo, sig_t_min, sig_t_max))[ps, pk]
        q_max = np.zeros(chan_keys.shape[0])
        np.add.at(q_max, pair_chan_all, n_max * frac)
        live = q_max >= min_charge_e
        new_index = np.cumsum(live) - 1
        pair_live = live[pair_chan_all]
        ps, pk = ps[pair_live], pk[pair_live]
        pair_chan_all = new_index[pair_chan_all[pair_live]]
        chan_keys = chan_keys[live]

    # --- window length per channel at the extreme parameters ---------------------------------
    sig_time = np.sqrt(2 * dl_hi * drift[ps] / v_min) / v_min + SIGMA_TIME_FLOOR_US
    nc = chan_keys.shape[0]
    span = np.zeros(nc)
    for vel in (v_min, v_max):  # arrival spread is t0 + d/v: extreme at one end of the E range
        t_arr = t0[ps] + drift[ps] / vel
        lo = np.full(nc, np.inf)
        hi = np.full(nc, -np.inf)
        np.minimum.at(lo, pair_chan_all, t_arr - n_sigma * sig_time)
        np.maximum.at(hi, pair_chan_all, t_arr + n_sigma * sig_time)
        span = np.maximum(span, hi - lo)
    span_ticks = np.ceil(span / tick) + el.hold_ticks + 4
    classes = np.asarray(sorted(window_classes))
    if span_ticks.max(initial=0) > classes[-1]:
        raise ValueError(
            f"a pixel channel needs a window of {int(span_ticks.max())} ticks, more than the "
            "largest "
            f"class {classes[-1]}: a track nearly parallel to the drift axis (see selection cuts)"
        )
    wclass = merge_window_classes(classes[np.searchsorted(classes, span_ticks)], max_buckets,
                                  bucket_cost, bucket_penalty)

    S = seg_of.size
    S_pad = padded_size(S) if pad else S
    n_seg_pad = padded_size(segments.n) if pad else segments.n

    def padv(a, n, value=0):
        a = np.asarray(a)
        return np.concatenate([a, np.full((n - a.shape[0], *a.shape[1:]), value, a.dtype)])

    sub = SubPoints(
        seg=jnp.asarray(padv(seg_of, S_pad), jnp.int32),
        dl=jnp.asarray(padv(dl, S_pad), dtype),
        drift=jnp.asarray(padv(drift, S_pad), dtype),
        t0=jnp.asarray(padv(t0, S_pad), dtype),
        inside=jnp.asarray(padv(inside.astype(np.float64), S_pad), dtype),
    )
    far = 1e3  # cm: pad edges of padding pairs, giving an exactly zero pad fraction
    buckets, channels = [], []
    for w in np.unique(wclass):
        chans = np.nonzero(wclass == w)[0]
        local = np.full(nc, -1, np.int64)
        local[chans] = np.arange(chans.size)
        sel = local[pair_chan_all] >= 0
        order = np.argsort(local[pair_chan_all][sel], kind="stable")
        sp = ps[sel][order]
        sk = pk[sel][order]
        pc = local[pair_chan_all][sel][order]
        C = chans.size
        C_pad = padded_size(C + 1) if pad else C
        P_pad = padded_size(sp.size) if pad else sp.size
        pu = np.stack([ulo[sp, sk], ulo[sp, sk] + p], -1)
        pv = np.stack([vlo[sp, sk], vlo[sp, sk] + p], -1)
        buckets.append(
            Bucket(
                pair_sub=jnp.asarray(padv(sp, P_pad), jnp.int32),
                pair_chan=jnp.asarray(padv(pc, P_pad, C_pad - 1), jnp.int32),
                pair_u=jnp.asarray(padv(pu, P_pad, far), dtype),
                pair_v=jnp.asarray(padv(pv, P_pad, far), dtype),
                ticks=jnp.arange(int(w), dtype=jnp.int32),
                chan_mask=jnp.asarray(padv(np.ones(C), C_pad), dtype),
            )
        )
        channels.append(
            Channels(
                padv(chan_keys[chans, 0].astype(np.int64), C_pad, -1),
                padv(chan_keys[chans, 1].astype(np.int64), C_pad, -1),
            )
        )
    return ChargePlan(
        sub=sub,
        buckets=tuple(buckets),
        channels=tuple(channels),
        n_segments=segments.n,
        n_segments_padded=n_seg_pad,
    )


def plan_info(plan: ChargePlan) -> PlanInfo:
    return PlanInfo(
        n_segments=plan.n_segments,
        n_subpoints=int(plan.sub.seg.shape[0]),
        n_pairs=sum(int(b.pair_sub.shape[0]) for b in plan.buckets),
        n_channels=sum(int(np.sum(c.event >= 0)) for c in plan.channels),
        windows=tuple(b.window for b in plan.buckets),
        channels_per_bucket=tuple(b.n_channels for b in plan.buckets),
    )


class SubPointState(NamedTuple):
    """Per sub-point drifted quantities (functions of the parameters and dE/dx)."""

    n_e: jax.Array  # electrons reaching the anode
    t_arrival: jax.Array  # us
    sigma_plane: jax.Array  # cm
    sigma_time: jax.Array  # us


def drift_subpoints(
    sub: SubPoints, dEdx_seg: jax.Array, params: DetectorParams, card: DetectorCard
) -> SubPointState:
    """Recombination, drift, lifetime and diffusion of every sub-point (pure JAX)."""
    ph = card.physics
    dEdx = dEdx_seg[sub.seg]
    v = drift_velocity(params.E, ph.temperature_K)
    td = sub.drift / v
    n_e = ionization_electrons(dEdx * sub.dl, dEdx, params, ph) * lifetime_factor(td, params.tau)
    n_e = n_e * sub.inside
    sig_plane = diffusion_sigma(params.D_T, td, SIGMA_T_FLOOR_CM)
    # floor in quadrature inside the sqrt: sqrt(2 D_L t_d) alone has a NaN gradient at t_d = 0
    sig_time = diffusion_sigma(params.D_L, td, SIGMA_TIME_FLOOR_US * v) / v
    return SubPointState(n_e, sub.t0 + td, sig_plane, sig_time)


def bucket_charge(
    state: SubPointState, bucket: Bucket, tick_us: float, n_sigma: float = 5.0
) -> tuple[jax.Array, jax.Array]:
    """Expected cumulative charge ``Q`` (C, W) electrons and window origins ``o`` (C,) ticks.

    ``Q[c, j]`` is the charge collected by channel c by the end of tick ``o[c] + j``.
    """
    C = bucket.n_channels
    ps, pc = bucket.pair_sub, bucket.pair_chan
    t_i = state.t_arrival[ps]
    s_t = state.sigma_time[ps]
    s_p = state.sigma_plane[ps]
    w = (
        state.n_e[ps]
        * pad_fraction(bucket.pair_u[:, 0], bucket.pair_u[:, 1], s_p)
        * pad_fraction(bucket.pair_v[:, 0], bucket.pair_v[:, 1], s_p)
    )
    start = jax.lax.stop_gradient((t_i - n_sigma * s_t) / tick_us)
    origin = jnp.floor(jax.ops.segment_min(start, pc, num_segments=C)).astype(jnp.int32) - 1
    t_grid = (origin[pc][:, None] + bucket.ticks[None, :] + 1).astype(t_i.dtype) * tick_us
    contrib = w[:, None] * ndtr((t_grid - t_i[:, None]) / s_t[:, None])
    Q = jax.ops.segment_sum(contrib, pc, num_segments=C, indices_are_sorted=True)
    return Q, origin


def expected_charge(
    plan: ChargePlan | tuple,
    dEdx_seg: jax.Array,
    params: DetectorParams,
    card: DetectorCard,
    n_sigma: float = 5.0,
) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Expected cumulative charge of every channel: a tuple over buckets of ``(Q, origin)``."""
    sub, buckets = plan[0], plan[1]
    state = drift_subpoints(sub, dEdx_seg, params, card)
    return tuple(bucket_charge(state, b, card.electronics.tick_us, n_sigma) for b in buckets)


def produced_charge(
    plan: ChargePlan | tuple, dEdx_seg: jax.Array, params: DetectorParams, card: DetectorCard
) -> jax.Array:
    """Total electrons reaching the anode plane (after recombination and lifetime), all channels."""
    return drift_subpoints(plan[0], dEdx_seg, params, card).n_e.sum()
