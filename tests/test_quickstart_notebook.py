"""The quick-start notebook executes end to end (nbclient), as CI runs it.

It is the user's first contact with the package (issue 16 item 4): load a card, simulate, build the
problem, NumPyro MCMC(NUTS) / Predictive / SVI on ``calibration_model``, ArviZ summary, pair and PPC
plots, and the same through ``lartpc_bayes.calibrate.calibrate``. The check reads the executed
cells: every fitted parameter is in the ArviZ summaries (NumPyro NUTS, SVI, package), the PPC
reports finite charges, the package's DataTree has its groups and the figures were drawn.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
FREE = ("A_B", "k_B", "E", "tau")


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.get("text", ""))
        elif "data" in o:
            out.append(str(o["data"].get("text/plain", "")))
    return "".join(out)


def _has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.notebook  # ~6.5 CPU-minutes of compilation: CI runs it in its own step (.ci/run)
def test_quickstart_notebook_executes() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell
    code = [c for c in nb.cells if c.cell_type == "code"]
    texts = [_text(c) for c in code]
    src = [c.source for c in code]

    def cell_with(token: str) -> int:
        return next(i for i, s in enumerate(src) if token in s)

    # NumPyro NUTS -> ArviZ summary with R-hat and ESS for every free parameter
    nuts = texts[cell_with("az.summary(idata, var_names=params)")]
    for p in FREE:
        assert re.search(rf"^{p}\s", nuts, re.M), f"{p} missing from the NUTS summary"
    assert "r_hat" in nuts and "ess_bulk" in nuts
    assert "DataTree ['posterior', 'sample_stats', 'observed_data']" in texts[
        cell_with("az.from_numpyro(mcmc)")]
    # pair plot and PPC plot drawn
    assert _has_image(code[cell_with("az.plot_pair")])
    ppc_cell = cell_with("az.plot_ppc_dist")
    assert _has_image(code[ppc_cell])
    m = re.search(r"total charge: observed ([\d.]+) ke-, replicas ([\d.]+) \+- ([\d.]+)",
                  texts[ppc_cell])
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0
    # SVI and the package's calibrate: summaries of every free parameter
    for token in ("az.from_numpyro_svi", "calibrate(problem"):
        t = texts[cell_with(token)]
        for p in FREE:
            assert re.search(rf"^{p}\s", t, re.M), f"{p} missing after {token}"
    groups = texts[cell_with("calibrate(problem")]
    for g in ("posterior", "posterior_predictive", "observed_data", "prior"):
        assert f"'{g}'" in groups
    assert "total charge" in texts[cell_with("print(format_ppc")]
    assert "notebook run time" in texts[-1]
