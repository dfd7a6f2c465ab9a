"""The half-fake campaign's summary (issue 13 item 4) on hand-made records: shifts in sd of (a)
and (c), coverage, pulls; (b) over the seeds that have it; unknown fits refused."""

from __future__ import annotations

import json

import pytest

from lartpc_bayes.detector import PARAM_NAMES
from lartpc_bayes.validation.halffake import main, summarize


def _rec(seed: int, fit: str, mean: float, sd: float) -> dict:
    p = {"mean": mean, "sd": sd, "q05": mean - 1.645 * sd, "q95": mean + 1.645 * sd, "truth": 1.0}
    return {"seed": seed, "fit": fit, "ok": True, "time_s": 10.0,
            "params": {n: dict(p) for n in PARAM_NAMES}}


def test_summary_shifts_coverage_and_partial_b(tmp_path):
    recs = [_rec(0, "a_true", 1.0, 0.1), _rec(0, "c_reco_latent", 1.1, 0.2),
            _rec(0, "b_reco_fixed", 0.8, 0.1),
            _rec(1, "a_true", 1.2, 0.1), _rec(1, "c_reco_latent", 1.2, 0.1)]
    for r in recs:
        (tmp_path / f"seed{r['seed']:03d}_{r['fit']}.json").write_text(json.dumps(r))
    out = summarize(tmp_path)
    assert "seeds with (a) and (c): 2, with (a) and (b): 1" in out
    row = next(line for line in out.splitlines() if line.startswith("| A_B |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "-2.00 +- 0.00"  # (b) - (a) = -0.2 in sd_a = 0.1, seed 0 only
    assert cells[2] == "+0.50 +- 0.50"  # (c) - (a) in sd_a: +1.0 and 0.0
    assert cells[3] == "+0.25 +- 0.25"  # in sd_c: +0.5 and 0.0
    assert cells[5] == "1.50"  # median sd ratio (c)/(a) of 2 and 1
    # 90 % coverage of truth 1.0: (a) seed 0 only, (b) none, (c) seed 0 only
    assert (cells[6], cells[7], cells[8]) == ("0.50", "0.00", "0.50")
    assert cells[9] == "+1.00 +- 1.41"  # pulls of (a): 0 and +2
    assert cells[10] == "+1.25 +- 1.06"  # pulls of (c): +0.5 and +2


def test_unknown_fit_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--fits", "a_true,bogus", "--out", str(tmp_path)])
