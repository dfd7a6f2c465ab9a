"""HDF5 input/output for calorimeter events and fitted calibrations, written atomically.

Every file is first written to a temporary file in the destination directory and then moved into
place with :func:`os.replace`, so a crash or Ctrl-C never leaves a truncated file under the final
name. Layout of an event file (``format = "lartpc_bayes.calo.events"``)::

    /layers        (N, L) float32   EM-scale layer energies [GeV]
    /e_true ...    (N,)             one dataset per CaloEvents column
    /detector/layer_gains (L,)      frozen per-layer gains
    attrs: format, version, card (YAML text), seed, n_events

A model file (``format = "lartpc_bayes.calo.model"``) stores a nested mapping of arrays as groups
and datasets (see :func:`write_tree`) plus JSON metadata in attributes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .card import CaloCard, card_from_yaml
from .generator import CaloEvents

EVENTS_FORMAT = "lartpc_bayes.calo.events"
MODEL_FORMAT = "lartpc_bayes.calo.model"
FORMAT_VERSION = 1


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file beside ``path``; on success move it to ``path``, else delete."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_format(f: h5py.File, expected: str, path: str | Path) -> None:
    fmt = f.attrs.get("format")
    if fmt != expected:
        raise ValueError(f"{path}: not a {expected} file (format attribute {fmt!r})")


def write_events(
    path: str | Path, events: CaloEvents, card: CaloCard, seed: int, compression: str | None = None
) -> Path:
    """Write events with the card (YAML) and seed that produced them; returns the path."""
    with atomic_h5(path) as f:
        f.attrs["format"] = EVENTS_FORMAT
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["card"] = card.to_yaml()
        f.attrs["card_source"] = card.source
        f.attrs["seed"] = int(seed)
        f.attrs["n_events"] = len(events)
        for fld in fields(events):
            data = getattr(events, fld.name)
            if fld.name == "layer_gains":
                f.create_dataset("detector/layer_gains", data=data)
            else:
                f.create_dataset(fld.name, data=data, compression=compression)
    return Path(path)


def read_events(path: str | Path) -> tuple[CaloEvents, CaloCard, dict[str, Any]]:
    """Read an event file: the events, the card they were simulated with, and the attributes."""
    with h5py.File(path, "r") as f:
        _check_format(f, EVENTS_FORMAT, path)
        cols = {
            fld.name: f[fld.name][()] for fld in fields(CaloEvents) if fld.name != "layer_gains"
        }
        gains = f["detector/layer_gains"][()]
        attrs = {k: f.attrs[k] for k in f.attrs}
    card = card_from_yaml(str(attrs["card"]), source=f"{path}:card")
    return CaloEvents(layer_gains=gains, **cols), card, attrs


def write_tree(group: h5py.Group, tree: Mapping[str, Any]) -> None:
    """Store a nested mapping: mappings become groups, arrays/scalars datasets; skip ``None``."""
    for key, value in tree.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            write_tree(group.create_group(key), value)
        elif isinstance(value, str):
            group.create_dataset(key, data=value)  # variable-length UTF-8 string
        else:
            group.create_dataset(key, data=np.asarray(value))


def read_tree(group: h5py.Group) -> dict[str, Any]:
    """Inverse of :func:`write_tree` (scalars come back as NumPy scalars, strings as ``str``)."""
    out: dict[str, Any] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item)
        else:
            value = item[()]
            out[key] = value.decode() if isinstance(value, bytes) else value
    return out


def write_model(
    path: str | Path, tree: Mapping[str, Any], card: CaloCard, meta: Mapping[str, Any]
) -> Path:
    """Write fitted calibrations (``tree``), the card and JSON-serialisable metadata ``meta``."""
    with atomic_h5(path) as f:
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["card"] = card.to_yaml()
        f.attrs["meta"] = json.dumps(meta)
        write_tree(f, tree)
    return Path(path)


def read_model(path: str | Path) -> tuple[dict[str, Any], CaloCard, dict[str, Any]]:
    """Read a model file: the tree of arrays, the card, the metadata."""
    with h5py.File(path, "r") as f:
        _check_format(f, MODEL_FORMAT, path)
        tree = read_tree(f)
        card = card_from_yaml(str(f.attrs["card"]), source=f"{path}:card")
        meta = json.loads(str(f.attrs["meta"]))
    return tree, card, meta


__all__ = [
    "EVENTS_FORMAT",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "atomic_h5",
    "read_events",
    "read_model",
    "read_tree",
    "write_events",
    "write_model",
    "write_tree",
]
