"""The command line end to end (small sizes)."""

import json

from typer.testing import CliRunner

from mambadyn.cli import app

runner = CliRunner()


def test_info_lists_backends():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.output
    assert "chunked" in r.output and "reference" in r.output


def test_dynamics_scenarios_writes_figure_and_numbers(tmp_path):
    r = runner.invoke(app, ["dynamics", "scenarios", "--out", str(tmp_path), "-L", "4", "--t-end", "50"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "scenarios.json").read_text())
    assert [s["observed"] for s in summary] == ["converging", "diverging", "blow-up"]
    assert (tmp_path / "scenarios.png").stat().st_size > 10_000
    assert len(list(tmp_path.glob("trajectory_*.csv"))) == 3


def test_dynamics_portrait_and_phase_diagram(tmp_path):
    r = runner.invoke(app, ["dynamics", "portrait", "--out", str(tmp_path), "-L", "3", "--t-end", "10"])
    assert r.exit_code == 0, r.output
    assert [s["observed"] for s in json.loads((tmp_path / "portraits.json").read_text())][2] == "converging"
    r = runner.invoke(app, ["dynamics", "phase-diagram", "--out", str(tmp_path), "--systems", "6", "--dims", "2",
                            "-L", "2", "--t-end", "5", "--max-steps", "400"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "phase_diagram.json").read_text())
    assert {r["criterion"] for r in rows} == {"matrix", "symmetric"}
    assert (tmp_path / "phase_diagram.png").exists()
