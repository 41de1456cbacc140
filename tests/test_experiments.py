"""Both experiment commands run end to end (smoke presets) and write their reports."""

import json

from typer.testing import CliRunner

from mambadyn.cli import app
from mambadyn.experiments import compare_to, holm, paired, summarize


def test_summary_statistics():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and abs(s.std - 1.0) < 1e-12
    assert abs(s.ci95_high - 2.0 - 4.302652729911275 / 3**0.5) < 1e-9  # t_{0.975, 2} = 4.3027


def test_paired_comparison_and_holm():
    from scipy import stats

    a = {0: 1.50, 1: 1.52, 2: 1.49, 3: 1.55, 4: 1.51}
    b = {0: 1.53, 1: 1.55, 2: 1.50, 3: 1.58, 4: 1.52, 9: 0.0}  # seed 9 has no partner: left out
    c = paired(a, b)
    assert c.n == 5 and abs(c.mean_diff + 0.022) < 1e-12
    assert abs(c.p - stats.ttest_rel(list(a.values()), [b[k] for k in a]).pvalue) < 1e-12
    assert c.ci95_low < c.mean_diff < c.ci95_high < 0
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (monotone); NaN untouched
    adj = holm([0.04, 0.01, float("nan"), 0.02])
    assert [round(adj[i], 12) for i in (0, 1, 3)] == [0.04, 0.03, 0.04] and adj[2] != adj[2]
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    fam = compare_to({"positive": a, "free": b, "mixed": b}, "positive")
    assert set(fam) == {"free", "mixed"} and fam["free"].p_holm == min(1.0, 2 * fam["free"].p)


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
