"""The table that says which continuous-time model describes each trained layer, on constructed summaries."""

import json

from typer.testing import CliRunner

from mambadyn.cli import app
from mambadyn.experiments.dynamics_vs_stack import describes, verdict


def s(mean, lo, hi, n=5):
    return {"n": n, "mean": mean, "std": 0.1, "ci95_low": lo, "ci95_high": hi}


def layer(pn, pc, nn, nc):
    return {"paper": {"agreement": pn, "cosine_agreement": pc, "spearman": None, "cosine_spearman": None},
            "normalised": {"agreement": nn, "cosine_agreement": nc, "spearman": None, "cosine_spearman": None}}


def test_verdicts_follow_the_interval_against_one_half():
    assert verdict(s(0.8, 0.6, 1.0)) == "predicts"
    assert verdict(s(0.2, -0.1, 0.4)) == "contradicts"
    assert verdict(s(0.6, 0.4, 0.8)) == "undecided"
    assert verdict(s(0.9, float("nan"), float("nan"), n=1)) == "undecided"  # one window: no interval
    assert verdict(None) == "n/a"


def test_describes_names_the_model_that_predicts_both_quantities():
    good, bad, mid = s(0.9, 0.7, 1.0), s(0.1, 0.0, 0.3), s(0.5, 0.3, 0.7)
    assert describes(layer(good, good, bad, mid)) == "paper; contradicted: normalised (norm)"
    assert describes(layer(good, mid, good, good)) == "normalised; predicts: paper (norm)"
    assert describes(layer(good, good, good, good)) == "both"
    assert describes(layer(good, mid, bad, mid)).startswith("neither; predicts: paper (norm)")


def flat(text):  # typer's error box wraps long messages
    return " ".join(text.replace("│", " ").split())


def test_cli_writes_the_table_and_refuses_probes_without_windows(tmp_path):
    probe = {"windows": {"n": 4, "len": 256, "ode": {"0": layer(s(0.9, 0.7, 1.0), s(0.6, 0.55, 0.65),
                                                          s(0.2, 0.1, 0.3), None)}}}
    (tmp_path / "m1").mkdir()
    (tmp_path / "m1" / "probe.json").write_text(json.dumps(probe))
    out = tmp_path / "dvs.md"
    r = CliRunner().invoke(app, ["experiment", "dynamics-vs-stack", str(tmp_path / "m1"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| m1 | 0 | 4 x 256 | 0.90 [0.70, 1.00] | 0.20 [0.10, 0.30] | 0.60 [0.55, 0.65] | n/a | paper;" in text
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "probe.json").write_text(json.dumps({"windows": None}))
    r = CliRunner().invoke(app, ["experiment", "dynamics-vs-stack", str(tmp_path / "m2"), "--out",
                                 str(tmp_path / "x.md")])
    assert r.exit_code != 0 and "no windows.ode" in flat(r.output)
    r = CliRunner().invoke(app, ["experiment", "dynamics-vs-stack", str(tmp_path / "nothing"), "--out",
                                 str(tmp_path / "y.md")])
    assert r.exit_code != 0 and "no probe.json" in flat(r.output)


def test_probes_of_the_same_name_keep_their_parent(tmp_path):
    from mambadyn.experiments.dynamics_vs_stack import load_probes

    for parent in ("gpu", "cpu"):
        (tmp_path / parent / "free").mkdir(parents=True)
        (tmp_path / parent / "free" / "probe.json").write_text("{}")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "probe.json").write_text("{}")
    got = load_probes([tmp_path / "gpu" / "free", tmp_path / "cpu" / "free", tmp_path / "other"])
    assert list(got) == ["gpu/free", "cpu/free", "other"]


def test_a_file_that_is_not_a_probe_and_a_folder_for_notes_are_named(tmp_path):
    (tmp_path / "mine.txt").write_text("not json")
    r = CliRunner().invoke(app, ["experiment", "dynamics-vs-stack", str(tmp_path / "mine.txt"), "--out",
                                 str(tmp_path / "x.md")])
    assert r.exit_code != 0 and "is not a probe.json" in flat(r.output)
    probe = {"windows": {"n": 2, "len": 8, "ode": {"0": layer(None, None, None, None)}}}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "probe.json").write_text(json.dumps(probe))
    r = CliRunner().invoke(app, ["experiment", "dynamics-vs-stack", str(tmp_path / "m"), "--out",
                                 str(tmp_path / "x.md"), "--notes", str(tmp_path / "m")])
    assert r.exit_code != 0 and "not a file" in flat(r.output) and not (tmp_path / "x.md").exists()
