"""The probe on every checkpoint kind a user has, its sign guarantees, its numbers, and bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mambadyn.cli import app, run
from mambadyn.data import CharTokenizer
from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import ProbeConfig, probe, sample_text
from mambadyn.probe.layer import layer_params
from mambadyn.refine.spectrum import mixer_matrices

SMALL = dict(vocab_size=0, d_model=16, n_layer=2, d_state=4)
FAST = ProbeConfig(max_tokens=64, ode_positions=4, progress=False)


def _lm(vocab, **kw):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(**{**SMALL, "vocab_size": vocab, **kw}))


def _char_folder(tmp_path):
    tok = CharTokenizer.from_text(sample_text())
    m = _lm(tok.vocab_size)
    m.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    return m, tmp_path / "hf"


def test_probe_reads_a_transformers_checkpoint_with_its_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = CharTokenizer.from_text(sample_text())
    cfg = transformers.MambaConfig(vocab_size=tok.vocab_size, hidden_size=16, state_size=4, num_hidden_layers=2)
    torch.manual_seed(0)
    transformers.MambaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf" / "tokenizer.json")
    out = tmp_path / "out"
    assert run(["probe", str(tmp_path / "hf"), "--tokens", "80", "--ode-positions", "3", "--out", str(out)]) == 0
    d = json.loads((out / "probe.json").read_text())
    assert d["source"]["format"] == "hf" and len(d["layers"]) == 2 and d["input"]["tokens"] == 80
    assert len(d["tokens"]["residual_norms"]) == 3 and len(d["tokens"]["residual_norms"][0]) == 80
    assert all(abs(sum(s) - 1) < 1e-6 for s in d["tokens"]["grad_shares"])
    for f in ("report.md", "spectrum.png", "token_norms.png", "grad_share.png"):
        assert (out / f).stat().st_size > 0


def test_probe_reads_a_mamba_ssm_folder_with_ids(tmp_path):
    m = _lm(40)
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in m.state_dict().items()}
    folder = tmp_path / "ssm"
    folder.mkdir()
    torch.save(sd, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"d_model": 16, "n_layer": 2, "vocab_size": 40,
                                                    "ssm_cfg": {"d_state": 4}, "pad_vocab_size_multiple": 8}))
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str(i % 40) for i in range(50)))
    out = tmp_path / "out"
    assert run(["probe", str(folder), "--ids", str(ids), "--ode-positions", "0", "--out", str(out)]) == 0
    d = json.loads((out / "probe.json").read_text())
    assert d["source"]["format"] == "mamba_ssm" and d["input"] == {"tokens": 50, "from": "ids"} and d["ode"] == []
    # the same weights through the Python API give the same numbers
    again = probe(m, torch.tensor([i % 40 for i in range(50)]), ProbeConfig(ode_positions=0, progress=False))
    assert torch.allclose(torch.tensor(d["tokens"]["residual_norms"]), torch.tensor(again.tokens.residual_norms),
                          rtol=1e-5)


def test_probe_reads_a_mambadyn_run_folder(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(sample_text() * 3)
    r = CliRunner().invoke(app, ["train", "lm", "--data", str(corpus), "--out", str(tmp_path / "run"), "--steps", "3",
                                 "--set", "model.d_model=16", "--set", "model.n_layer=2", "--set", "model.d_state=4",
                                 "--set", "data.seq_len=32", "--set", "optim.batch_size=2", "--set", "run.progress=false"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "tokenizer.json").is_file() and (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    res = probe(tmp_path / "run", config=FAST)
    assert res.source["format"] == "mambadyn_run" and res.input["from"] == "embedded sample"
    assert res.input["tokens"] == 64


@pytest.mark.parametrize("mode,sign", [("positive", 1), ("negative", -1), ("mixed", 0)])
def test_constrained_models_show_the_signs_their_parametrization_guarantees(mode, sign):
    m = _lm(30, eigen_mode=mode, d_state=6)
    res = probe(m, torch.arange(30), FAST)
    for lp in res.layers:
        assert lp.complex_pairs == 0
        if sign > 0:
            assert (lp.positive, lp.negative) == (6, 0) and lp.scenario in ("blows_up", "diverges_slowly")
            assert lp.sym_positive == 6 and lp.sym_negative == 0
        elif sign < 0:
            assert (lp.positive, lp.negative, lp.scenario) == (0, 6, "converges")
        else:
            assert (lp.positive, lp.negative) == (3, 3)


def test_gradient_shares_equal_an_autograd_computation_and_leave_the_parameters_untouched():
    model = _lm(40)
    ids = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(1))
    result = probe(model, ids, FAST)
    emb = model.backbone.embeddings(ids[None]).detach().requires_grad_(True)
    h = emb
    for block in model.backbone.layers:
        h = block(h)
    logits = model.lm_head(model.backbone.norm_f(h))
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits[0, :-1], ids[1:]), emb)
    want = g[0].norm(dim=-1) / g[0].norm(dim=-1).sum()
    assert torch.allclose(torch.tensor(result.tokens.grad_shares[0]), want, rtol=1e-4, atol=1e-7)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_a_default_device_set_by_the_caller_does_not_reach_the_probe():
    """Users build large models under ``with torch.device("cuda")``; a probe called inside it once mixed devices
    (its fits made tensors on the default device). A meta default stands in for a GPU here."""
    model = _lm(40)
    ids = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(1))
    want = probe(model, ids, FAST)
    with torch.device("meta"):
        got = probe(model, ids, FAST)
    assert got.tokens.growth_per_layer == want.tokens.growth_per_layer


def test_spectra_match_dense_eigenvalues():
    m = _lm(30, d_state=3)
    mixer = m.backbone.layers[0].mixer
    mats = mixer_matrices(mixer)
    M = mats["S_C"].T @ mats["S_B"]  # (D, D), rank 3
    dense = torch.linalg.eigvals(M)
    dense = dense[dense.abs() > 1e-10 * dense.abs().max()]
    lp = layer_params("l0", mixer)
    ours = torch.tensor(lp.eigenvalues, dtype=torch.complex128)
    assert torch.allclose(torch.sort(ours.real).values, torch.sort(dense.real).values, atol=1e-10)
    sym = torch.linalg.eigvalsh((M + M.T) / 2)
    sym = sym[sym.abs() > 1e-10 * sym.abs().max()].sort().values
    assert torch.allclose(torch.tensor(lp.symmetric_eigenvalues, dtype=torch.float64), sym, atol=1e-10)


def test_ode_check_reports_fates_and_agreement():
    res = probe(_lm(30, eigen_mode="positive"), torch.arange(30), ProbeConfig(ode_positions=5, ode_t_end=50.0,
                                                                              progress=False))
    assert len(res.ode) == 2
    for o in res.ode:
        assert len(o.predicted) == 5 and set(o.predicted) <= {"blows_up", "grows", "shrinks", "unfinished"}
        assert set(o.observed) <= {"grows", "shrinks"}
        assert (o.agreement is None) == (o.decided == 0) and (o.decided == 0 or 0.0 <= o.agreement <= 1.0)
        assert o.decided == sum(p != "unfinished" for p in o.predicted)


def _fails(argv, capsys, needle):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and needle in err and "Traceback" not in err, err


def test_bad_checkpoints_and_inputs_get_one_clear_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(["probe", str(tmp_path / "missing"), "--out", str(out)], capsys, "does not exist")
    m, folder = _char_folder(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 9999")
    _fails(["probe", str(folder), "--ids", str(ids), "--out", str(out)], capsys, "out of the model's vocabulary")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    _fails(["probe", str(folder), "--text", str(empty), "--out", str(out)], capsys, "empty")
    oov = tmp_path / "oov.txt"
    oov.write_text("0123456789 @@@")
    _fails(["probe", str(folder), "--text", str(oov), "--out", str(out)], capsys, "cannot encode")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    _fails(["probe", str(folder), "--out", str(out)], capsys, "model_type 'gpt2' has no selective-SSM layers; mambadyn probes")
    (folder / "config.json").write_text(json.dumps({**cfg, "state_size": 8}))
    _fails(["probe", str(folder), "--out", str(out)], capsys, "x_proj.weight")
    (folder / "config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        m.backbone.layers[1].mixer.A_log[0, 0] = float("nan")
    m.save_pretrained(folder)
    _fails(["probe", str(folder), "--out", str(out)], capsys, "non-finite")
    assert not out.exists()


def test_no_tokenizer_is_a_clear_error(tmp_path, capsys):
    _lm(30).save_pretrained(tmp_path / "m")
    _fails(["probe", str(tmp_path / "m"), "--out", str(tmp_path / "o")], capsys, "no tokenizer.json")


def test_probe_of_a_classifier_reads_its_parameters(tmp_path):
    from mambadyn.nn import ClassifierConfig, MambaClassifier

    MambaClassifier(ClassifierConfig(d_model=16, n_layer=1, d_state=4, patch_size=7,
                                     eigen_mode="negative")).save_pretrained(tmp_path / "c")
    res = probe(tmp_path / "c", config=FAST)
    assert res.tokens is None and len(res.layers) == 2  # forward and backward mixer
    assert all(lp.scenario == "converges" for lp in res.layers)


def test_a_short_text_labels_the_attention_heatmaps_with_its_tokens(tmp_path):
    _, folder = _char_folder(tmp_path)
    text = tmp_path / "t.txt"
    text.write_text("the tokens read")
    out = tmp_path / "out"
    assert run(["probe", str(folder), "--text", str(text), "--attention", "0", "--ode-positions", "0",
                "--out", str(out)]) == 0
    d = json.loads((out / "probe.json").read_text())
    assert "".join(d["input"]["token_text"]) == "the tokens read"
    assert (out / "attention.png").is_file()
    ids = tmp_path / "ids.txt"  # ids given directly: no text to show
    ids.write_text("1 2 3 4 5")
    assert run(["probe", str(folder), "--ids", str(ids), "--attention", "0", "--ode-positions", "0",
                "--out", str(tmp_path / "out2")]) == 0
    assert "token_text" not in json.loads((tmp_path / "out2" / "probe.json").read_text())["input"]


def test_the_probe_s_captures_run_the_per_op_path_and_restore_the_setting():
    # on a GPU the fused path runs the mixer and the add+norm as kernels that no module hook sees, so the
    # traces switch it off while they run (on this CPU it is off anyway: what is checked is the switch)
    from mambadyn.probe.attention import capture_scan_inputs
    from mambadyn.probe.tokens import trace_tokens

    m = _lm(17)
    mixer = m.backbone.layers[0].mixer
    assert mixer.fused
    seen = []
    h = mixer.register_forward_pre_hook(lambda mod, args: seen.append(mod.fused))
    ids = torch.arange(9) % 17
    trace_tokens(m, ids)
    capture_scan_inputs(m, ids)
    h.remove()
    assert seen == [False, False] and mixer.fused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the probe of a model on a GPU")
def test_probe_of_a_model_on_cuda_matches_the_cpu_probe():
    """A model on the GPU is probed where it is (a GPU run once failed here: the scan inputs came back to
    the CPU while the layer's matrices stayed on the GPU)."""
    m = _lm(32)
    ids = torch.randint(0, 32, (48,), generator=torch.Generator().manual_seed(0))
    cfg = ProbeConfig(max_tokens=64, ode_positions=4, progress=False, attention_layers=[0])
    cpu = probe(m, ids, cfg)
    gpu = probe(m.cuda(), ids, cfg)
    assert [lp.scenario for lp in gpu.layers] == [lp.scenario for lp in cpu.layers]
    torch.testing.assert_close(torch.tensor(gpu.tokens.residual_norms), torch.tensor(cpu.tokens.residual_norms),
                               rtol=1e-4, atol=1e-5)
    assert gpu.attention[0].first_token_mass == pytest.approx(cpu.attention[0].first_token_mass, rel=1e-3)
