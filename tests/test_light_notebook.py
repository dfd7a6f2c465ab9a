"""The light notebook executes end to end (nbclient), as CI runs it (< 60 s on 2 cores)."""

from __future__ import annotations

import pytest

pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

from notebook_runner import execute_notebook, last_stream_text


def test_light_notebook_executes() -> None:
    nb = execute_notebook("light.ipynb")
    assert "notebook run time" in last_stream_text(nb)
