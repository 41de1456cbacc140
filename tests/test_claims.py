"""What the paper-claims experiments rest on: validation and test splits kept apart, WikiText in its Hub
layout read offline, the causal classifier with the paper's reordering mode, selection on validation,
and the token-share statistics of claim (c)."""

import contextlib
import json

import pytest
import torch
from typer.testing import CliRunner

from mambadyn.cli import app
from mambadyn.data import load_text
from mambadyn.data.synthetic import SyntheticSampler
from mambadyn.experiments.grid import Run
from mambadyn.experiments.token_shares import share_statistics
from mambadyn.nn import MambaClassifier
from mambadyn.nn.config import ClassifierConfig
from mambadyn.train.config import ImageTrainConfig, LMData, apply_overrides

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def _corpus(tmp_path):
    paths = {}
    for name, text in (("train", TEXT), ("val", "a lazy dog sleeps. " * 20), ("test", "zebras jump! " * 20)):
        paths[name] = tmp_path / f"{name}.txt"
        paths[name].write_text(text)
    return paths


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_separate_validation_and_test_files(tmp_path, tokenizer):
    p = _corpus(tmp_path)
    s = load_text(p["train"], tokenizer, vocab_size=300, val_path=p["val"], test_path=p["test"])
    assert s.train.numel() > s.val.numel() > 0 and s.test is not None and s.test.numel() > 0
    decode = s.tokenizer.decode if tokenizer == "char" else (lambda ids: s.tokenizer.decode(ids.tolist()))
    assert decode(s.test).startswith("zebras")  # 'z' and '!' never occur in training, yet encode
    assert decode(s.val).startswith("a lazy dog")
    no_test = load_text(p["train"], tokenizer, vocab_size=300)
    assert no_test.test is None and no_test.train.numel() + no_test.val.numel() == s.train.numel()


def test_lm_data_refuses_inconsistent_paths(tmp_path):
    with pytest.raises(ValueError, match="go with a text file"):
        LMData(val_path=str(tmp_path / "v.txt"))
    with pytest.raises(ValueError, match="local WikiText copy"):
        LMData(path=str(tmp_path))


def _wikitext_folder(root, splits=("train", "validation", "test")):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    folder = root / "wikitext-2-raw-v1"
    folder.mkdir(parents=True)
    lines = {"train": [" = Valkyria = \n", TEXT + "\n"] * 5, "validation": [" = Tower = \n", "a lazy dog .\n"] * 5,
             "test": [" = Robert = \n", "the brown fox .\n"] * 5}
    for split in splits:
        pq.write_table(pa.table({"text": lines[split]}), folder / f"{split}-00000-of-00001.parquet")
    return root


def test_wikitext_reads_a_local_copy_in_the_hubs_layout(tmp_path):
    pytest.importorskip("datasets")
    from mambadyn.data import load_wikitext

    s = load_wikitext("wikitext-2", vocab_size=300, folder=_wikitext_folder(tmp_path))
    assert s.test is not None
    assert s.tokenizer.decode(s.val.tolist()).startswith(" = Tower =")
    assert s.tokenizer.decode(s.test.tolist()).startswith(" = Robert =")
    with pytest.raises(FileNotFoundError, match="test-\\*.parquet"):
        load_wikitext("wikitext-2", folder=_wikitext_folder(tmp_path / "partial", splits=("train", "validation")))


def test_lm_training_reports_validation_and_test(tmp_path):
    p = _corpus(tmp_path)
    r = CliRunner().invoke(app, ["train", "lm", "--out", str(tmp_path / "run"), "--steps", "2",
                                 "--set", f"data.path={p['train']}", "--set", f"data.val_path={p['val']}",
                                 "--set", f"data.test_path={p['test']}", "--set", "data.seq_len=16",
                                 "--set", "model.d_model=16", "--set", "model.n_layer=1", "--set", "optim.batch_size=2",
                                 "--set", "run.eval_batches=1", "--set", "run.progress=false"])
    assert r.exit_code == 0, r.output
    final = Run("x", 0, tmp_path / "run").evals()[-1]
    assert {"val_loss", "test_loss", "test_ppl", "eval_s"} <= set(final)


def test_synthetic_validation_and_test_streams_differ_and_repeat():
    s = SyntheticSampler("mqar", 32, 4, 8, batch_size=4, seed=0)
    val, test = next(s.eval_batches(1))[0], next(s.eval_batches(1, split="test"))[0]
    assert not torch.equal(val, test)
    assert torch.equal(test, next(s.eval_batches(1, split="test"))[0])
    assert not any(torch.equal(s.batch(k)[0], val) or torch.equal(s.batch(k)[0], test) for k in range(3))
    with pytest.raises(ValueError, match="split"):
        next(s.eval_batches(1, split="train"))


def test_image_validation_is_held_out_from_training(shared_data):
    from mambadyn.train.tasks import ImageTask

    cfg = apply_overrides(ImageTrainConfig(), [f"data.path={shared_data / 'fashion-mnist'}", "data.val_size=500",
                                               "data.test_limit=100", "optim.batch_size=8"])
    task = ImageTask(cfg)
    assert len(task.train_set) == 59500 and len(task.val_set) == 500
    assert task.sampler.n == 59500  # no training batch can draw a validation image
    model = MambaClassifier(ClassifierConfig(d_model=8, n_layer=1, d_state=4, patch_size=7))
    m = task.evaluate(model, torch.device("cpu"), contextlib.nullcontext)
    assert {"val_acc", "val_loss", "test_acc", "test_loss"} <= set(m)


def test_causal_classifier_reads_the_last_token_and_order_matters():
    torch.manual_seed(0)
    cfg = ClassifierConfig(d_model=16, n_layer=1, d_state=4, patch_size=7, bidirectional=False, pool="last")
    model = MambaClassifier(cfg).eval()
    x = torch.randn(2, 1, 28, 28)
    base = model(x)
    late = x.clone()
    late[..., 21:, 21:] += 1.0  # the last patch: it changes the output
    assert not torch.allclose(model(late), base)
    h = model.norm_f(model.layers[0](model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed))
    torch.testing.assert_close(base, model.head(h[:, -1]))
    with pytest.raises(ValueError, match="pool"):
        ClassifierConfig(pool="max")


@pytest.mark.parametrize("hard", [False, True])
def test_paper_mode_reordering_trains_the_score(hard):
    """restore=False (the official code): y stays in sorted order; the importance score still gets a gradient."""
    torch.manual_seed(0)
    cfg = ClassifierConfig(d_model=16, n_layer=1, d_state=4, patch_size=7, bidirectional=False, pool="last",
                           reorder_layers=[0], reorder_hard=hard, reorder_restore=False)
    model = MambaClassifier(cfg)
    paper = model(torch.randn(3, 1, 28, 28))
    paper.sum().backward()
    K = model.layers[0].mixer.reorder.K.weight
    assert K.grad is not None and K.grad.abs().sum() > 0
    model.layers[0].mixer.reorder.restore_order = True
    assert not torch.allclose(model(torch.randn(3, 1, 28, 28)), paper)


def test_selection_picks_the_best_validation_evaluation(tmp_path):
    run = Run("v", 0, tmp_path)
    rows = [{"step": 10, "loss": 2.0}, {"step": 10, "event": "eval", "val_acc": 0.5, "test_acc": 0.4},
            {"step": 20, "event": "eval", "val_acc": 0.7, "test_acc": 0.6},
            {"step": 30, "event": "eval", "val_acc": 0.7, "test_acc": 0.9},
            {"step": 30, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert run.selected("val_acc", larger_is_better=True)["test_acc"] == 0.6  # a tie goes to the earliest
    assert run.final_train_loss(last=2) == 1.5
    with pytest.raises(ValueError, match="no evaluation"):
        run.selected("val_loss")


def test_share_statistics():
    L, W = 12, 40
    equal = share_statistics(torch.full((W, L), 1 / L), torch.randn(W, L))
    assert equal["gini"] == pytest.approx(0.0, abs=1e-12)
    g = torch.randn(W, L)
    shares = torch.softmax(2 * g, dim=1)  # tokens that grow faster carry more of the gradient
    linked = share_statistics(shares, g)
    assert linked["gini"] > 0.2 and linked["gini_between_tokens"] > 0.2 and linked["rho_growth_share"] > 0.95
    by_position = torch.softmax(torch.arange(L, dtype=torch.float64), 0).expand(W, L)  # position alone
    pos = share_statistics(by_position, g)
    assert pos["gini"] > 0.5 and pos["gini_between_tokens"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="windows, L"):
        share_statistics(shares, g[:, :3])


def test_claim_experiments_smoke(tmp_path, shared_data):
    """The smoke presets of the paper-claims experiments, end to end: the paper's LM recipe with a test split,
    the token shares on its runs, and the causal classifier with every reordering variant."""
    p = _corpus(tmp_path)
    sc = tmp_path / "lm"
    r = CliRunner().invoke(app, ["experiment", "scenarios", "--preset", "paper-smoke", "--modes", "free,negative",
                                 "--seeds", "0,1", "--out", str(sc), "--set", f"data.path={p['train']}",
                                 "--set", f"data.val_path={p['val']}", "--set", f"data.test_path={p['test']}"])
    assert r.exit_code == 0, r.output
    res = json.loads((sc / "results.json").read_text())
    cfg = json.loads((sc / "runs" / "free-s0" / "config.json").read_text())
    assert cfg["model"]["dropout"] == 0.25 and cfg["optim"]["weight_decay"] == 0.25 and cfg["data"]["tokenizer"] == "bpe"
    assert {"test_loss", "train_loss", "selected_step"} <= set(res["modes"]["free"])
    assert "test loss at the selected evaluation" in (sc / "report.md").read_text()

    ts = tmp_path / "shares"
    r = CliRunner().invoke(app, ["experiment", "token-shares", "--runs", str(sc / "runs"), "--modes", "free",
                                 "--windows", "4", "--out", str(ts)])
    assert r.exit_code == 0, r.output
    shares = json.loads((ts / "results.json").read_text())["modes"]["free"]
    assert shares["seeds"] == [0, 1] and 0 < shares["gini"]["mean"] < 1
    assert (ts / "shares.png").stat().st_size > 0

    ro = tmp_path / "reorder"
    r = CliRunner().invoke(app, ["experiment", "reorder", "--preset", "causal-smoke", "--variants",
                                 "none,soft,hard,soft-paper,hard-paper,random", "--seeds", "0", "--out", str(ro)])
    assert r.exit_code == 0, r.output
    res = json.loads((ro / "results.json").read_text())
    assert res["causal"] and res["selection"] == "best validation accuracy"
    assert all("val_acc" in v and "train_loss" in v for v in res["variants"].values())
    run_cfg = json.loads((ro / "runs" / "hard-paper-s0" / "config.json").read_text())
    assert run_cfg["model"]["reorder_restore"] is False and run_cfg["model"]["pool"] == "last"
    rand_cfg = json.loads((ro / "runs" / "random-s0" / "config.json").read_text())
    assert rand_cfg["model"]["random_order"] is True and rand_cfg["model"]["reorder_layers"] == []


def _write(folder, name, res):
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(res))


def test_claim_verdicts_follow_the_rule(tmp_path):
    from mambadyn.experiments.claims import write_claims

    seeds = ["0", "1", "2", "3", "4"]
    noise = [0.001, -0.002, 0.0015, -0.0005, 0.0]

    def arm(base, shift=0):  # the seeds' noise, rotated: each arm differs from the others seed by seed
        return {s: base + noise[(i + shift) % len(noise)] for i, s in enumerate(seeds)}

    modes = {"positive": arm(5.0), "mixed": arm(5.1, 1), "negative": arm(5.3, 2), "free": arm(5.2, 3)}
    _write(tmp_path, "lm_wikitext", {"modes": {m: {"test_loss_per_seed": v} for m, v in modes.items()}})
    # on a synthetic task the convergent mode wins clearly: against claim (b)
    accs = {"positive": arm(0.4), "free": arm(0.4, 1), "mixed": arm(0.4, 2), "negative": arm(0.9, 3)}
    _write(tmp_path, "mqar", {"modes": {m: {"test_acc_per_seed": v} for m, v in accs.items()}})
    curves = {s: [[0.25, 0.5], [1.0, 0.8]] for s in seeds}
    _write(tmp_path, "fmnist_patches196", {"seq_len": 196, "variants": {
        "none": {"per_seed": arm(0.88), "curves": curves},
        "soft": {"per_seed": {s: v + 0.003 * (-1) ** i for i, (s, v) in enumerate(arm(0.88, 2).items())},
                 "curves": curves}}})
    (tmp_path / "notes.md").write_text("## preamble\nHow these were run.\n\n## a\nA note on (a).\n")
    out = tmp_path / "claims.md"
    decided = write_claims(tmp_path, out)
    assert decided["a"]["verdict"] == "reproduced"  # positive beats all three, p tiny
    assert decided["b"]["verdict"] == "reproduced"  # LM: negative worse than free, positive and mixed
    assert decided["b"]["comparisons"][-1]["label"] == "LM test loss: negative vs mixed"
    assert decided["b-syn"]["verdict"] == "not reproduced"  # MQAR goes against it, beyond the paper's claim
    assert decided["d"]["verdict"] == "inconclusive"  # no difference
    assert "c" not in decided  # no token_shares folder: the claim is not decided
    assert "e" not in decided
    text = out.read_text()
    assert "| (c) " in text and "| (e) " in text and text.count("**not run**") == 2
    assert "How these were run." in text and "A note on (a)." in text
    assert "[mqar](mqar/report.md)" in text and "against the claim" in text
    (tmp_path / "mqar" / "report.md").write_text("# MQAR\n")
    write_claims(tmp_path, out)
    write_claims(tmp_path, out)  # the verdict section is replaced, not appended again
    report = (tmp_path / "mqar" / "report.md").read_text()
    assert report.startswith("# MQAR") and report.count("## Verdicts") == 1 and "**not reproduced**" in report
    with pytest.raises(FileNotFoundError, match="none of the experiments"):
        write_claims(tmp_path / "fmnist_patches196", out)
    # the follow-up's random reordering, in the same experiment, is claim (e), on accuracy alone
    res = json.loads((tmp_path / "fmnist_patches196" / "results.json").read_text())
    res["variants"]["random"] = {"per_seed": arm(0.95, 4), "curves": curves}
    (tmp_path / "fmnist_patches196" / "results.json").write_text(json.dumps(res))
    decided = write_claims(tmp_path, out)
    assert decided["e"]["verdict"] == "reproduced"
    assert [c["label"] for c in decided["e"]["comparisons"]] == ["196 tokens, test accuracy: random vs none"]
    assert all("random" not in c["label"] for c in decided["d"]["comparisons"])
    # a reorder run made apart (its own none arm, other steps) is read too, paired within itself
    del res["variants"]["random"]
    (tmp_path / "fmnist_patches196" / "results.json").write_text(json.dumps(res))
    _write(tmp_path, "fmnist_patches196_random", {"seq_len": 196, "variants": {
        "none": {"per_seed": arm(0.86), "curves": curves}, "random": {"per_seed": arm(0.57, 2), "curves": curves}}})
    decided = write_claims(tmp_path, out)
    assert decided["e"]["verdict"] == "not reproduced"
    assert [c["experiment"] for c in decided["e"]["comparisons"]] == ["fmnist_patches196_random"]
    assert [c["experiment"] for c in decided["d"]["comparisons"]] == ["fmnist_patches196"] * 2
    _write(tmp_path, "fmnist_notes", {"seeds": [0, 1]})  # someone's folder that the fmnist_* glob reaches
    with pytest.raises(ValueError, match="fmnist_notes/results.json is not the output of `mambadyn experiment"):
        write_claims(tmp_path, out)


def test_offline_wikitext_makes_no_network_call(monkeypatch, tmp_path):
    """MAMBADYN_OFFLINE=1 puts datasets and the Hub client in their offline modes before they are asked."""
    pytest.importorskip("datasets")
    import socket

    from mambadyn.data.text import load_wikitext

    monkeypatch.setenv("MAMBADYN_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    calls = []

    def refuse(*a, **kw):
        calls.append(a)
        raise OSError("network call in an offline test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(FileNotFoundError, match="could not load wikitext-2"):
        load_wikitext("wikitext-2")
    assert calls == []
