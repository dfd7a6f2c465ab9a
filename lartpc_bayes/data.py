"""Host-side containers that flow between stages: track segments in, pixel hits out.

Both are NamedTuples of NumPy arrays (pytrees). Units: cm, us, MeV, electrons; ticks are integer
multiples of the card's ``tick_us`` counted from t = 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Segments(NamedTuple):
    """Straight energy-deposition segments (edep-sim / larnd-sim ``segments`` semantics).

    start, end : (N, 3) float, cm, in the detector frame of the card (drift axis from the card).
    dE         : (N,) float, MeV deposited on the segment.
    t0         : (N,) float, us, deposition time.
    track_id   : (N,) int, track index (unique within the batch).
    event_id   : (N,) int.
    pdg_id     : (N,) int, PDG code of the depositing particle.
    """

    start: np.ndarray
    end: np.ndarray
    dE: np.ndarray
    t0: np.ndarray
    track_id: np.ndarray
    event_id: np.ndarray
    pdg_id: np.ndarray

    @property
    def n(self) -> int:
        return int(self.dE.shape[0])

    @property
    def dx(self) -> np.ndarray:
        """Segment length, cm."""
        return np.linalg.norm(self.end - self.start, axis=-1)

    @property
    def dEdx(self) -> np.ndarray:
        """dE/dx, MeV/cm (0 where dx = 0, as in larnd-sim)."""
        dx = self.dx
        return np.where(dx > 0, self.dE / np.where(dx > 0, dx, 1.0), 0.0)

    def select(self, mask: np.ndarray) -> Segments:
        return Segments(*(np.asarray(a)[mask] for a in self))

    @staticmethod
    def concatenate(parts: list[Segments]) -> Segments:
        return Segments(*(np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(7)))

    def validate(self, where: str = "segments") -> Segments:
        """Check shapes and finiteness; raise ValueError naming the field."""
        n = self.dE.shape[0]
        for name, arr, shape in [
            ("start", self.start, (n, 3)),
            ("end", self.end, (n, 3)),
            ("dE", self.dE, (n,)),
            ("t0", self.t0, (n,)),
            ("track_id", self.track_id, (n,)),
            ("event_id", self.event_id, (n,)),
            ("pdg_id", self.pdg_id, (n,)),
        ]:
            if np.shape(arr) != shape:
                raise ValueError(
                    f"{where}: field {name!r} has shape {np.shape(arr)}, expected {shape}"
                )
            if np.issubdtype(np.asarray(arr).dtype, np.floating) and not np.all(np.isfinite(arr)):
                raise ValueError(f"{where}: field {name!r} contains NaN or inf")
        if np.any(self.dE < 0):
            raise ValueError(f"{where}: field 'dE' has negative energy deposits")
        return self


def make_segments(
    start: np.ndarray,
    end: np.ndarray,
    dE: np.ndarray,
    t0: np.ndarray | float = 0.0,
    track_id: np.ndarray | int = 0,
    event_id: np.ndarray | int = 0,
    pdg_id: np.ndarray | int = 13,
) -> Segments:
    """Build :class:`Segments`, broadcasting scalar columns."""
    start = np.asarray(start, dtype=np.float64).reshape(-1, 3)
    end = np.asarray(end, dtype=np.float64).reshape(-1, 3)
    n = start.shape[0]
    dE = np.asarray(dE, dtype=np.float64).reshape(n)

    def col(v, dt):
        return np.broadcast_to(np.asarray(v, dtype=dt), (n,)).copy()

    return Segments(
        start,
        end,
        dE,
        col(t0, np.float64),
        col(track_id, np.int64),
        col(event_id, np.int64),
        col(pdg_id, np.int64),
    ).validate()


class Hits(NamedTuple):
    """LArPix hits.

    event_id : (H,) int64 readout event; each event is its own time window starting at t = 0.
    pixel_id : (H,) int64 global pixel id (see ``geometry.pixel_id``).
    tick     : (H,) int64 tick of the threshold crossing (the trigger), in ticks of tick_us from the
               event's t = 0 (segment t0 and drift times are measured from the same origin).
    adc      : (H,) int64 ADC code of the held sample (0 .. 2^bits - 1).
    """

    event_id: np.ndarray
    pixel_id: np.ndarray
    tick: np.ndarray
    adc: np.ndarray

    @property
    def n(self) -> int:
        return int(self.pixel_id.shape[0])

    @staticmethod
    def concatenate(parts: list[Hits]) -> Hits:
        return Hits(*(np.concatenate([np.asarray(p[i]) for p in parts]) for i in range(4)))

    def sorted(self) -> Hits:
        """Hits ordered by (event, pixel, tick)."""
        order = np.lexsort((self.tick, self.pixel_id, self.event_id))
        return Hits(*(np.asarray(a)[order] for a in self))
