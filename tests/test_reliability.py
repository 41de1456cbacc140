"""No silent wrong results: each finding of the reliability review, with the input that used to pass."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mambadyn.cli import run
from mambadyn.dynamics import TokenSystem, simulate
from mambadyn.errors import MambadynError
from mambadyn.jsonio import dumps
from mambadyn.train import LMTrainConfig, apply_overrides


# --- dynamics -------------------------------------------------------------------------------------
def test_a_large_converging_token_is_not_a_blow_up():
    tr = simulate(TokenSystem.one_dim(-1.0, 1.0, 1.0), torch.tensor([[12.0]], dtype=torch.float64), t_end=10.0)
    assert not tr.blew_up.any() and tr.outcome() == ["converges"]
    assert abs(tr.x[-1, 0, 0, 0].item() - 0.2333) < 5e-4  # LSODA gives x(10) = 0.2333
    big = simulate(TokenSystem.one_dim(1.0, 1.0, 1.0), torch.tensor([[12.0]], dtype=torch.float64), t_end=1.0)
    assert big.blew_up.all() and 1.5e-4 < big.blowup_time.item() < 2.5e-4  # T* ~ 1/(3 mu s x0^3)


def test_bad_tolerances_are_refused_and_coarse_grids_still_classify():
    system = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    for kw in ({"rtol": 0.0}, {"atol": -1.0}, {"t_end": float("inf")}, {"max_steps": -1}):
        with pytest.raises(ValueError):
            simulate(system, torch.tensor([[0.5, 0.4]]), **{"t_end": 10.0, **kw})
    coarse = simulate(system, torch.tensor([[0.5, 0.4]], dtype=torch.float64), t_end=100.0, n_points=3)
    assert coarse.outcome() == ["converges"]


def test_overflowing_tokens_name_the_dtype():
    with pytest.raises(ValueError, match="pass float64"):
        simulate(TokenSystem.one_dim(1.0, 1.0, 1.0), torch.tensor([[1e40]], dtype=torch.float32), t_end=1.0)


# --- configs and the command line -------------------------------------------------------------------
@pytest.mark.parametrize("override,needle", [
    ("optim.steps=ten", "steps must be an integer"), ("optim.steps=10.7", "steps must be an integer"),
    ("optim.betas=[0.9]", "betas"), ("run.log_every=0", "log_every"), ("data.seq_len=0", "seq_len"),
    ("optim.lr=nan", "lr"), ("optim.grad_clip=-1", "grad_clip"), ("data.tokenizer=bpe", "needs a corpus"),
])
def test_bad_overrides_are_named(override, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides(LMTrainConfig(), [override])


def test_bad_config_files_are_named(tmp_path):
    from mambadyn.train import load_config

    for body, needle in (([1, 2], "JSON object"), ({"run": {"progress": "no"}}, "progress"),
                         ({"optim": 3}, "section 'optim'")):
        f = tmp_path / "c.json"
        f.write_text(json.dumps(body))
        with pytest.raises(ValueError, match=needle):
            load_config(LMTrainConfig, f)


def test_hf_configs_with_bad_values_are_refused(tmp_path):
    from mambadyn.nn import CheckpointError, MambaConfig, MambaLM

    MambaLM(MambaConfig(vocab_size=20, d_model=8, n_layer=1, d_state=2)).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value, needle in (("layer_norm_epsilon", -1e-5, "rms_eps"), ("residual_in_fp32", "yes", "residual_in_fp32")):
        (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointError, match=needle):
            MambaLM.from_pretrained(tmp_path)


def test_shards_outside_the_folder_and_torn_weights_are_refused(tmp_path):
    from mambadyn.nn import CheckpointError, MambaConfig, MambaLM

    MambaLM(MambaConfig(vocab_size=20, d_model=8, n_layer=1, d_state=2)).save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        MambaLM.from_pretrained(tmp_path / "m")
    weights.unlink()
    (tmp_path / "m" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../evil.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside its folder"):
        MambaLM.from_pretrained(tmp_path / "m")


def test_cli_prints_one_line_for_user_errors(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("")
    cases = [
        (["train", "lm", "--set", "optim.steps=ten"], "steps"),
        (["train", "lm", "--out", str(blocked / "run")], "not writable"),
        (["dynamics", "phase-diagram", "--dims", "4-2", "--out", str(tmp_path)], "empty range"),
        (["experiment", "scenarios", "--seeds", "", "--out", str(tmp_path)], "seed"),
        (["experiment", "reorder", "--jobs", "0", "--out", str(tmp_path)], "jobs"),
        (["experiment", "reorder", "--evals-per-epoch", "0", "--out", str(tmp_path)], "evals"),
        (["dynamics", "scenarios", "--t-end", "inf", "--out", str(tmp_path)], "t-end"),
    ]
    for argv, needle in cases:
        code = run([str(tmp_path / "out") if a == str(tmp_path) else a for a in argv])
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert needle in err and "Traceback" not in err, (argv, err)
        assert not (tmp_path / "out").exists(), argv  # a refused command leaves no folder behind


def test_ranks_checking_one_run_folder_at_once_do_not_fail_each_other(tmp_path):
    # under torchrun every rank checks the run folder as it starts; a write probe they shared let one rank's
    # cleanup fail another's check ("not writable (No such file or directory)"), seen in a two-rank test
    go = tmp_path / "go"
    code = ("import sys, time; from pathlib import Path; from mambadyn.train.loop import check_out_dir\n"
            "while not Path(sys.argv[2]).exists(): time.sleep(0.001)\n"
            "for _ in range(2000): check_out_dir(Path(sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run"), str(go)], stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    time.sleep(3)  # all three imported and waiting: they then start together
    go.write_text("")
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert not list((tmp_path / "run").iterdir()), "a probe was left behind"


def test_python_dash_m_mambadyn_runs():
    r = subprocess.run([sys.executable, "-m", "mambadyn", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "scan backends" in r.stdout


def test_json_outputs_are_strict():
    text = dumps({"t": float("inf"), "x": [1.0, float("nan")], "y": torch.tensor(2.5)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "t": None, "x": [1.0, None], "y": 2.5}


# --- data -----------------------------------------------------------------------------------------
def test_offline_data_error_says_what_to_put_where(tmp_path, monkeypatch):
    from mambadyn.data.download import DataUnavailableError, fetch

    monkeypatch.setenv("MAMBADYN_DATA", str(tmp_path))
    with pytest.raises(DataUnavailableError, match=r"input.txt .*sha256:86c4e6aa.* at .*tiny-shakespeare"):
        fetch("tiny-shakespeare", progress=False)
    (tmp_path / "tiny-shakespeare").mkdir()
    (tmp_path / "tiny-shakespeare" / "input.txt").write_text("not the corpus")
    with pytest.raises(ValueError, match="checksum"):
        fetch("tiny-shakespeare", progress=False)


# --- training runs ----------------------------------------------------------------------------------
TINY = ["model.d_model=16", "model.n_layer=1", "model.d_state=4", "data.seq_len=16", "optim.batch_size=2",
        "optim.warmup_steps=1", "run.eval_batches=1", "run.progress=false", "run.device=cpu"]


def _lm_cfg(tmp_path, folder, extra=()):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    return apply_overrides(LMTrainConfig(), TINY + [f"data.path={corpus}", f"run.out_dir={folder}", *extra])


def test_runs_do_not_mix_in_one_folder(tmp_path):
    from mambadyn.train import LMTask, train

    folder = tmp_path / "run"
    train(LMTask, _lm_cfg(tmp_path, folder, ["optim.steps=4", "run.ckpt_every=2"]))
    assert (folder / "ckpt-4").is_dir() and not (folder / "ckpt-2").exists()
    with pytest.raises(ValueError, match="already holds a run"):
        train(LMTask, _lm_cfg(tmp_path, folder, ["optim.steps=2"]))
    with pytest.raises(ValueError, match="optim.lr"):
        train(LMTask, _lm_cfg(tmp_path, folder, ["optim.steps=4", "optim.lr=0.5"]), resume=True)


def test_a_locked_run_folder_refuses_a_second_trainer(tmp_path):
    from mambadyn.train import LMTask, train
    from mambadyn.train.loop import run_lock

    folder = tmp_path / "run"
    with run_lock(folder):
        with pytest.raises(MambadynError, match="in use"):
            train(LMTask, _lm_cfg(tmp_path, folder, ["optim.steps=2"]))


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    from mambadyn.train.loop import _truncate_log

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    _truncate_log(log, 2)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]


def test_experiments_refuse_to_reuse_runs_made_with_other_settings(tmp_path):
    from mambadyn.experiments.grid import run_grid

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    base = TINY + [f"data.path={corpus}", "optim.steps=2", "run.eval_every=0", "run.ckpt_every=0"]
    runs = run_grid("lm", {"free": []}, [0], base, tmp_path / "exp")
    assert runs[0].finished
    run_grid("lm", {"free": []}, [0], base, tmp_path / "exp")  # same settings: reused
    with pytest.raises(ValueError, match="other settings"):
        run_grid("lm", {"free": []}, [0], base + ["optim.lr=0.5"], tmp_path / "exp")


def test_a_worker_dies_with_its_parent(tmp_path):
    from dataclasses import asdict

    cfg = asdict(_lm_cfg(tmp_path, tmp_path / "run", ["optim.steps=1000000", "run.eval_every=0", "run.ckpt_every=0"]))
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import json, subprocess, sys, time\n"
        "from mambadyn.experiments.grid import worker_command\n"
        f"c = subprocess.Popen(worker_command('lm', json.loads({json.dumps(json.dumps(cfg))})))\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(300)\n")])
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)  # the child is training
    assert (tmp_path / "run" / "metrics.jsonl").exists(), "the worker never started training"
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(200):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # dead, waiting to be reaped
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the worker outlived its parent")


def _fake_fashion(root, n_train=32, n_test=8):
    root.mkdir()
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, arr.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
            with gzip.open(root / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + arr.numpy().tobytes())


def _free_port() -> str:
    # a port nothing listens on now: a fixed one can be taken on a shared host, and then torchrun's
    # rendezvous never starts the workers
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_killing_the_torchrun_group_stops_its_workers(tmp_path):
    """torchrun puts each worker in a session of its own; SIGKILL to the launcher's group must still end
    them (else they train on and write into the folder a resume then finds locked)."""
    from mambadyn.train.loop import run_lock

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 400)
    out = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port(),
         "-m", "mambadyn.cli", "train", "lm", "--out", str(out), "--data", str(corpus), "--steps", "1000000",
         "--set", "model.d_model=16", "--set", "model.n_layer=1", "--set", "model.d_state=4",
         "--set", "data.seq_len=16", "--set", "optim.batch_size=2", "--set", "run.eval_every=0",
         "--set", "run.ckpt_every=0", "--set", "run.log_every=1", "--set", "run.progress=false",
         "--set", "run.device=cpu"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "torchrun.log").open("w"))
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.1)
    if not (out / "metrics.jsonl").exists():
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        pytest.fail("the workers never started training; torchrun said:\n"
                    + (tmp_path / "torchrun.log").read_text()[-3000:])
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    for _ in range(100):
        try:
            with run_lock(out):  # free once rank 0 is gone
                return
        except MambadynError:
            time.sleep(0.1)
    pytest.fail("a torchrun worker outlived its launcher and still holds the run folder")


def test_two_gloo_ranks_train_like_one_process_on_the_union_of_their_batches(tmp_path):
    """Under torchrun each rank must draw its own share: two ranks of batch 4 take the same steps as one
    process of batch 8 (EpochSampler's strided shares), up to the order of the gradient sums."""
    from safetensors.torch import load_file

    data = tmp_path / "fashion"
    _fake_fashion(data)
    common = ["--data", str(data), "--steps", "3", "--set", "model.d_model=16", "--set", "model.n_layer=1",
              "--set", "model.d_state=4", "--set", "model.patch_size=7", "--set", "optim.warmup_steps=1",
              "--set", "run.eval_every=0", "--set", "run.ckpt_every=0", "--set", "run.progress=false",
              "--set", "run.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          _free_port(), "-m", "mambadyn.cli", "train", "image", "--out", str(tmp_path / "two"),
                          "--set", "optim.batch_size=4", *common], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mambadyn.cli", "train", "image", "--out", str(tmp_path / "one"),
                          "--set", "optim.batch_size=8", *common], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # every rank evaluates its share of the same images: the two runs report the same numbers (once only
    # rank 0 evaluated, with its own batch, and 2 x 2 and 1 x 4 runs disagreed in the third decimal)
    ev = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1]) for r in ("two", "one")]
    assert ev[0]["event"] == ev[1]["event"] == "eval"
    assert abs(ev[0]["test_loss"] - ev[1]["test_loss"]) < 1e-4 and ev[0]["test_acc"] == ev[1]["test_acc"]
    from mambadyn.data import EpochSampler, WindowSampler

    toks = torch.arange(1000)
    shares = [list(WindowSampler(toks, 8, 2, rank=r, world=2).eval_batches(3)) for r in (0, 1)]
    whole = list(WindowSampler(toks, 8, 4).eval_batches(3))
    for (x0, _), (x1, _), (x, _) in zip(*shares, whole):  # the LM's evaluation windows: the world's, shared out
        assert sorted(map(tuple, torch.cat([x0, x1]).tolist())) == sorted(map(tuple, x.tolist()))

    r0, r1 = EpochSampler(32, 4, rank=0, world=2), EpochSampler(32, 4, rank=1, world=2)
    assert not set(r0.indices(0).tolist()) & set(r1.indices(0).tolist())
    toks = torch.arange(1000)
    a, b = WindowSampler(toks, 8, 2, rank=0, world=2).batch(5)[0], WindowSampler(toks, 8, 2, rank=1, world=2).batch(5)[0]
    assert not torch.equal(a, b)
    assert torch.equal(torch.cat([a, b]), WindowSampler(toks, 8, 4).batch(5)[0])  # LM ranks slice one global draw


def test_resume_refuses_changed_conditions_and_does_not_redo_a_finished_run(tmp_path):
    """34.8: edited data, another process count and NaN weights are refused with the reason; a finished run
    resumed logs nothing twice."""
    from safetensors.torch import load_file, save_file

    from mambadyn.train import LMTask, train

    folder = tmp_path / "run"
    cfg = _lm_cfg(tmp_path, folder, ["optim.steps=4", "run.ckpt_every=2", "run.eval_every=2"])
    train(LMTask, cfg)
    lines = (folder / "metrics.jsonl").read_text()
    assert train(LMTask, cfg, resume=True)["val_loss"] > 0
    assert (folder / "metrics.jsonl").read_text() == lines  # no second final evaluation
    run = json.loads((folder / "run.json").read_text())
    assert run["world_size"] == 1 and "data.path" in run["data_files"]
    (folder / "run.json").write_text(json.dumps({**run, "world_size": 2, "global_batch": 4}))
    with pytest.raises(MambadynError, match="2 process"):
        train(LMTask, cfg, resume=True)
    (folder / "run.json").write_text(json.dumps(run))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus.read_text() + "zebra quartz!")  # edited in place (_lm_cfg writes it: not called here)
    with pytest.raises(MambadynError, match="has changed since the run started"):
        train(LMTask, cfg, resume=True)
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 50)
    weights = folder / "ckpt-4" / "model.safetensors"
    sd = load_file(str(weights))
    k = next(iter(sd))
    sd[k] = torch.full_like(sd[k], float("nan"))
    save_file(sd, str(weights))
    (folder / "latest").write_text("ckpt-4")
    import shutil

    shutil.rmtree(folder / "model")  # not finished: it must load the checkpoint
    with pytest.raises(MambadynError, match="non-finite weights"):
        train(LMTask, cfg, resume=True)


def test_a_tokenizer_that_is_not_one_is_named(tmp_path):
    from mambadyn.data import load_text

    (tmp_path / "t.txt").write_text("hello world " * 20)
    (tmp_path / "tok.json").write_text("not a tokenizer")
    with pytest.raises(ValueError, match="is not a tokenizers tokenizer.json"):
        load_text(tmp_path / "t.txt", tokenizer=str(tmp_path / "tok.json"))


def test_a_failed_experiment_run_reports_its_last_line_and_its_log(tmp_path):
    from mambadyn.experiments.grid import run_grid

    base = TINY + [f"data.path={tmp_path / 'missing.txt'}", "optim.steps=2"]
    with pytest.raises(MambadynError, match=r"failed \(exit \d+\): .*missing.txt.*the whole log is ") as e:
        run_grid("lm", {"free": []}, [0], base, tmp_path / "exp")
    assert "Traceback" not in str(e.value).split("; the whole log")[0]
