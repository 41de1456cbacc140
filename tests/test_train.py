"""Training: configs, data loaders, and exact resume after the process is killed."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mambadyn.data import CharTokenizer, EpochSampler, WindowSampler, load_text, read_idx
from mambadyn.train import LMTrainConfig, apply_overrides, load_config

TINY = ["model.d_model=16", "model.n_layer=2", "model.d_state=4", "data.seq_len=32", "optim.batch_size=4",
        "optim.warmup_steps=3", "run.eval_batches=1", "run.log_every=1", "model.dropout=0.1"]


def _corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    return p


def _cmd(out, corpus, steps, extra=()):
    return [sys.executable, "-m", "mambadyn.cli", "train", "lm", "--data", str(corpus), "--out", str(out),
            "--steps", str(steps), *sum((["--set", s] for s in TINY + list(extra)), [])]


def test_killed_run_resumes_to_identical_weights(tmp_path):
    corpus = _corpus(tmp_path)
    steps, every = 40, ["run.ckpt_every=3", "run.eval_every=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(tmp_path / "a", corpus, steps, every), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cmd(tmp_path / "b", corpus, steps, every), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "b" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and int(latest.read_text().split("-")[1]) >= 9):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest.read_text().split("-")[1])
    assert 9 <= killed_at < steps, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "model").exists()
    subprocess.run(_cmd(tmp_path / "b", corpus, steps, every) + ["--resume"], check=True, env=env,
                   capture_output=True)

    a = load_file(str(tmp_path / "a" / f"ckpt-{steps}" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / f"ckpt-{steps}" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps_logged = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
                    if "loss" in json.loads(x)]
    assert steps_logged == list(range(1, steps + 1))  # no step lost or logged twice


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": {"d_model": 64}, "optim": {"lr": 0.01}}))
    cfg = load_config(LMTrainConfig, f, ["run.seed=3", "model.eigen_mode=positive"])
    assert (cfg.model.d_model, cfg.model.time_step_rank, cfg.optim.lr, cfg.run.seed) == (64, 4, 0.01, 3)
    assert cfg.model.eigen_mode == "positive"
    with pytest.raises(ValueError, match="unknown field 'widht'"):
        apply_overrides(cfg, ["model.widht=3"])
    with pytest.raises(ValueError, match="eigen_mode"):
        apply_overrides(cfg, ["model.eigen_mode=sideways"])
    with pytest.raises(FileNotFoundError):
        load_config(LMTrainConfig, tmp_path / "missing.json")


def test_text_loaders_and_samplers(tmp_path):
    corpus = _corpus(tmp_path)
    s = load_text(corpus)
    assert isinstance(s.tokenizer, CharTokenizer) and s.tokenizer.decode(s.train[:9]) == "the quick"
    assert abs(s.train.numel() / (s.train.numel() + s.val.numel()) - 0.9) < 1e-3
    bpe = load_text(corpus, tokenizer="bpe", vocab_size=300)
    assert bpe.vocab_size <= 300 and bpe.train.numel() < s.train.numel()
    w = WindowSampler(s.train, 16, 3, seed=1)
    x, y = w.batch(5)
    assert torch.equal(x, w.batch(5)[0]) and torch.equal(x[:, 1:], y[:, :-1])
    e = EpochSampler(100, 10, seed=0)
    assert sorted(torch.cat([e.indices(k) for k in range(10)]).tolist()) == list(range(100))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text(tmp_path / "nope.txt")


def test_idx_reader_checks_the_file(tmp_path):
    arr = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4)
    good = tmp_path / "x-idx3-ubyte.gz"
    header = bytes([0, 0, 0x08, 3]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    with gzip.open(good, "wb") as f:
        f.write(header + arr.numpy().tobytes())
    assert torch.equal(read_idx(good), arr)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(header + arr.numpy().tobytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(bad)
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")


def test_fashion_mnist_loads_from_the_data_cache(shared_data):
    from mambadyn.data import load_fashion_mnist

    train, test = load_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and test.labels.shape == (10000,)
    assert 0 <= train.images.min() and train.images.max() <= 1 and set(test.labels.unique().tolist()) == set(range(10))
