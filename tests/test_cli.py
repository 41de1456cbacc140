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
    assert [s["observed"] for s in summary] == ["converges", "grows", "blows_up", "blows_up"]
    assert [s["predicted"] for s in summary] == ["converges", "diverges_slowly", "blows_up", "blows_up"]
    mixed = [t["predicted"] for t in summary[3]["tokens"]]
    assert mixed == ["diverges_slowly"] * 2 + ["blows_up"] * 2  # tokens before the first s x > 0 stay slow
    assert summary[0]["limit_of_sqrt_t_times_x"][0] > 0 and "window" in summary[0]["fitted_convergence_exponent"]
    assert (tmp_path / "scenarios.png").stat().st_size > 10_000
    assert len(list(tmp_path.glob("trajectory_*.csv"))) == 4


def test_dynamics_scenarios_and_portrait_of_the_normalised_system(tmp_path):
    r = runner.invoke(app, ["dynamics", "scenarios", "--norm", "--out", str(tmp_path / "s"), "-L", "4", "--t-end", "50"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "s" / "scenarios.json").read_text())
    # with the norm nothing blows up: the paper's fast cases grow, token 1 provably so (linearly)
    assert [s["observed"] for s in summary][1:] == ["grows", "grows", "grows"]
    assert summary[0]["tokens"][0]["observed"] == "converges"  # later tokens stall near 0 (the eps scale)
    assert [s["tokens"][0]["predicted"] for s in summary] == ["converges"] + ["diverges_slowly"] * 3
    assert "linearly" in summary[2]["tokens"][0]["why"] and "limit_of_sqrt_t_times_x" not in summary[0]
    assert all(t["end_time"] is None for s in summary for t in s["tokens"])  # inf: no blow-up (JSON null)
    r = runner.invoke(app, ["dynamics", "portrait", "--norm", "--out", str(tmp_path / "p"), "-L", "3", "--t-end", "5",
                            "--horizon", "50"])
    assert r.exit_code == 0, r.output
    portraits = json.loads((tmp_path / "p" / "portraits.json").read_text())
    assert all(p["normalised"] for p in portraits)
    assert portraits[0]["tokens_observed"] == ["grows"] * 3 and "blows_up" not in str(portraits)


def test_dynamics_portrait_and_phase_diagram(tmp_path):
    r = runner.invoke(app, ["dynamics", "portrait", "--out", str(tmp_path / "p"), "-L", "3", "--t-end", "10"])
    assert r.exit_code == 0, r.output
    portraits = json.loads((tmp_path / "p" / "portraits.json").read_text())
    assert portraits[2]["tokens_observed"] == ["converges"] * 3
    assert portraits[0]["t_end"] == 1e5  # growing tokens: run on, 10x at a time, to the horizon
    tmp_path = tmp_path / "pd"
    r = runner.invoke(app, ["dynamics", "phase-diagram", "--out", str(tmp_path), "--systems", "6", "--dims", "2",
                            "-L", "2", "--t-end", "5", "--max-steps", "400"])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "phase_diagram.json").read_text())
    assert {r["criterion"] for r in rows} == {"matrix", "symmetric"}
    assert all(r["systems"] == 6 for r in rows if r["criterion"] == "matrix")  # every cell filled
    assert {r["positive"] for r in rows if r["criterion"] == "matrix"} == {0, 1, 2}
    assert (tmp_path / "phase_diagram.png").exists()
