"""Calibrate from detector data alone: file -> reconstruction -> problem with geometry -> fit.

:func:`calibrate_data` is what ``lartpc-bayes fit DATA`` runs when DATA has no true segments
(LArPix packets, ndlar_flow hits, or a hit file without ``truth/segments``), or when
``reconstruct=True`` is asked for a fake-data file ("half-fake data").
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..detector import DetectorCard
from .geometry import reco_geometry
from .pipeline import RecoResult, load_data, reconstruct
from .tracks import RecoConfig


def build_reco_problem(card: DetectorCard, res: RecoResult, hits, *, geometry_latents: bool = True,
                       tpc_offset: bool = False, cfg: RecoConfig | None = None, **kwargs):
    """:func:`lartpc_bayes.model.build_problem` for reconstructed segments: drift recomputed from
    the measured drift time with the sampled E, plus the geometry latents when asked."""
    from ..model import build_problem

    cfg = cfg or RecoConfig()
    if res.segments.n == 0:
        raise ValueError("no reconstructed segment passes the selection: nothing to calibrate")
    geom = reco_geometry(card, res.reco, track_latents=geometry_latents, tpc_offset=tpc_offset,
                         sys_transverse_cm=cfg.sys_transverse_cm, sys_drift_cm=cfg.sys_drift_cm)
    return build_problem(card, res.segments, hits, geometry=geom, **kwargs)


def calibrate_data(
    path: str | Path,
    output: str | Path,
    *,
    card: DetectorCard | str | None = None,
    layout: str | Path | None = None,
    t0: str | float = "file",
    geometry_latents: bool = True,
    tpc_offset: bool = False,
    method: str = "laplace",
    fix: list[str] | None = None,
    latent_length_cm: float = 5.0,
    likelihood: str = "ppp",
    eps: float = 1e-8,
    seed: int = 0,
    plots: str | Path | None = None,
    progress: bool = True,
    reco_output: str | Path | None = None,
    **fit_kwargs: Any,
) -> str:
    """Reconstruct, select, build the problem and fit; writes the netCDF; returns the report."""
    from ..calibrate import _parse_fix, calibrate
    from ..likelihood import LikelihoodConfig
    from ..results import format_report, make_plots, save_datatree

    data = load_data(path, card, layout=layout)
    res = reconstruct(data.hits, data.card, t0=t0, t0_source=data.t0_source)
    if reco_output is not None:
        from .io import write_reco

        write_reco(reco_output, res, data.card)
    truth = data.hitfile.true_params if data.hitfile is not None else None
    fixed = _parse_fix(list(fix or []), data.card, truth)
    problem = build_reco_problem(
        data.card, res, data.hits, geometry_latents=geometry_latents, tpc_offset=tpc_offset,
        latent_length_cm=latent_length_cm, likelihood=LikelihoodConfig(kind=likelihood, eps=eps),
        fixed=fixed,
    )
    dt = calibrate(problem, method=method, seed=seed, truth=truth, progress=progress,
                   **fit_kwargs)
    dt.attrs.update({f"reco_{k}": (v if isinstance(v, int | float | str) else str(v))
                     for k, v in res.attrs.items()})
    dt.attrs["reco_input"] = f"{data.kind}: {path}"
    dt.attrs["reco_geometry_latents"] = int(geometry_latents)
    dt.attrs["reco_tpc_drift_offset"] = int(tpc_offset)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    save_datatree(dt, output)
    make_plots(dt, Path(plots) if plots else Path(output).parent, Path(output).stem, data.card)
    head = (f"data: {data.kind} {path}; t0: {res.attrs['t0_source']}; "
            f"{res.attrs['n_selected']} of {res.attrs['n_tracks']} tracks selected "
            f"({res.attrs['n_stopping']} stopping), {res.segments.n} segments, "
            f"{res.attrs['length_cm']:.1f} cm\n")
    return head + format_report(dt)


def atomic_path(path: str | Path):
    """(temporary path beside ``path``, commit function doing os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)

    def commit() -> None:
        os.replace(tmp, path)

    def abort() -> None:
        if os.path.exists(tmp):
            os.unlink(tmp)

    return tmp, commit, abort


__all__ = ["atomic_path", "build_reco_problem", "calibrate_data"]
