"""Both experiment commands run end to end (smoke presets) and write their reports."""

import json

from typer.testing import CliRunner

from mambadyn.cli import app
from mambadyn.experiments import summarize


def test_summary_statistics():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and abs(s.std - 1.0) < 1e-12
    assert abs(s.ci95_high - 2.0 - 4.302652729911275 / 3**0.5) < 1e-9  # t_{0.975, 2} = 4.3027


def test_scenarios_smoke(tmp_path, shared_data):
    r = CliRunner().invoke(app, ["experiment", "scenarios", "--preset", "smoke", "--modes", "positive,negative",
                                 "--seeds", "0", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["modes"]) == {"positive", "negative"}
    assert all(ev > 0 for layer in res["modes"]["positive"]["spectrum_seed0"] for ev in layer)
    assert all(ev < 0 for layer in res["modes"]["negative"]["spectrum_seed0"] for ev in layer)
    for f in ("report.md", "curves.png", "spectrum.png"):
        assert (tmp_path / f).stat().st_size > 0
    again = CliRunner().invoke(app, ["experiment", "scenarios", "--preset", "smoke", "--modes", "positive",
                                     "--seeds", "0", "--out", str(tmp_path)])
    assert again.exit_code == 0  # finished runs are reused, not retrained


def test_reorder_smoke(tmp_path, shared_data):
    r = CliRunner().invoke(app, ["experiment", "reorder", "--preset", "smoke", "--variants", "none,hard",
                                 "--seeds", "0", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["variants"]) == {"none", "hard"}
    assert 0 <= res["variants"]["hard"]["test_acc"]["mean"] <= 1
    assert (tmp_path / "curves.png").stat().st_size > 0
    bad = CliRunner().invoke(app, ["experiment", "reorder", "--variants", "sideways", "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "unknown variants" in bad.output
