"""The calorimeter notebook executes end to end (nbclient), as CI runs it."""

from __future__ import annotations

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from notebook_runner import execute_notebook, last_stream_text


def test_calorimeter_notebook_executes() -> None:
    nb = execute_notebook("calorimeter.ipynb")
    last = last_stream_text(nb)
    for name in ("perlayer ", "perlayer_nuts", "mdn "):
        assert name in last and "coverage68" in last
    assert "notebook run time" in last
