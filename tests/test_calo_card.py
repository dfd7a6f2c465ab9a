"""The calorimeter card: the shipped card loads, and malformed cards fail naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lartpc_bayes.calo.card import (
    DEFAULT_CARD_PATH,
    CaloCardError,
    card_from_dict,
    card_from_yaml,
    load_card,
)


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load(DEFAULT_CARD_PATH.read_text())


def test_shipped_card_values() -> None:
    card = load_card()
    assert card.geometry.n_layers == 50
    assert card.geometry.depth_x0 == pytest.approx(1.0 + 50 * 0.45)
    assert card.response.stochastic_a == pytest.approx(0.17)
    assert card.beam.energy_min_gev == 1.0 and card.beam.energy_max_gev == 500.0
    assert card.mdn.hidden_layers == 4 and card.mdn.hidden_units == 64
    assert card.mdn.components == 3 and card.mdn.learning_rate == pytest.approx(1e-4)
    assert card.source == str(DEFAULT_CARD_PATH)


def test_yaml_round_trip() -> None:
    card = load_card()
    again = card_from_yaml(card.to_yaml(), source=card.source)
    assert again == card


def test_replace_sections() -> None:
    card = load_card().replace(response={"noise_b": 0.0}, beam={"particle": "pi0"})
    assert card.response.noise_b == 0.0 and card.beam.particle == "pi0"
    assert card.response.stochastic_a == pytest.approx(0.17)


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "bad_card.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("section", "key", "value", "fragment"),
    [
        ("response", "noise_b", -1.0, "'response.noise_b' must be >= 0"),
        ("geometry", "n_layers", 2.5, "'geometry.n_layers' must be an integer"),
        ("beam", "particle", "muon", "'beam.particle' must be one of"),
        ("shower", "rho", [0.7], "'shower.rho' must have 2 entries"),
        ("mdn", "validation_fraction", 1.5, "'mdn.validation_fraction' must be in (0, 1)"),
        ("shower", "alpha_min", 0.5, "'shower.alpha_min' must be > 1"),
    ],
)
def test_bad_values_name_file_and_key(
    tmp_path: Path, raw: dict, section: str, key: str, value: object, fragment: str
) -> None:
    raw[section][key] = value
    path = _write(tmp_path, raw)
    with pytest.raises(CaloCardError) as err:
        load_card(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_missing_and_unknown_keys(tmp_path: Path, raw: dict) -> None:
    del raw["response"]["event_gain_c"]
    path = _write(tmp_path, raw)
    with pytest.raises(CaloCardError, match=r"bad_card.yaml: missing key 'response.event_gain_c'"):
        load_card(path)
    raw["response"]["event_gain_c"] = 0.01
    raw["response"]["event_gain"] = 0.01
    with pytest.raises(CaloCardError, match=r"unknown key 'response.event_gain'"):
        card_from_dict(raw, source="typo.yaml")
    raw["response"].pop("event_gain")
    raw["beam"]["energy_max_gev"] = 0.5
    with pytest.raises(CaloCardError, match=r"'beam.energy_max_gev' \(0.5\) must exceed"):
        card_from_dict(raw, source="order.yaml")


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(CaloCardError, match=r"nope\.yaml: calorimeter card not found"):
        load_card(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("geometry: [unclosed\n")
    with pytest.raises(CaloCardError, match=r"broken\.yaml: not valid YAML"):
        load_card(bad)
