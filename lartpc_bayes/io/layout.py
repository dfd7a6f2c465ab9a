"""Pixel <-> (io_group, io_channel, chip, channel) mapping of the LArPix packets: larnd-sim's
multi-tile layout, or a documented synthetic one.

Chip/channel mapping: with a larnd-sim ``multi_tile_layout`` YAML the mapping of larnd-sim
``fee.export_to_hdf5`` is reproduced (card TPC t = larnd-sim pixel plane t; module t // n_anodes
+ 1; tile from ``tile_map``; tile-local index flipped where ``tile_orientations`` is -1;
(chip, channel) from ``chip_channel_to_position``; io_group/io_channel from ``tile_chip_to_io``
and ``module_to_io_groups``). ``tile_map`` and ``module_to_io_groups`` live in larnd-sim's
detector-properties YAML (``detprop``); when it is not given they are taken from the layout when
present, the tile map is otherwise derived from ``tile_positions`` (it is the geometric order of
the tiles) and io groups default to (2m-1, 2m) for module m. Without a layout, a documented
*synthetic* mapping is used (not a real detector wiring): io_group = tpc + 1; the TPC's pixel grid
is cut into 8 x 8 blocks, block b = bx + nbx * by (bx = ix // 8, by = iy // 8), one chip per block
with ``chip_id`` = 11 + b mod 100, ``io_channel`` = 1 + b // 100, ``channel_id`` = (ix mod 8) +
8 (iy mod 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..detector import DetectorCard
from ..detector.geometry import (
    tpc_pixel_counts,
)
from .common import IOFormatError, _yaml_file

# synthetic chip/channel mapping (module docstring)
_SYN_BLOCK = 8


_SYN_CHIPS_PER_IO = 100


_SYN_FIRST_CHIP = 11


@dataclass(frozen=True)
class _ChannelMap:
    """Vectorised pixel -> (io_group, io_channel, chip_id, channel_id) mapping for one card."""

    kind: str  # "synthetic" or "layout"
    source: str
    # layout mapping tables (unused for the synthetic mapping)
    n_anodes: int = 0
    tile_shape: tuple[int, int] = (0, 0)
    tile_map: np.ndarray | None = None  # (n_anodes, ntx, nty) tile ids
    flip: np.ndarray | None = None  # (max_tile+1, 2) bool: flip local x, y
    conn: np.ndarray | None = None  # (nx_tile, ny_tile) chip*1000+channel, -1 if unconnected
    io_code: np.ndarray | None = None  # (max_tile+1, 256) io_group_local*1000+io_channel or -1
    io_groups: np.ndarray | None = None  # (max_module+1, max_local+1) global io_group or -1

    def forward(self, card: DetectorCard, tpc: np.ndarray, ix: np.ndarray, iy: np.ndarray):
        """(io_group, io_channel, chip_id, channel_id) int64 arrays, -1 where unconnected."""
        tpc, ix, iy = (np.asarray(a, np.int64) for a in (tpc, ix, iy))
        if self.kind == "synthetic":
            nbx = -(-tpc_pixel_counts(card)[tpc, 0] // _SYN_BLOCK)
            b = ix // _SYN_BLOCK + nbx * (iy // _SYN_BLOCK)
            return (
                tpc + 1,
                1 + b // _SYN_CHIPS_PER_IO,
                _SYN_FIRST_CHIP + b % _SYN_CHIPS_PER_IO,
                ix % _SYN_BLOCK + _SYN_BLOCK * (iy % _SYN_BLOCK),
            )
        assert self.tile_map is not None and self.flip is not None and self.conn is not None
        assert self.io_code is not None and self.io_groups is not None
        nx, ny = self.tile_shape
        module = tpc // self.n_anodes + 1
        tile = self.tile_map[tpc % self.n_anodes, ix // nx, iy // ny]
        lx, ly = ix % nx, iy % ny
        lx = np.where(self.flip[tile, 0], nx - 1 - lx, lx)
        ly = np.where(self.flip[tile, 1], ny - 1 - ly, ly)
        cc = self.conn[lx, ly]
        chip = np.where(cc >= 0, cc // 1000, 0)
        channel = np.where(cc >= 0, cc % 1000, -1)
        code = np.where(cc >= 0, self.io_code[tile, np.clip(chip, 0, 255)], -1)
        local = np.where(code >= 0, code // 1000, 0)
        mod_ok = (module < self.io_groups.shape[0]) & (local < self.io_groups.shape[1])
        iog = np.where(
            (code >= 0) & mod_ok,
            self.io_groups[np.clip(module, 0, self.io_groups.shape[0] - 1),
                           np.clip(local, 0, self.io_groups.shape[1] - 1)],
            -1,
        )
        ok = iog >= 0
        return (
            np.where(ok, iog, -1), np.where(ok, code % 1000, -1), np.where(ok, chip, -1),
            np.where(ok, channel, -1),
        )


def _layout_key(d: dict, key: str, fname: str) -> Any:
    if key not in d:
        raise IOFormatError(f"{fname}: pixel layout is missing key '{key}'")
    return d[key]


def _channel_map(
    card: DetectorCard, layout: str | Path | None, detprop: str | Path | None
) -> _ChannelMap:
    """Build the chip/channel mapping (module docstring) and check it against the card."""
    g = card.geometry
    if layout is None:
        counts = tpc_pixel_counts(card)
        nblocks = (-(-counts[:, 0] // _SYN_BLOCK)) * (-(-counts[:, 1] // _SYN_BLOCK))
        if len(g.tpcs) > 255 or 1 + (nblocks.max() - 1) // _SYN_CHIPS_PER_IO > 255:
            raise ValueError(f"card {card.name!r} is too large for the synthetic 8-bit chip keys")
        return _ChannelMap("synthetic", "synthetic")

    fname = str(layout)
    lay = _yaml_file(layout, "pixel layout")
    det = _yaml_file(detprop, "detector properties") if detprop is not None else {}
    pitch_cm = float(_layout_key(lay, "pixel_pitch", fname)) / 10.0
    if abs(pitch_cm - g.pixel_pitch_cm) > 1e-6 * g.pixel_pitch_cm:
        raise IOFormatError(
            f"{fname}: key 'pixel_pitch' = {pitch_cm * 10} mm differs from card {card.name!r} "
            f"pitch {g.pixel_pitch_cm * 10} mm"
        )
    ccp = _layout_key(lay, "chip_channel_to_position", fname)
    pos = np.array([list(v)[:2] for v in ccp.values()], dtype=np.int64)
    keys = np.array(list(ccp.keys()), dtype=np.int64)
    if pos.size == 0 or pos.min() < 0:
        raise IOFormatError(f"{fname}: key 'chip_channel_to_position' must map to indices >= 0")
    nx_t, ny_t = len(np.unique(pos[:, 0])), len(np.unique(pos[:, 1]))
    if pos[:, 0].max() >= nx_t or pos[:, 1].max() >= ny_t:
        raise IOFormatError(f"{fname}: key 'chip_channel_to_position' indices are not a dense grid")
    conn = np.full((nx_t, ny_t), -1, np.int64)
    conn[pos[:, 0], pos[:, 1]] = keys

    t_pos = _layout_key(lay, "tile_positions", fname)
    t_or = _layout_key(lay, "tile_orientations", fname)
    t_idx = _layout_key(lay, "tile_indeces", fname)
    t_io = _layout_key(lay, "tile_chip_to_io", fname)
    tiles = sorted(int(t) for t in t_idx)
    max_tile = max(tiles)
    anodes = sorted({int(t_idx[t][0]) for t in t_idx})
    n_anodes = len(anodes)

    flip = np.zeros((max_tile + 1, 2), bool)
    for t in tiles:
        o = t_or[t]
        flip[t] = (o[2] < 0, o[1] < 0)  # larnd-sim fee.rotate_tile: x uses axes[2], y axes[1]
    io_code = np.full((max_tile + 1, 256), -1, np.int64)
    for t, chips in t_io.items():
        for chip, code in chips.items():
            if int(t) <= max_tile and 0 <= int(chip) < 256:
                io_code[int(t), int(chip)] = int(code)

    tile_map_raw = det.get("tile_map", lay.get("tile_map"))
    if tile_map_raw is not None:
        tile_map = np.asarray(tile_map_raw, dtype=np.int64)
    else:  # the geometric order of the tiles of each anode: x from tile_positions[2], y from [1]
        per = []
        for a in anodes:
            ts = [t for t in tiles if int(t_idx[t][0]) == a]
            xs = np.unique([float(t_pos[t][2]) for t in ts])
            ys = np.unique([float(t_pos[t][1]) for t in ts])
            m = np.full((len(xs), len(ys)), -1, np.int64)
            for t in ts:
                jx = np.searchsorted(xs, float(t_pos[t][2]))
                m[jx, np.searchsorted(ys, float(t_pos[t][1]))] = t
            if np.any(m < 0):
                raise IOFormatError(f"{fname}: tiles of anode {a} do not fill a rectangular grid")
            per.append(m)
        if len({m.shape for m in per}) != 1:
            raise IOFormatError(f"{fname}: anodes have different tile grids")
        tile_map = np.stack(per)
    if tile_map.ndim != 3 or tile_map.shape[0] != n_anodes:
        raise IOFormatError(f"{fname}: 'tile_map' must have shape (n_anodes={n_anodes}, ntx, nty)")

    # cathode direction per anode (tile_orientations[..][0]) must match the card's drift sense
    for t_i, t in enumerate(g.tpcs):
        a = anodes[t_i % n_anodes]
        cath = {int(t_or[k][0]) for k in tiles if int(t_idx[k][0]) == a}
        if cath != {-int(t.drift_sign)}:
            raise IOFormatError(
                f"{fname}: anode {a} (card TPC {t_i}) has cathode direction {sorted(cath)}, but "
                f"the card's TPC {t_i} has its cathode on the "
                f"{'+' if t.drift_sign < 0 else '-'} side"
            )
        want = (nx_t * tile_map.shape[1], ny_t * tile_map.shape[2])
        if tuple(g.n_pixels(t_i)) != want:
            raise IOFormatError(
                f"{fname}: layout gives {want} pixels per anode, card {card.name!r} TPC {t_i} has "
                f"{tuple(g.n_pixels(t_i))}"
            )

    m2io = det.get("module_to_io_groups", lay.get("module_to_io_groups"))
    n_modules = -(-len(g.tpcs) // n_anodes)
    if m2io is None:
        m2io = {m: [2 * m - 1, 2 * m] for m in range(1, n_modules + 1)}
    n_local = max(len(v) for v in m2io.values())
    io_groups = np.full((max(int(m) for m in m2io) + 1, n_local + 1), -1, np.int64)
    for m, groups in m2io.items():
        for i, iog in enumerate(groups):
            io_groups[int(m), i + 1] = int(iog)
    for m in range(1, n_modules + 1):
        if m >= io_groups.shape[0] or np.all(io_groups[m] < 0):
            raise IOFormatError(f"{detprop or fname}: key 'module_to_io_groups' lacks module {m}")
    return _ChannelMap(
        "layout", Path(layout).name, n_anodes, (nx_t, ny_t), tile_map, flip, conn, io_code,
        io_groups,
    )
