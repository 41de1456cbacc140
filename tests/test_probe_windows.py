"""probe --windows N --window-len L: every per-layer statistic as a mean with a 95% interval over disjoint
windows, checked against the single-window probes it summarises."""

import json

import pytest
import torch

from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import ProbeConfig, probe, probe_windows
from mambadyn.stats import summarize


def _model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=3, d_state=3))


def test_window_summaries_are_the_mean_and_interval_of_the_single_window_probes():
    m = _model()
    ids = torch.randint(0, 17, (100,), generator=torch.Generator().manual_seed(1))
    cfg = ProbeConfig(progress=False, ode_positions=4)
    r = probe_windows(m, ids, cfg, windows=3, window_len=30)
    singles = [probe(m, ids[w * 30:(w + 1) * 30], ProbeConfig(progress=False, ode_positions=4, max_tokens=30))
               for w in range(3)]
    w = r.windows
    assert w["n"] == 3 and w["len"] == 30 and r.input["tokens"] == 30
    want = summarize([s.tokens.loss for s in singles])
    assert w["loss"]["mean"] == pytest.approx(want.mean) and w["loss"]["ci95_low"] == pytest.approx(want.ci95_low)
    gini = summarize([s.to_dict()["tokens"]["grad_share_gini"][2] for s in singles])
    assert w["grad_share_gini"][2]["ci95_high"] == pytest.approx(gini.ci95_high)
    assert sum(w["layers"][0]["scenarios"].values()) == 3
    assert set(w["ode_agreement"]) == {str(o.layer) for o in singles[0].ode}


def test_the_cli_writes_the_windows_section_and_refuses_too_few_tokens(tmp_path, capsys):
    from mambadyn.cli import run

    _model().save_pretrained(tmp_path / "ck")
    (tmp_path / "ids.txt").write_text(" ".join(str(i % 17) for i in range(64)))
    args = ["probe", str(tmp_path / "ck"), "--ids", str(tmp_path / "ids.txt"), "--ode-positions", "0"]
    assert run(args + ["--windows", "4", "--window-len", "16", "--out", str(tmp_path / "out")]) == 0
    d = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert d["windows"]["n"] == 4 and d["input"]["windows"] == {"n": 4, "len": 16}
    assert "## Over windows" in (tmp_path / "out" / "report.md").read_text()
    capsys.readouterr()
    assert run(args + ["--windows", "5", "--window-len", "16", "--out", str(tmp_path / "out2")]) == 2
    assert "5 windows of 16 need 80" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_windows_work_for_a_transformers_family():
    pytest.importorskip("transformers")
    from tests.support.families import tiny_model

    r = probe_windows(tiny_model("bamba"), torch.arange(60) % 40, ProbeConfig(progress=False), windows=3,
                      window_len=20)
    assert r.windows["n"] == 3 and r.windows["layers"][0]["delta_median"]["n"] == 3


def test_a_fractions_interval_is_clipped_to_0_1_in_the_report():
    """Three windows and a mean near 1 give a Student-t interval past 1 (a committed report once read
    0.467 [-0.784, 1.72]); an agreement or a share cannot leave [0, 1]."""
    from mambadyn.probe.report import _ci

    wide = {"n": 3, "mean": 0.467, "ci95_low": -0.784, "ci95_high": 1.72}
    assert _ci(wide, fraction=True) == "0.467 [0, 1]"
    assert _ci(wide) == "0.467 [-0.784, 1.72]"  # a loss or a growth rate keeps its interval


def _close(a, b, path="") -> None:
    """Every number of two probe.json dicts equal within float32 rounding (a batched pass sums in another order)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), path
    else:
        assert a == b, path


def _lm(model_type: str):
    """(model, vocabulary size): mambadyn's tiny LM, or a transformers family's tiny random model."""
    if model_type == "mambadyn":
        return _model(), 17
    pytest.importorskip("transformers")
    from tests.support.families import tiny_model

    return tiny_model(model_type), 40


@pytest.mark.parametrize("model_type", ["mambadyn", "mamba", "falcon_mamba", "jamba", "mamba2", "zamba2"])
def test_windows_probed_in_one_pass_equal_each_window_probed_alone(model_type):
    """probe_batch: W windows share one forward and one backward pass; every number of every window's probe
    (norms, gradient shares, loss, Δ statistics, spectra, ODE fates) equals that window's probe alone."""
    from mambadyn.probe.api import probe_batch

    m, vocab = _lm(model_type)
    ids = torch.randint(0, vocab, (45,), generator=torch.Generator().manual_seed(2))
    cfg = ProbeConfig(progress=False, ode_positions=3, max_tokens=15)
    batched = probe_batch(m, ids, cfg, windows=3)
    assert len(batched) == 3
    for w, r in enumerate(batched):
        alone = probe(m, ids[w * 15:(w + 1) * 15], cfg)
        _close(r.to_dict(), alone.to_dict(), f"{model_type} window {w}")
    if model_type not in ("mamba2", "zamba2"):  # the Mamba-2 kinds have no layer ODE
        assert batched[0].ode, model_type  # the comparison covered the layer ODE


@pytest.mark.parametrize("model_type", ["mambadyn", "mamba2"])
def test_offloaded_activations_change_no_number(model_type, monkeypatch):
    from dataclasses import replace

    from mambadyn.probe.api import probe_batch

    entered = []
    real = torch.autograd.graph.save_on_cpu

    def spy(*a, **k):
        entered.append(k)
        return real(*a, **k)

    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", spy)

    m, vocab = _lm(model_type)
    ids = torch.randint(0, vocab, (30,), generator=torch.Generator().manual_seed(4))
    cfg = ProbeConfig(progress=False, ode_positions=3, max_tokens=15)
    on = probe_batch(m, ids, replace(cfg, offload_activations=True), windows=2)
    assert len(entered) == 1  # the one pass ran under save_on_cpu
    off = probe_batch(m, ids, cfg, windows=2)
    assert len(entered) == 1
    for a, b in zip(on, off):
        _close(a.to_dict(), b.to_dict())


def test_the_window_batch_size_does_not_change_the_summaries():
    m = _model()
    ids = torch.randint(0, 17, (100,), generator=torch.Generator().manual_seed(1))
    cfg = ProbeConfig(progress=False, ode_positions=4, attention_layers=[0])
    one = probe_windows(m, ids, cfg, windows=3, window_len=30, batch=1)
    two = probe_windows(m, ids, cfg, windows=3, window_len=30, batch=2)
    _close(one.to_dict(), two.to_dict())
    assert len(one.attention) == 1 and torch.allclose(one.attention_maps[0], two.attention_maps[0])


def test_a_model_in_memory_refuses_text_and_the_window_counts_are_keyword_only():
    """The families benchmark once passed its window count where ``text`` stood: a model in memory ignored the
    text and probed the default 4 windows. Now the counts must be named and text for such a model is refused."""
    m = _model()
    ids = torch.arange(100) % 17
    cfg = ProbeConfig(progress=False, ode_positions=0)
    with pytest.raises(TypeError):
        probe_windows(m, ids, cfg, 3, 30)
    for call in (lambda: probe_windows(m, ids, cfg, text="some text", windows=3, window_len=30),
                 lambda: probe(m, ids, cfg, text="some text"),
                 lambda: probe(m, ids, cfg, tokenizer="tokenizer.json")):
        with pytest.raises(ValueError, match="model in memory takes token ids"):
            call()
    assert probe_windows(m, ids, cfg, windows=3, window_len=30).windows["n"] == 3


@pytest.mark.parametrize("model_type", ["mambadyn", "mamba", "falcon_mamba", "jamba", "mamba2", "zamba2", "bamba"])
def test_recomputed_layers_change_no_number_and_record_once(model_type, monkeypatch):
    """ProbeConfig(recompute_layers=True): every layer runs twice (forward, then again in the backward pass),
    and the hooks that record norms, Δ statistics, scan inputs and attention inputs must record once."""
    from dataclasses import replace

    from torch.utils import checkpoint as ckpt

    from mambadyn.probe.api import probe_batch

    calls = []
    real = ckpt.checkpoint

    def spy(fn, *a, **k):
        calls.append(k.get("use_reentrant"))
        return real(fn, *a, **k)

    monkeypatch.setattr(ckpt, "checkpoint", spy)
    monkeypatch.setattr("mambadyn.nn.recompute.checkpoint", spy)
    m, vocab = _lm(model_type)
    ids = torch.randint(0, vocab, (30,), generator=torch.Generator().manual_seed(5))
    cfg = ProbeConfig(progress=False, ode_positions=3, max_tokens=15, attention_layers=[0])
    on = probe_batch(m, ids, replace(cfg, recompute_layers=True), windows=2)
    n_layers = len(on[0].tokens.residual_norms) - 1
    assert calls == [False] * n_layers  # every decoder layer, non-reentrant
    off = probe_batch(m, ids, cfg, windows=2)
    assert len(calls) == n_layers
    for a, b in zip(on, off):
        _close(a.to_dict(), b.to_dict())
    assert on[0].attention  # the attention inputs were recorded (once) in the recomputed pass
    assert not any(vars(layer).get("forward") for layer in _decoder_layers(m))  # the layers are as they were


def _decoder_layers(m):
    from mambadyn.nn.families import decoder_layers
    from mambadyn.probe.hf_models import is_transformers_model

    return decoder_layers(m) if is_transformers_model(m) else list(m.backbone.layers if hasattr(m, "backbone")
                                                                   else m.layers)


@pytest.mark.parametrize("flag", ["--recompute-layers", "--offload-activations"])
def test_the_clis_memory_flags_reach_the_probe_and_change_no_number(tmp_path, flag, monkeypatch):
    from mambadyn.cli import run

    seen = []
    import mambadyn.probe.tokens as tokens

    real = tokens._trace

    def spy(*a, **k):
        seen.append(a[5:7])  # (offload, recompute)
        return real(*a, **k)

    monkeypatch.setattr(tokens, "_trace", spy)
    _model().save_pretrained(tmp_path / "ck")
    (tmp_path / "ids.txt").write_text(" ".join(str(i % 17) for i in range(40)))
    base = ["probe", str(tmp_path / "ck"), "--ids", str(tmp_path / "ids.txt"), "--ode-positions", "3"]
    assert run(base + [flag, "--out", str(tmp_path / "a")]) == 0
    assert run(base + ["--out", str(tmp_path / "b")]) == 0
    assert seen == [(flag == "--offload-activations", flag == "--recompute-layers"), (False, False)]
    a, b = (json.loads((tmp_path / d / "probe.json").read_text()) for d in "ab")
    _close(a["tokens"], b["tokens"])
    _close(a["layers"], b["layers"])


def test_out_of_memory_in_the_backward_pass_names_both_remedies():
    from mambadyn.probe.tokens import saved_on_cpu

    with pytest.raises(torch.OutOfMemoryError, match="--recompute-layers.*--offload-activations"):
        with saved_on_cpu(False):
            raise torch.OutOfMemoryError("CUDA out of memory")


@pytest.mark.parametrize("model_type", ["mambadyn", "mamba", "falcon_mamba", "jamba", "mamba2", "zamba2", "bamba"])
def test_a_shorter_last_window_is_padded_and_equals_its_probe_alone(model_type):
    """The text ends inside the last window: it is padded on the right in the shared pass, and every number
    of its probe (loss, norms, gradient shares, Δ statistics, clustering, ODE) equals that window probed alone;
    the full windows are unchanged by the pad beside them."""
    from mambadyn.probe.api import probe_batch

    m, vocab = _lm(model_type)
    ids = torch.randint(1, vocab, (37,), generator=torch.Generator().manual_seed(6))
    cfg = ProbeConfig(progress=False, ode_positions=3, max_tokens=15)
    batched = probe_batch(m, ids, cfg, windows=3)
    assert [r.input["tokens"] for r in batched] == [15, 15, 7]
    for w, r in enumerate(batched):
        alone = probe(m, ids[w * 15:(w + 1) * 15], cfg)
        assert len(r.tokens.grad_shares[0]) == alone.input["tokens"]
        _close(r.to_dict(), alone.to_dict(), f"{model_type} window {w}")


def test_probe_windows_reports_the_shorter_last_window_and_refuses_a_window_under_two_tokens(tmp_path):
    m = _model()
    ids = torch.randint(0, 17, (70,), generator=torch.Generator().manual_seed(7))
    r = probe_windows(m, ids, ProbeConfig(progress=False, ode_positions=0), windows=3, window_len=30)
    assert r.windows["lens"] == [30, 30, 10] and r.input["windows"]["lens"] == [30, 30, 10]
    assert r.windows["loss"]["n"] == 3
    from mambadyn.probe import write_outputs

    write_outputs(r, tmp_path / "out")
    assert "(the last 10: the text ends there)" in (tmp_path / "out" / "report.md").read_text()
    full = probe_windows(m, ids, ProbeConfig(progress=False, ode_positions=0), windows=2, window_len=30)
    assert full.windows["lens"] is None and "lens" not in full.input["windows"]
    with pytest.raises(ValueError, match="at least 62"):
        probe_windows(m, ids[:61], ProbeConfig(progress=False), windows=3, window_len=30)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_a_classifier_probe_takes_the_memory_settings_and_changes_no_number(bidirectional, monkeypatch):
    """A MambaClassifier's probe (images and labels) honours recompute_layers and offload_activations, as an
    LM's does, rather than ignoring them; a bidirectional block's backward mixer reruns too."""
    from dataclasses import replace

    from mambadyn.nn import ClassifierConfig, MambaClassifier, recompute

    calls, saved = [], []
    real_ckpt, real_save = recompute.checkpoint, torch.autograd.graph.save_on_cpu
    monkeypatch.setattr(recompute, "checkpoint", lambda *a, **k: calls.append(1) or real_ckpt(*a, **k))
    monkeypatch.setattr(torch.autograd.graph, "save_on_cpu", lambda *a, **k: saved.append(1) or real_save(*a, **k))

    torch.manual_seed(0)
    m = MambaClassifier(ClassifierConfig(d_model=16, n_layer=2, d_state=4, patch_size=7,
                                         bidirectional=bidirectional))
    images = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(8))
    cfg = ProbeConfig(progress=False, ode_positions=3)
    plain = probe(m, images, cfg, labels=torch.tensor([3]))
    assert calls == [] and saved == []
    for change in ({"recompute_layers": True}, {"offload_activations": True}):
        other = probe(m, images, replace(cfg, **change), labels=torch.tensor([3]))
        _close(other.to_dict(), plain.to_dict(), str(change))
    assert len(calls) == 2 and len(saved) == 1  # each block recomputed once; one pass offloaded


def test_a_folder_given_for_a_file_is_named_as_a_folder(tmp_path, capsys):
    from mambadyn.cli import run

    _model().save_pretrained(tmp_path / "ck")
    (tmp_path / "dir").mkdir()
    for flag in ("--ids", "--text", "--tokenizer"):
        extra = ["--text", str(tmp_path / "t.txt")] if flag == "--tokenizer" else []
        (tmp_path / "t.txt").write_text("abc")
        assert run(["probe", str(tmp_path / "ck"), flag, str(tmp_path / "dir"), *extra, "--out",
                    str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "is a folder: give a file" in err and "does not exist" not in err, (flag, err)
        assert not (tmp_path / "o").exists()
