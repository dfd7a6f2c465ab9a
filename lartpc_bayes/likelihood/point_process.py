r"""Hits -> log-likelihood, and the readout as a NumPyro distribution.

**Poisson point process with charge marks** (DESIGN.md section 4, source talk 000):

.. math:: \log L = -\sum_c \sum_t \lambda_c(t)
          + \sum_i \max\big[\log(\lambda_{c_i}(t_i)\, P(\mathrm{ADC}_i \mid c_i, t_i)),
          \ \log\epsilon\big] + N_\mathrm{outside} \log\epsilon

with lambda the hit intensity of :mod:`lartpc_bayes.likelihood.readout_prob` and P the exact ADC-bin
probability of the held charge, mixed over the reset noise and the reset time. The floor keeps hits
the model cannot explain (noise, hits on pixels or ticks outside the simulated channels, which are
counted at the floor, never dropped) from dominating. ``floor="smooth"`` replaces the max by
``logaddexp``, i.e. an explicit noise intensity epsilon per hit.

**Exact sequential likelihood** (``kind="sequential"``): per channel, each observed hit conditioned
on the reset fixed by the previous observed hit, then the probability of no further hit.

Observed hits are arranged as a static **hit table** of shape (channels, M, 2): for every channel of
the plan (buckets concatenated, padding included) up to M = max hits per pixel slots of
(absolute tick, ADC), -1 where empty. The stochastic readout samples the same table, so
:class:`LArPixReadout` is an ordinary NumPyro distribution: ``log_prob`` is the likelihood and
``sample`` the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints

from ..data import Hits
from ..detector import Electronics
from ..forward.charge import ChargePlan
from ..forward.readout import simulate_channels
from .readout_prob import (
    N_NODES,
    hit_rows,
    hit_rows_intensity,
    lag_geometry,
    lognormal_shape,
    readout_tensors,
    sequential_log_prob,
)

#: how the straggling below the latent enters (LikelihoodConfig.straggling) -> the ``trigger``
#: argument of the readout's hit terms: False (the mark only), True (trigger times and held
#: charge with one shared scale), "timing" (trigger times; held charge with an independent scale)
STRAGGLING_MODES: dict[str, bool | str] = {"mark": False, "trigger": True, "timing": "timing"}


@dataclass(frozen=True)
class LikelihoodConfig:
    """kind: "ppp" or "sequential"; eps: floor per hit; floor: "hard" (max) or "smooth"
    (logaddexp); n_nodes: Gauss-Hermite nodes over the reset noise; mark: "gaussian" or "exact"
    ADC-bin probability (:func:`lartpc_bayes.likelihood.readout_prob.log_adc_prob`); max_hits:
    per bucket, the static size of the compacted hit list of the PPP (empty: every slot of the
    table; hits beyond it
    are counted at the floor, see :func:`hit_list_sizes`); max_lag: lag band of the later reset rows
    (0 = exact, see :func:`lartpc_bayes.likelihood.readout_prob.readout_tensors`); straggling: how
    the charge straggling below the latent enters when the problem has it: "mark" (default, the
    charge mark's variance only), "trigger" (also the trigger times, with its skew, one scale
    shared by the trigger and the held charge; module docstring of readout_prob and
    docs/inference.md for why it is not the default yet) or "timing" (the trigger times as
    "trigger", the held charge's scale independent of the trigger's:
    :func:`lartpc_bayes.likelihood.readout_prob.held_charge_moments`)."""

    kind: str = "ppp"
    eps: float = 1e-8
    floor: str = "hard"
    n_nodes: int = N_NODES
    mark: str = "gaussian"
    max_hits: tuple[int, ...] = ()
    max_lag: int = 32
    straggling: str = "mark"

    def __post_init__(self):
        if self.kind not in ("ppp", "sequential"):
            raise ValueError(f"likelihood kind must be 'ppp' or 'sequential', got {self.kind!r}")
        if self.floor not in ("hard", "smooth"):
            raise ValueError(f"likelihood floor must be 'hard' or 'smooth', got {self.floor!r}")
        if self.mark not in ("gaussian", "exact"):
            raise ValueError(f"likelihood mark must be 'gaussian' or 'exact', got {self.mark!r}")
        if self.straggling not in STRAGGLING_MODES:
            raise ValueError(f"likelihood straggling must be one of {sorted(STRAGGLING_MODES)}, "
                             f"got {self.straggling!r}")
        if not 0 < self.eps < 1:
            raise ValueError(f"likelihood eps must be in (0, 1), got {self.eps}")

    @property
    def log_eps(self) -> float:
        return float(np.log(self.eps))


def bucket_offsets(plan: ChargePlan) -> np.ndarray:
    """First row of each bucket in the concatenated channel order (last entry = total)."""
    return np.concatenate([[0], np.cumsum([b.n_channels for b in plan.buckets])]).astype(np.int64)


def hits_to_table(plan: ChargePlan, hits: Hits, max_hits: int) -> tuple[np.ndarray, int]:
    """Arrange observed hits into the plan's (channels, M, 2) table; count the hits outside it.

    A hit is outside when its (event, pixel) is not a channel of the plan or its channel already
    holds M earlier hits. Within a channel hits are sorted by tick.
    """
    ev = np.concatenate([c.event for c in plan.channels])
    px = np.concatenate([c.pixel for c in plan.channels])
    n_chan = ev.size
    table = np.full((n_chan, max_hits, 2), -1, np.int32)
    if hits.n == 0:
        return table, 0
    h = hits.sorted()
    real = ev >= 0
    keys = np.stack([ev[real], px[real]], 1)
    rows = np.nonzero(real)[0]
    order = np.lexsort((keys[:, 1], keys[:, 0]))
    skeys = keys[order]
    hk = np.stack([h.event_id, h.pixel_id], 1)
    pos = np.searchsorted(skeys[:, 0] * (px.max(initial=0) + 1) + skeys[:, 1],
                          hk[:, 0] * (px.max(initial=0) + 1) + hk[:, 1])
    pos_c = np.minimum(pos, max(len(skeys) - 1, 0))
    found = (len(skeys) > 0) & np.all(skeys[pos_c] == hk, axis=1) if len(skeys) else np.zeros(
        h.n, bool)
    row = np.where(found, rows[order][pos_c], -1)
    # slot = rank of the hit within its channel
    slot = np.zeros(h.n, np.int64)
    if h.n:
        same = np.r_[False, (row[1:] == row[:-1])]
        run_start = np.maximum.accumulate(np.where(~same, np.arange(h.n), 0))
        slot = np.arange(h.n) - run_start
    ok = found & (slot < max_hits)
    table[row[ok], slot[ok], 0] = h.tick[ok]
    table[row[ok], slot[ok], 1] = h.adc[ok]
    return table, int(np.sum(~ok))


def table_to_hits(plan: ChargePlan, table: np.ndarray) -> Hits:
    """Inverse of :func:`hits_to_table` for the hits inside the table."""
    ev = np.concatenate([c.event for c in plan.channels])
    px = np.concatenate([c.pixel for c in plan.channels])
    t = np.asarray(table)
    r, s = np.nonzero(t[..., 0] >= 0)
    return Hits(ev[r], px[r], t[r, s, 0].astype(np.int64), t[r, s, 1].astype(np.int64)).sorted()


def hit_list_sizes(plan: ChargePlan, table: np.ndarray, margin: float = 2.0) -> tuple[int, ...]:
    """Static per-bucket sizes of the PPP's compacted hit list: ``margin`` times the observed hits
    (at least 16), rounded with :func:`lartpc_bayes.forward.charge.padded_size`, at most the table
    size."""
    from ..forward.charge import padded_size

    out = []
    for tb in _split(np.asarray(table), plan.buckets):
        n = int(np.sum(tb[..., 0] >= 0))
        out.append(min(padded_size(max(int(margin * n), 16)), tb.shape[0] * tb.shape[1]))
    return tuple(out)


def _lag_band(window: int, el: Electronics, max_lag: int) -> int:
    """LB of a bucket of window ``window`` (:func:`readout_tensors`)."""
    _, L = lag_geometry(window, el)
    return min(L, max_lag) if max_lag > 0 else L


def _split(table, buckets):
    out, start = [], 0
    for b in buckets:
        out.append(table[start : start + b.n_channels])
        start += b.n_channels
    return out


@partial(jax.jit, static_argnames=("el", "config"))
def log_likelihood(
    charges: tuple[tuple[jax.Array, jax.Array], ...],
    buckets,
    table: jax.Array,
    n_outside,
    el: Electronics,
    config: LikelihoodConfig,
    charge_straggling: tuple[jax.Array, ...] | None = None,
) -> jax.Array:
    """log-likelihood of a hit table given the expected charges ``(Q, origin)`` per bucket.

    ``charge_straggling``: optional per-bucket (C, 2) relative sd and third cumulant of the
    channels' charge (straggling below the latent length, model.charge_straggling): a per-channel
    charge scale that widens the mark, and with ``config.straggling == "trigger"`` also moves the
    trigger times (readout_prob module docstring).

    Jitted (inlined when traced inside a larger jit), so that NumPyro's eager model runs during
    initialisation call one compiled kernel instead of dispatching op by op."""
    log_eps = config.log_eps
    total = n_outside * log_eps
    # PPP: the hits of every bucket are gathered with their candidate rows padded to one count
    # and evaluated in one vmap (one copy of the hit term per program, not one per bucket)
    n_rows = max((_lag_band(b.window, el, config.max_lag) for b in buckets), default=0)
    rows, adcs, oks = [], [], []
    trig = STRAGGLING_MODES[config.straggling]
    for i, ((Q, origin), b, tb) in enumerate(zip(charges, buckets, _split(table, buckets),
                                                  strict=True)):
        f = None if charge_straggling is None else charge_straggling[i]
        rt = readout_tensors(Q, el, config.n_nodes, config.max_lag,
                             straggling=f if trig else None)
        mask = b.chan_mask
        tick = tb[..., 0]
        adc = tb[..., 1]
        valid = (tick >= 0) & (mask[:, None] > 0)
        t_rel = jnp.where(valid, tick - origin[:, None], -1)
        if config.kind == "ppp":
            C, M = tick.shape
            n_max = min(config.max_hits[i], C * M) if config.max_hits else C * M
            flat = valid.ravel()
            (idx,) = jnp.nonzero(flat, size=n_max, fill_value=0)
            rows.append(hit_rows(Q, rt, idx // M, t_rel.ravel()[idx], el, n_rows, straggling=f))
            adcs.append(jnp.maximum(adc, 0).ravel()[idx])
            oks.append(jnp.arange(n_max) < flat.sum())
            total = total + jnp.maximum(flat.sum() - n_max, 0) * log_eps  # beyond the list
            total = total - (rt.expected_hits * mask).sum()
        else:
            seq = sequential_log_prob(Q, rt, t_rel, jnp.maximum(adc, 0), valid, el, log_eps,
                                      config.n_nodes, config.mark, straggling=f, trigger=trig)
            total = total + (seq * mask).sum()
    if rows:
        li = hit_rows_intensity(jax.tree.map(lambda *a: jnp.concatenate(a), *rows),
                                jnp.concatenate(adcs), el, config.n_nodes, config.mark,
                                trigger=trig)
        term = (jnp.maximum(li, log_eps) if config.floor == "hard"
                else jnp.logaddexp(li, log_eps))
        total = total + jnp.where(jnp.concatenate(oks), term, 0.0).sum()
    return total


class LArPixReadout(Distribution):
    """Distribution of the LArPix hit table given the expected charge of every channel.

    ``log_prob(table)`` is :func:`log_likelihood`; ``sample`` runs the stochastic readout
    (:mod:`lartpc_bayes.forward.readout`) on the same charges, so ``Predictive`` and
    posterior-predictive checks need no extra plumbing. The event shape is (channels, M, 2) int32.

    ``charge_straggling`` (optional, per bucket (C, 2)): relative sd f and relative third cumulant
    k of each channel's charge from the straggling below the latent length; ``log_prob`` carries
    it in the charge mark, and with ``config.straggling == "trigger"`` in the trigger times
    (:mod:`lartpc_bayes.likelihood.readout_prob`), and ``sample`` scales each
    channel's charge by a shifted log-normal factor of mean 1, sd f and skewness k / f^3
    (:func:`straggling_scale`; right-skewed as the Landau it stands for).
    """

    arg_constraints: ClassVar[dict] = {}
    support = constraints.real_vector  # integer table; values are not validated
    pytree_data_fields = ("charges", "buckets", "n_outside", "charge_straggling")
    pytree_aux_fields = ("el", "config")

    def __init__(self, charges, buckets, el: Electronics, config: LikelihoodConfig,
                 n_outside=0, validate_args=None, charge_straggling=None):
        self.charges = tuple(charges)
        self.charge_straggling = None if charge_straggling is None else tuple(charge_straggling)
        self.buckets = tuple(buckets)
        self.el = el
        self.config = config
        self.n_outside = n_outside
        n_chan = sum(b.n_channels for b in self.buckets)
        super().__init__(batch_shape=(), event_shape=(n_chan, el.max_hits_per_pixel, 2),
                         validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return _sample_tables(key, self.charges, self.buckets, self.el, tuple(sample_shape),
                              self.charge_straggling)

    def log_prob(self, value):
        return log_likelihood(self.charges, self.buckets, value, self.n_outside, self.el,
                              self.config, self.charge_straggling)


def straggling_scale(key, st, dtype) -> jax.Array:
    """Per-channel charge scale ``1 + e`` of mean 1, sd f and skewness ``g = k / f^3`` from the
    (C, 2) straggling ``st``: ``e = f expm1(s Z - s^2/2) / sqrt(expm1(s^2))``, the shifted
    log-normal of that skewness (:func:`~lartpc_bayes.likelihood.readout_prob.lognormal_shape`),
    as the likelihood's node values."""
    f = jnp.asarray(st[..., 0], dtype)
    g = jnp.asarray(st[..., 1], dtype) / jnp.maximum(f, 1e-6) ** 3
    s, r = lognormal_shape(g)
    z = jax.random.normal(key, f.shape, dtype)
    return 1.0 + f * jnp.expm1(s * z - 0.5 * s * s) / r


@partial(jax.jit, static_argnames=("el", "sample_shape"))
def _sample_tables(key, charges, buckets, el: Electronics, sample_shape=(),
                   charge_straggling=None):
    """Hit tables from the stochastic readout, (*sample_shape, channels, M, 2)."""

    def one(k):
        rows = []
        for i, (kk, (Q, origin), b) in enumerate(zip(jax.random.split(k, len(charges)), charges,
                                                     buckets, strict=True)):
            if charge_straggling is not None:  # straggling below the latent: skewed, mean 1
                kk, kf = jax.random.split(kk)
                Q = Q * straggling_scale(kf, charge_straggling[i], Q.dtype)[:, None]
            h = simulate_channels(kk, Q, el)
            ok = h.valid & (b.chan_mask[:, None] > 0)
            rows.append(jnp.stack([jnp.where(ok, h.tick + origin[:, None], -1),
                                   jnp.where(ok, h.adc, -1)], -1))
        return jnp.concatenate(rows, 0).astype(jnp.int32)

    if not sample_shape:
        return one(key)
    n = int(np.prod(sample_shape))
    out = jax.vmap(one)(jax.random.split(key, n))
    return out.reshape(tuple(sample_shape) + out.shape[1:])
