"""Load a detector card by shipped name or path: the package's own YAML cards
(:func:`lartpc_bayes.detector.card.parse_card`) and larnd-sim's detector-properties + pixel-layout
YAML pair (:mod:`lartpc_bayes.detector.larndsim`); a calorimeter card or a lone pixel layout is
refused with a message that says what to do.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from . import larndsim
from .card import CardError, DetectorCard, parse_card, resolve_card_path

__all__ = ["load_card"]


def load_card(
    name_or_path: str | Path = "module0", pixel_layout: str | Path | None = None
) -> DetectorCard:
    """Load and validate a detector card by shipped name or path.

    A larnd-sim detector-properties YAML is read too, with its pixel-layout YAML
    (``pixel_layout``; :mod:`lartpc_bayes.detector.larndsim`). A larnd-sim pixel layout alone, or a
    calorimeter card (:mod:`lartpc_bayes.calo`), is refused with a message saying what to do.
    """
    path = resolve_card_path(name_or_path)
    fname = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CardError(f"{fname}: not valid YAML ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CardError(f"{fname}: cannot read detector card ({exc})") from exc
    if isinstance(raw, dict) and "geometry" not in raw:
        if larndsim.is_larndsim_pixel_layout(raw):
            raise CardError(
                f"{fname}: this is a larnd-sim pixel-layout YAML, not a detector card; give it as "
                f"--pixel-layout together with larnd-sim's detector-properties YAML as --detector "
                f"(or use a shipped card: --detector module0, 2x2, ndlar)"
            )
        if larndsim.is_larndsim_detector_properties(raw):
            return larndsim.load_larndsim_card(path, pixel_layout)
    if isinstance(raw, dict) and isinstance(raw.get("geometry"), dict) and (
        "n_layers" in raw["geometry"] or "shower" in raw
    ):
        raise CardError(
            f"{fname}: this is a calorimeter card (lartpc_bayes.calo), not a LArTPC detector "
            f"card; use it with 'lartpc-bayes calo simulate|fit --card {fname}'"
        )
    if pixel_layout is not None:
        raise CardError(f"{fname}: --pixel-layout is only used with a larnd-sim "
                        f"detector-properties YAML as --detector")
    return parse_card(raw, fname)
