"""The forward chain end to end: segments -> charge on pixels -> stochastic readout -> hits.

Segments are processed in batches of whole events (a channel is one pixel in one event, so events
never share channels). Plans are padded (:func:`lartpc_bayes.charge.padded_size`) so batches of
similar size reuse one compiled function; the parameters and dE/dx are traced arguments, so a new
parameter value never recompiles.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..data import Hits, Segments
from ..detector import DetectorCard
from ..detector.physics import DetectorParams
from .charge import ChargePlan, expected_charge, plan_charge
from .readout import collect_hits, simulate_plan


class SimulationSummary(NamedTuple):
    n_tracks: int
    n_segments: int
    length_cm: float
    n_channels: int
    n_hits: int
    charge_e: float  # expected charge collected on all channels, electrons


@partial(jax.jit, static_argnames=("card", "noise"))
def _simulate_device(key, device_plan, dEdx, params, card: DetectorCard, noise: bool):
    charges = expected_charge(device_plan, dEdx, params, card)
    hits = simulate_plan(key, charges, card.electronics, noise)
    total = sum(
        (Q[:, -1] * b.chan_mask).sum() for (Q, _), b in zip(charges, device_plan[1], strict=True)
    )
    return hits, total


def event_batches(segments: Segments, max_length_cm: float) -> Iterator[np.ndarray]:
    """Indices of segments grouped into batches of whole events of about ``max_length_cm``."""
    ev = np.asarray(segments.event_id)
    order = np.argsort(ev, kind="stable")
    uniq, start = np.unique(ev[order], return_index=True)
    lengths = np.add.reduceat(segments.dx[order], start) if uniq.size else np.zeros(0)
    bounds = np.append(start, ev.size)
    batch, acc = [], 0.0
    for i in range(uniq.size):
        batch.append(order[bounds[i] : bounds[i + 1]])
        acc += lengths[i]
        if acc >= max_length_cm:
            yield np.concatenate(batch)
            batch, acc = [], 0.0
    if batch:
        yield np.concatenate(batch)


def simulate_batch(
    key: jax.Array,
    card: DetectorCard,
    segments: Segments,
    params: DetectorParams,
    dEdx: np.ndarray | None = None,
    *,
    noise: bool = True,
    step_cm: float = 0.04,
    plan: ChargePlan | None = None,
) -> tuple[Hits, float, int]:
    """Hits of one batch; returns (hits, expected collected charge in electrons, channels)."""
    plan = plan or plan_charge(card, segments, step_cm=step_cm, pad=True)
    d = segments.dEdx if dEdx is None else np.asarray(dEdx)
    params = DetectorParams(*(jnp.asarray(v, jnp.float32) for v in params))
    ch_hits, total = _simulate_device(
        key, plan.device, plan.pad_dEdx(jnp.asarray(d, jnp.float32)), params, card, noise
    )
    n_chan = int(sum(np.sum(c.event >= 0) for c in plan.channels))
    return collect_hits(plan, ch_hits), float(total), n_chan


def simulate_hits(
    key: jax.Array,
    card: DetectorCard,
    segments: Segments,
    params: DetectorParams,
    dEdx: np.ndarray | None = None,
    *,
    noise: bool = True,
    step_cm: float = 0.04,
    batch_length_cm: float = 1000.0,
    progress: bool = False,
) -> tuple[Hits, SimulationSummary]:
    """Simulate the hits of all segments (true dE/dx unless ``dEdx`` is given), batched by event."""
    from tqdm.auto import tqdm

    segments.validate()
    d_all = segments.dEdx if dEdx is None else np.asarray(dEdx)
    batches = list(event_batches(segments, batch_length_cm))
    parts, total, n_chan = [], 0.0, 0
    keys = jax.random.split(key, max(len(batches), 1))
    for k, idx in tqdm(
        list(zip(keys, batches, strict=False)), desc="simulate", unit="batch", disable=not progress
    ):
        h, q, c = simulate_batch(
            k, card, segments.select(idx), params, d_all[idx], noise=noise, step_cm=step_cm
        )
        parts.append(h)
        total += q
        n_chan += c
    if parts:
        hits = Hits(*(np.concatenate([getattr(h, f) for h in parts]) for f in Hits._fields))
    else:
        hits = Hits(*(np.zeros(0, np.int64) for _ in Hits._fields))
    hits = hits.sorted()
    summary = SimulationSummary(
        n_tracks=int(np.unique(np.stack([segments.event_id, segments.track_id]), axis=1).shape[1])
        if segments.n
        else 0,
        n_segments=segments.n,
        length_cm=float(segments.dx.sum()),
        n_channels=n_chan,
        n_hits=hits.n,
        charge_e=total,
    )
    return hits, summary
