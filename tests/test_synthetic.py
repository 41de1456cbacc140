"""Selective copying and MQAR: the answers are where the definition puts them, batches are deterministic
and sliced across ranks, bad settings are refused, and a model trains on them end to end."""

import json

import pytest
import torch

from mambadyn.cli import run
from mambadyn.data.synthetic import SyntheticSampler, generate, vocab_size
from mambadyn.train import SyntheticData


def test_selective_copy_targets_are_the_data_tokens_in_order():
    x, y = generate("selective_copy", 50, 40, 6, 9, torch.Generator().manual_seed(0))
    for xi, yi in zip(x, y):
        data = xi[:34][xi[:34] >= 2]
        assert len(data) == 6 and (xi[34:] == 1).all()
        assert torch.equal(yi[34:], data) and (yi[:34] == -100).all()
        assert xi.max() < vocab_size("selective_copy", 9)


def test_mqar_asks_every_key_once_and_the_target_is_its_value():
    x, y = generate("mqar", 50, 40, 5, 7, torch.Generator().manual_seed(1))
    for xi, yi in zip(x, y):
        pairs = dict(zip(xi[0:10:2].tolist(), xi[1:10:2].tolist()))
        assert len(pairs) == 5  # distinct keys
        asked = (yi != -100).nonzero().flatten()
        assert len(asked) == 5 and (asked >= 10).all()
        assert sorted(xi[asked].tolist()) == sorted(pairs)
        assert all(pairs[int(xi[p])] == int(yi[p]) for p in asked)
        assert xi.max() < vocab_size("mqar", 7)


def test_batches_depend_on_the_step_only_and_ranks_slice_one_draw():
    one = SyntheticSampler("mqar", 32, 4, 8, batch_size=4, seed=3)
    a, b = (SyntheticSampler("mqar", 32, 4, 8, batch_size=2, seed=3, rank=r, world=2) for r in (0, 1))
    assert torch.equal(one.batch(7)[0], one.batch(7)[0]) and not torch.equal(one.batch(7)[0], one.batch(8)[0])
    assert torch.equal(torch.cat([a.batch(7)[0], b.batch(7)[0]]), one.batch(7)[0])
    held = [x for x, _ in one.eval_batches(2)]
    assert torch.equal(held[0], next(iter(one.eval_batches(2)))[0])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="too short"):
        SyntheticData(task="selective_copy", seq_len=10, n_items=8)
    with pytest.raises(ValueError, match="distinct keys"):
        SyntheticData(task="mqar", seq_len=100, n_items=9, vocab=8)
    with pytest.raises(ValueError, match="must be one of"):
        SyntheticData(task="copy")


def test_train_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "synthetic", "--out", str(out), "--steps", "6", "--set", "data.seq_len=24",
                "--set", "data.n_items=3", "--set", "data.vocab=4", "--set", "model.d_model=16",
                "--set", "run.eval_every=3", "--set", "run.eval_batches=2", "--set", "run.progress=false"]) == 0
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_acc" in line]
    assert len(evals) == 2 and all(0 <= e["val_acc"] <= 1 and e["val_loss"] > 0 for e in evals)
    assert json.loads((out / "model" / "config.json").read_text())["vocab_size"] == 6
    assert run(["train", "synthetic", "--out", str(tmp_path / "x"), "--set", "data.task=nope"]) == 2
    assert "must be one of" in capsys.readouterr().err


def test_eigen_mode_experiment_on_a_synthetic_task(tmp_path):
    """The scenario experiment runs on selective copying / MQAR too, with paired, Holm-adjusted accuracy tables."""
    out = tmp_path / "exp"
    assert run(["experiment", "scenarios", "--kind", "synthetic", "--preset", "smoke", "--modes", "positive,negative",
                "--seeds", "0,1", "--set", "data.task=mqar", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["modes"]["negative"]["acc_per_seed"]) == {"0", "1"}
    report = (out / "report.md").read_text()
    assert "final accuracy on the asked positions" in report and "p (Holm)" in report
    assert run(["experiment", "scenarios", "--kind", "copy", "--out", str(out)]) == 2
