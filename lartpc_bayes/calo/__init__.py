"""Calorimeter energy calibration with uncertainties (talks 003 and 004), the sibling study.

A toy 50-layer sampling ECAL (:mod:`.generator`), the talk-004 baselines as Bayesian NumPyro models
(:mod:`.baselines`), the talk-003 Gaussian-mixture network (:mod:`.mdn`), metrics binned in true
energy (:mod:`.metrics`), HDF5 I/O (:mod:`.io`), figures (:mod:`.plots`), the end-to-end pipeline
(:mod:`.pipeline`) and the ``lartpc-bayes calo`` command (:mod:`.cli`). The card is
``models/calo_ecal.yaml`` (:mod:`.card`); the study is documented in ``docs/calorimeter.md``.

Submodules are imported on first use, so ``import lartpc_bayes.calo`` (and the CLI start-up) does
not pay for JAX and NumPyro.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "CaloCard": "card",
    "load_card": "card",
    "CaloEvents": "generator",
    "simulate": "generator",
    "CalibrationFit": "baselines",
    "fit_laplace": "baselines",
    "fit_nuts": "baselines",
    "MdnModel": "mdn",
    "train_mdn": "mdn",
    "fit_all": "pipeline",
    "predict_all": "pipeline",
    "evaluate": "pipeline",
    "read_events": "io",
    "write_events": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
