"""Light beside the hits: a ``light/`` group in a hit file (HDF5), written atomically.

Layout: ``/light/event_id`` (E,) int64, ``/light/pe`` (E, C) float64 photo-electrons per channel
per event, attributes ``light_card`` (name), ``n_channels``, ``noise`` and optional truth
(``gain``). The rest of the file is left untouched: the file is copied to a temporary file in the
same folder, the group (re)written there, and the copy moved over the original with os.replace,
so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .likelihood import LightData

GROUP = "light"


def write_light(path: str | Path, light: LightData, *, light_card: str = "",
                attrs: dict | None = None) -> Path:
    """Add (or replace) the ``light/`` group of the HDF5 file ``path`` (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.exists():
            shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            if GROUP in f:
                del f[GROUP]
            g = f.create_group(GROUP)
            g["event_id"] = np.asarray(light.event_id, np.int64)
            g["pe"] = np.asarray(light.pe, np.float64)
            g.attrs["light_card"] = light_card
            g.attrs["n_channels"] = int(np.shape(light.pe)[1])
            for k, v in (attrs or {}).items():
                g.attrs[k] = v
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_light(path: str | Path) -> LightData:
    """Read the ``light/`` group of a file written by :func:`write_light`."""
    with h5py.File(path, "r") as f:
        if GROUP not in f:
            raise KeyError(f"{path}: no '{GROUP}/' group (simulate with light to write one)")
        g = f[GROUP]
        return LightData(np.asarray(g["event_id"]), np.asarray(g["pe"]))
