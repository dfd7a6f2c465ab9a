"""Execute a notebook of ``notebooks/`` end to end with nbclient, as CI runs it (shared by the
notebook tests)."""

from __future__ import annotations

from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute_notebook(name: str, timeout_s: int = 300):
    """Run ``notebooks/<name>`` in a fresh python3 kernel, cwd = notebooks/; returns the executed
    notebook. Raises nbclient's CellExecutionError on the first failing cell."""
    import nbclient
    import nbformat

    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=timeout_s, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    ).execute()
    return nb


def last_stream_text(nb) -> str:
    """The stdout/stderr text of the notebook's last cell."""
    return "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
