"""Shared HDF5 plumbing of the io room: the error type, safe opening, atomic writes, field
reading and validation.

Everything here runs on the host (NumPy + h5py). Malformed input raises :class:`IOFormatError` (a
``ValueError``) whose message names the file and the offending dataset or field; a file that is not
HDF5, or is truncated, raises it naming the file. Every write is atomic: the file is written under a
temporary name in the destination directory and moved into place with :func:`os.replace` only when
complete, so an interrupted or failed write never leaves a half-written output and never touches an
existing file of the same name.

Coordinate frames
-----------------
Our cards use larnd-sim's *internal* frame (drift axis z, anode plane (x, y)). larnd-sim *input*
files (edep-sim ``segments``) are in the edep-sim frame (beam axis z, drift axis x); larnd-sim swaps
x and z on reading (``cli/simulate_pixels.py::swap_coordinates``) and swaps them back when it copies
the segments to its output, marking the dataset ``zbeam=True``. :func:`read_segments` therefore
swaps x and z by default, unless the dataset carries ``zbeam`` = False; :func:`write_segments` swaps
back and sets ``zbeam=True``. ndlar_flow hits use the same edep-like frame (x = drift, z = beam).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from ..data import Hits
from ..detector import DetectorCard
from ..detector.geometry import (
    tpc_id_offsets,
)


class IOFormatError(ValueError):
    """A file is malformed; the message names the file and the dataset or field."""


@contextmanager
def _open_read(path: str | Path) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading; non-HDF5, truncated or damaged files raise IOFormatError."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise IOFormatError(
            f"{p}: not a readable HDF5 file (not HDF5, truncated or corrupt): {exc}"
        ) from exc
    try:
        yield f
    except OSError as exc:  # a read from a damaged file fails later than the open
        raise IOFormatError(f"{p}: HDF5 read failed (truncated or corrupt file?): {exc}") from exc
    finally:
        f.close()


@contextmanager
def _atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Yield a new HDF5 file that replaces ``path`` atomically when the block succeeds.

    The file is written as ``.<name>.<random>.tmp`` in the destination directory, flushed to disk
    and moved over ``path`` with :func:`os.replace`. On any exception the temporary file is removed
    and an existing ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"{target}: directory {directory} does not exist")
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a directory")
    tmp = directory / f".{target.name}.{uuid.uuid4().hex}.tmp"
    f: h5py.File | None = None
    try:
        f = h5py.File(tmp, "x")
        yield f
        f.close()
        f = None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if f is not None:
            try:
                f.close()
            except Exception:  # the original exception matters, not a failing close
                pass
        tmp.unlink(missing_ok=True)
        raise


def _get_dataset(f: h5py.File, name: str, fname: str) -> h5py.Dataset:
    if name not in f:
        raise IOFormatError(f"{fname}: missing dataset '{name}'")
    obj = f[name]
    if isinstance(obj, h5py.Group) and "data" in obj and isinstance(obj["data"], h5py.Dataset):
        obj = obj["data"]  # h5flow layout: /<path>/data
    if not isinstance(obj, h5py.Dataset):
        raise IOFormatError(f"{fname}: '{name}' is not a dataset")
    if obj.dtype.names is None:
        raise IOFormatError(f"{fname}: dataset '{name}' is not a compound (structured) dataset")
    if obj.ndim != 1:
        raise IOFormatError(f"{fname}: dataset '{name}' must be one-dimensional, shape {obj.shape}")
    return obj


def _pick(names: tuple[str, ...] | list[str], candidates: tuple[str, ...]) -> str | None:
    for c in candidates:
        if c in names:
            return c
    return None


def _check_numeric(
    arr: np.ndarray, field_: str, where: str, *, integer: bool = False
) -> np.ndarray:
    """Check dtype kind (and finiteness for floats); raise IOFormatError naming the field."""
    kinds = "iu" if integer else "iuf"
    if arr.dtype.kind not in kinds or arr.dtype.subdtype is not None:
        want = "an integer" if integer else "a numeric"
        raise IOFormatError(f"{where}: field '{field_}' must have {want} dtype, got {arr.dtype}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if np.any(bad):
            raise IOFormatError(
                f"{where}: field '{field_}' contains {int(bad.sum())} NaN/inf value(s) "
                f"(first at row {int(np.argmax(bad))})"
            )
    return arr


def _read_fields(
    ds: h5py.Dataset, wanted: dict[str, tuple[tuple[str, ...], bool, bool]], where: str
) -> dict[str, np.ndarray | None]:
    """Read the first present alias of each wanted field.

    wanted: key -> (aliases, required, integer). Returns key -> array (None for absent optional).
    """
    names = ds.dtype.names or ()
    chosen: dict[str, str | None] = {}
    for key, (aliases, required, _) in wanted.items():
        name = _pick(names, aliases)
        if name is None and required:
            alt = " or ".join(f"'{a}'" for a in aliases)
            raise IOFormatError(f"{where}: missing field {alt}")
        chosen[key] = name
    present = sorted({n for n in chosen.values() if n is not None})
    for n in present:
        if ds.dtype[n].kind not in "iuf" or ds.dtype[n].subdtype is not None:
            raise IOFormatError(f"{where}: field '{n}' must be numeric, got dtype {ds.dtype[n]}")
    data = ds.fields(present)[:] if present and ds.shape[0] else np.zeros(0, ds.dtype)
    out: dict[str, np.ndarray | None] = {}
    for key, name in chosen.items():
        if name is None:
            out[key] = None
            continue
        out[key] = _check_numeric(np.asarray(data[name]), name, where, integer=wanted[key][2])
    return out


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("lartpc_bayes")
    except Exception:
        return "unknown"


def _as_int_array(a: Any, name: str, n: int | None, where: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        raise ValueError(
            f"{where}: field '{name}' must be 1-D of length {n}, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: field '{name}' must be integer, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _validate_hits(hits: Hits, card: DetectorCard, where: str, err: type[ValueError]) -> Hits:
    """Hits as int64 arrays, checked against the card (equal lengths, ADC range, pixel ids)."""
    try:
        n = int(np.shape(hits.pixel_id)[0])
        h = Hits(*(_as_int_array(getattr(hits, k), k, n, where) for k in Hits._fields))
    except (ValueError, IndexError) as exc:
        raise err(str(exc)) from exc
    top = card.electronics.adc_counts - 1
    if h.n and (h.adc.min() < 0 or h.adc.max() > top):
        raise err(
            f"{where}: field 'adc' outside 0..{top} (2^{card.electronics.adc_bits} - 1): "
            f"range [{h.adc.min()}, {h.adc.max()}]"
        )
    n_pix = int(tpc_id_offsets(card)[-1])
    if h.n and (h.pixel_id.min() < 0 or h.pixel_id.max() >= n_pix):
        raise err(
            f"{where}: field 'pixel_id' outside [0, {n_pix}) of card {card.name!r}: "
            f"range [{h.pixel_id.min()}, {h.pixel_id.max()}]"
        )
    return h


def _swap_xz(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[..., [2, 1, 0]]


def _attr_to_py(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    return v


def _yaml_file(path: str | Path, what: str) -> dict:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise
    except (OSError, yaml.YAMLError) as exc:
        raise IOFormatError(f"{p}: cannot read {what} YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise IOFormatError(f"{p}: {what} YAML must be a mapping")
    return raw


def describe_file(path: str | Path) -> str:
    """``"netcdf"`` for a file that may be a netCDF-4 fit result, else one phrase saying what it is.

    Reads only the file signature and the HDF5 top level (no data): a missing file raises
    FileNotFoundError naming it; a non-HDF5 file (empty, truncated, text, netCDF-3) and the
    package's other HDF5 formats (hit files, LArPix packets, larnd-sim segments, ndlar_flow) are
    named, so that a command expecting a fit result can say what it got instead.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        return "is a directory"
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head[:3] == b"CDF":
        return "is a netCDF-3 (classic) file, not a netCDF-4 fit result"
    if not h5py.is_hdf5(p):
        what = "empty" if not head else "no HDF5/netCDF-4 signature"
        return f"is not a netCDF file ({what}: truncated, or another format)"
    try:
        with h5py.File(p, "r") as f:
            keys = set(f.keys())
            fmt = _attr_to_py(f.attrs.get("format", ""))
            has_version = "format_version" in f.attrs
            if "_NCProperties" in f.attrs:  # written by a netCDF-4 library (h5netcdf, netCDF4)
                return "netcdf"
    except OSError as exc:
        return f"is not a readable HDF5/netCDF-4 file (truncated or corrupt: {exc})"
    if "hits" in keys and (has_version or "hits" in str(fmt)):
        return (f"is a hit file (HDF5, 'lartpc-bayes simulate' format), not a fit result: run "
                f"'lartpc-bayes fit {p} -o result.nc' first")
    if "packets" in keys:
        return "is a LArPix packets file (HDF5), not a fit result: run 'lartpc-bayes fit' on it"
    if "segments" in keys and len(keys) <= 4:
        return "is a larnd-sim segments file (HDF5), not a fit result: 'lartpc-bayes simulate "\
            "--segments' reads it"
    if "charge" in keys:
        return "is an ndlar_flow file (HDF5), not a fit result: run 'lartpc-bayes fit' on it"
    return "netcdf"
