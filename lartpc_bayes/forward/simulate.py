"""The forward chain end to end: segments -> charge on pixels -> stochastic readout -> hits.

Segments are processed in batches of whole events (a channel is one pixel in one event, so events
never share channels). Plans are padded (:func:`lartpc_bayes.forward.charge.padded_size`) so
batches of similar size reuse one compiled function; the parameters and dE/dx are traced
arguments, so a new parameter value never recompiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
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

#: Physical domain of the six parameters (independent of any prior): a lifetime, field or diffusion
#: coefficient must be positive, the Birks A_B is a fraction in (0, 1], k_B >= 0. Values outside
#: it are errors before any work; values inside it but outside the card's prior are a warning.
PHYSICAL_DOMAIN: dict[str, tuple[float, float, bool, bool]] = {
    # name: (low, high, low inclusive, high inclusive)
    "A_B": (0.0, 1.0, False, True),
    "k_B": (0.0, math.inf, True, False),
    "E": (0.0, math.inf, False, False),
    "tau": (0.0, math.inf, False, False),
    "D_L": (0.0, math.inf, False, False),
    "D_T": (0.0, math.inf, False, False),
}

#: Largest |t0| (us) simulated: float32 times resolve 1/16 tick (0.1 us / 16) only below
#: 0.1 us * 2^23 / 16 = 52428.8 us; t0 is the deposition time from the event's t = 0.
T0_LIMIT_US = 0.1 * 2**23 / 16

#: Fraction of the track length outside the active volume above which a warning is printed.
OUTSIDE_WARN_FRACTION = 0.05


def check_physical_params(values: Mapping[str, float], where: str = "--param") -> None:
    """Raise ValueError naming the parameter when a value is NaN/inf or outside
    :data:`PHYSICAL_DOMAIN` (tau, E, D_L, D_T <= 0; A_B outside (0, 1]; k_B < 0)."""
    for name, value in values.items():
        if name not in PHYSICAL_DOMAIN:
            raise ValueError(f"{where}: unknown parameter {name!r}; known: "
                             f"{', '.join(PHYSICAL_DOMAIN)}")
        v = float(value)
        lo, hi, lo_in, hi_in = PHYSICAL_DOMAIN[name]
        ok = math.isfinite(v) and (v >= lo if lo_in else v > lo) and (v <= hi if hi_in else v < hi)
        if not ok:
            rng = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
            raise ValueError(f"{where}: {name}={v!r} is unphysical (must be finite and in {rng})")


class SegmentAccounting(NamedTuple):
    """What of a segment table the simulation can use, and what it cannot (counts, cm, MeV)."""

    n_segments: int
    length_cm: float
    length_outside_cm: float  # length outside every drift volume of the card (not simulated)
    n_outside: int  # segments entirely outside
    n_zero_length: int  # dx = 0: no charge in the model (dE/dx = 0, as larnd-sim's dEdx field)
    dE_zero_length_MeV: float
    n_t0_out: int  # |t0| > T0_LIMIT_US
    length_t0_out_cm: float

    @property
    def outside_fraction(self) -> float:
        return self.length_outside_cm / self.length_cm if self.length_cm > 0 else 0.0

    def attrs(self) -> dict[str, float | int]:
        """Flat attributes for an output file (``input_*`` keys)."""
        return {f"input_{k}": v for k, v in self._asdict().items()}

    def line(self) -> str:
        """The accounting part of the one-line summary."""
        return (f"{self.n_segments} segments, outside the active volume "
                f"{self.length_outside_cm:.1f} of {self.length_cm:.1f} "
                f"cm ({100 * self.outside_fraction:.1f} %, {self.n_outside} segments entirely); "
                f"zero-length {self.n_zero_length}; |t0| > {T0_LIMIT_US:.0f} us {self.n_t0_out}")


def account_segments(
    card: DetectorCard, segments: Segments
) -> tuple[np.ndarray, SegmentAccounting]:
    """Mask of the segments worth simulating and the accounting of the rest.

    A segment is dropped when it lies entirely outside the card's drift volumes
    (:func:`lartpc_bayes.detector.geometry.length_inside` = 0), has zero length, or has
    |t0| > :data:`T0_LIMIT_US`; partly outside segments are kept (their outside part produces no
    charge) and the outside length is counted.
    """
    from ..detector.geometry import length_inside

    dx = np.asarray(segments.dx, np.float64)
    inside = length_inside(card, segments.start, segments.end)
    zero = dx <= 0
    t0_out = np.abs(np.asarray(segments.t0, np.float64)) > T0_LIMIT_US
    outside = (~zero) & (inside <= 0)
    keep = ~(zero | t0_out | outside)
    acc = SegmentAccounting(
        n_segments=int(segments.n),
        length_cm=float(dx.sum()),
        length_outside_cm=float(np.clip(dx - inside, 0.0, None).sum()),
        n_outside=int(outside.sum()),
        n_zero_length=int(zero.sum()),
        dE_zero_length_MeV=float(np.asarray(segments.dE)[zero].sum()),
        n_t0_out=int(t0_out.sum()),
        length_t0_out_cm=float(dx[t0_out].sum()),
    )
    return keep, acc


def explain_empty(acc: SegmentAccounting, summary: SimulationSummary | None,
                  card: DetectorCard) -> str:
    """Why a simulation has no hits: the cut or bound that removed the charge."""
    parts = []
    if acc.n_segments == 0:
        return "the input has 0 segments"
    if acc.n_outside:
        parts.append(f"{acc.n_outside} of {acc.n_segments} segments lie entirely outside the "
                     f"active volume of card {card.name!r} ({card.source}; check the coordinate "
                     f"frame: drift axis, larnd-sim tpc_offsets, the zbeam attribute)")
    if acc.n_zero_length:
        parts.append(f"{acc.n_zero_length} segments have zero length (no charge: dE/dx = 0)")
    if acc.n_t0_out:
        parts.append(f"{acc.n_t0_out} segments have |t0| > {T0_LIMIT_US:.0f} us (t0 is the "
                     f"deposition time from the event's t = 0, in us)")
    if summary is not None and summary.n_segments:
        el = card.electronics
        parts.append(f"the {summary.n_segments} simulated segments gave "
                     f"{summary.charge_e:.3g} e- on {summary.n_channels} pixels, no pixel "
                     f"crossing the {el.threshold_e:.0f} e- threshold")
    return "; ".join(parts)


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
    try:
        values = {k: float(v) for k, v in zip(PHYSICAL_DOMAIN, params, strict=True)}
    except (TypeError, jax.errors.ConcretizationTypeError):
        values = {}  # traced parameters: checked by the caller
    check_physical_params(values, "simulate_hits params")
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
