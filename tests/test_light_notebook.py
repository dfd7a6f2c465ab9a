"""The light notebook executes end to end (nbclient), as CI runs it (< 60 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "light.ipynb"


def test_light_notebook_executes() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    last = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    assert "notebook run time" in last
