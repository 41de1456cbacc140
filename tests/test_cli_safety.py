"""Nothing a user had is lost, and the exit code says what happened: the command line as a hostile user
drives it (issue 34, items 1-3 and 11), each case in a temporary folder."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mambadyn.cli import run
from mambadyn.errors import Interrupted, OutputError, on_interrupt
from mambadyn.outputs import MANIFEST, atomic_folder, check_output, claim_folder, file_marker, write_file


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _users_folder(tmp_path, name="mydata"):
    folder = tmp_path / name
    (folder / "ckpt-10").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{years of work}")
    (folder / "ckpt-10" / "model.safetensors").write_bytes(b"weights")
    (folder / "metrics.jsonl").write_text('{"step": 10}\n')
    return folder


@pytest.mark.parametrize("argv", [
    ["probe", "{folder}", "--out", "{folder}"],  # a training run probed into itself
    ["signature", "--out", "{folder}"],
    ["dynamics", "scenarios", "--out", "{folder}", "--t-end", "10"],
    ["dynamics", "portrait", "--out", "{folder}"],
    ["dynamics", "phase-diagram", "--out", "{folder}", "--systems", "1", "--dims", "2"],
    ["experiment", "scenarios", "--out", "{folder}", "--preset", "smoke", "--seeds", "0"],
    ["experiment", "claims", "--results", "{folder}", "--out", "{folder}"],
])
def test_no_command_writes_over_a_folder_of_someone_elses_files(tmp_path, capsys, argv):
    folder = _users_folder(tmp_path)
    before = _snapshot(folder)
    code = run([a.format(folder=folder) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(folder) in err, err
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no hidden temporary or .old folder


@pytest.mark.parametrize("argv", [["signature", "--out", "{f}"], ["dynamics", "scenarios", "--out", "{f}"],
                                  ["probe", "nowhere", "--out", "{f}"]])
def test_an_existing_file_as_out_is_refused_and_left_where_it_is(tmp_path, capsys, argv):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert run([a.format(f=f) for a in argv]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_output_is_replaced_by_the_same_command_and_refused_to_any_other(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, "probe") as tmp:
        (tmp / "probe.json").write_text("{}")
    assert json.loads((out / MANIFEST).read_text()) == {"command": "probe", "files": ["probe.json"]}
    with atomic_folder(out, "probe") as tmp:  # a rerun replaces its own earlier output
        (tmp / "report.md").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "report.md"]
    with pytest.raises(OutputError, match="mambadyn probe"):
        check_output(out, "signature")
    (out / "my-notes.md").write_text("added by the user")
    with pytest.raises(OutputError, match="my-notes.md"):
        with atomic_folder(out, "probe"):
            pass
    assert (out / "my-notes.md").read_text() == "added by the user"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_or_interrupted_output_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    for exc in (ValueError("bad"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_folder(out, "probe") as tmp:
                (tmp / "half.json").write_text("{")
                raise exc
        assert list(tmp_path.iterdir()) == []


def test_invalid_arguments_leave_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    for argv in (["dynamics", "scenarios", "--t-end", "-1"], ["dynamics", "portrait", "--horizon", "inf"],
                 ["dynamics", "phase-diagram", "--dims", "6-2"]):
        assert run(argv + ["--out", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []
    assert "--horizon" in capsys.readouterr().err


def test_a_write_protected_out_is_named_not_the_temporary_folder(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the check needs an ordinary user")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(OutputError, match=str(ro / "out")):
        with atomic_folder(ro / "out", "probe"):
            pass


def test_resumable_and_single_file_outputs_are_marked_and_checked(tmp_path):
    exp = claim_folder(tmp_path / "exp", "experiment scenarios")
    (exp / "runs").mkdir()
    assert claim_folder(exp, "experiment scenarios") == exp  # its own runs: resumed
    (exp / "runs" / "log.txt").write_text("a run's file")
    with pytest.raises(OutputError, match="also holds"):  # a resumable folder (no file list) is never swapped
        check_output(exp, "experiment scenarios")
    with pytest.raises(OutputError, match="experiment scenarios"):
        claim_folder(exp, "experiment reorder")
    md = tmp_path / "claims.md"
    md.write_text("my own notes")
    with pytest.raises(OutputError, match="not written by"):
        write_file(md, "# verdicts\n", "experiment claims")
    md.unlink()
    write_file(md, "# verdicts\n", "experiment claims")
    write_file(md, "# again\n", "experiment claims")
    assert md.read_text() == file_marker("experiment claims") + "\n# again\n"
    with pytest.raises(OutputError, match="is a folder"):
        write_file(exp, "x", "experiment claims")


def test_on_interrupt_says_what_was_kept(capsys):
    with pytest.raises(Interrupted, match="kept"):
        with on_interrupt("the checkpoint is kept"):
            raise KeyboardInterrupt


def test_a_global_flag_after_the_subcommand_gets_one_line(capsys):
    assert run(["dynamics", "scenarios", "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "before the subcommand" in err and "Traceback" not in err


def _sigint_after(argv, ready, cwd, timeout=300):
    """Start ``mambadyn argv``, wait until ``ready(stderr so far)`` holds, send SIGINT; returns (exit code,
    stderr). Readiness is read off the command's own output, not a clock: on a loaded host the imports
    alone can take longer than any fixed delay."""
    import threading

    # a shell starts background jobs with SIGINT ignored, and children inherit that: give this one the
    # default, as a terminal's Ctrl-C would find it
    proc = subprocess.Popen([sys.executable, "-m", "mambadyn", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    t0 = time.time()
    while not ready("".join(err)) and proc.poll() is None and time.time() - t0 < timeout:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be interrupted: {''.join(err)[-2000:]}"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    return proc.returncode, "".join(err)


def test_ctrl_c_in_the_phase_diagram_exits_130_and_leaves_nothing(tmp_path):
    code, err = _sigint_after(["dynamics", "phase-diagram", "--out", "pd", "--systems", "200"],
                              lambda e: "phase diagram (D, k)" in e, tmp_path)
    assert code == 130 and "interrupted" in err, err
    assert not (tmp_path / "pd").exists() and list(tmp_path.iterdir()) == []


def test_ctrl_c_in_training_exits_130_and_names_the_checkpoint_to_resume(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    argv = ["train", "lm", "--out", "run", "--data", str(corpus), "--steps", "100000",
            "--set", "model.d_model=16", "--set", "model.n_layer=1", "--set", "data.seq_len=16",
            "--set", "optim.batch_size=2", "--set", "run.ckpt_every=5", "--set", "run.eval_every=0",
            "--set", "run.progress=false", "--set", "run.device=cpu"]
    code, err = _sigint_after(argv, lambda _: (tmp_path / "run" / "latest").exists(), tmp_path)
    assert code == 130, err
    assert "--resume" in err and "ckpt-" in err and "Traceback" not in err, err


def test_token_shares_reads_seeds_from_the_runs_and_refuses_one_run_counted_twice(tmp_path):
    """Two copies of one seed-0 run named free-s0 and free-s1 once gave a 'significant' rho over 'two seeds'."""
    from mambadyn.experiments.token_shares import TokenShareConfig, _runs

    for name, seed in (("free-s0", 0), ("free-s7", 3)):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
        (tmp_path / name / "config.json").write_text(json.dumps({"run": {"seed": seed}}))
    runs = _runs(TokenShareConfig(runs=str(tmp_path)))["free"]
    assert [(s, f.name) for s, f, _ in runs] == [(0, "free-s0"), (3, "free-s7")]  # the seed the run says
    (tmp_path / "free-s1").mkdir()
    for f in ("config.json", "model"):
        src = tmp_path / "free-s0" / f
        if src.is_dir():
            (tmp_path / "free-s1" / f).mkdir()
            (tmp_path / "free-s1" / f / "config.json").write_text("{}")
        else:
            (tmp_path / "free-s1" / f).write_text(src.read_text())
    with pytest.raises(ValueError, match="both seed 0"):
        _runs(TokenShareConfig(runs=str(tmp_path)))


def test_broken_claims_inputs_are_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "lm_wikitext").mkdir()
    bad = tmp_path / "lm_wikitext" / "results.json"
    bad.write_text('{"modes": {"positive": ')  # truncated
    assert run(["experiment", "claims", "--results", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    bad.write_text('{"variants": {}}')  # another command's keys
    assert run(["experiment", "claims", "--results", str(tmp_path), "--out", str(tmp_path / "c.md")]) == 2
    err = capsys.readouterr().err
    assert "lacks what the claims read" in err and not (tmp_path / "c.md").exists()
