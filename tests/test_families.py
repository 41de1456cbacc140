"""The probe on every selective-SSM family transformers ships (nn.families), on tiny random configs that
transformers' own save_pretrained writes: what the capture records equals an explicit recomputation from
the weights, the spectra equal dense eigenvalues, the residual norms equal output_hidden_states, and the
folder probes end to end (CLI included). No network."""

import json

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from mambadyn.nn.families import FAMILIES, MAMBA1, capture, family_of, interactions, ssm_mixers  # noqa: E402
from mambadyn.probe import ProbeConfig, probe  # noqa: E402
from tests.support.families import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 40, (13,), generator=torch.Generator().manual_seed(3))


def _rms(x, eps, weight=None):
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else weight * y


def _recompute(mixer, family, h):
    """u, dt_raw, B, C of one mixer on its input h (L, d_model), from its weights, written out here."""
    L = h.shape[0]
    conv = mixer.conv1d
    if family.kind == MAMBA1:
        d, r, n = mixer.intermediate_size, mixer.time_step_rank, mixer.ssm_state_size
        xz = h @ mixer.in_proj.weight.T
        x = xz[:, :d].T[None]
        u = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] - 1, groups=d)[..., :L])[0].T
        dt, B, C = (u @ mixer.x_proj.weight.T).split([r, n, n], dim=-1)
        if family.bc_norm != "none":
            eps = getattr(mixer, "rms_eps", None) or mixer.b_layernorm.variance_epsilon
            w = (lambda m: None) if family.bc_norm == "weightless" else (lambda m: m.weight)
            dt, B, C = (_rms(dt, eps, w(mixer.dt_layernorm)), _rms(B, eps, w(mixer.b_layernorm)),
                        _rms(C, eps, w(mixer.c_layernorm)))
        return u, dt @ mixer.dt_proj.weight.T, B, C
    d, G, n, H = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size, mixer.num_heads
    x = h * float(getattr(mixer, "ssm_in_multiplier", 1.0))
    proj = x @ mixer.in_proj.weight.T
    if hasattr(mixer, "mup_vector"):
        proj = proj * mixer.mup_vector.flatten()
    xbc = proj[:, d:2 * d + 2 * G * n].T[None]
    xbc = F.silu(F.conv1d(xbc, conv.weight, conv.bias, padding=conv.kernel_size[0] - 1, groups=xbc.shape[1])[..., :L])
    u, B, C = xbc[0].T.split([d, G * n, G * n], dim=-1)
    return u, proj[:, 2 * d + 2 * G * n:2 * d + 2 * G * n + H], B, C


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_capture_equals_a_recomputation_from_the_weights(model_type, ids):
    model = tiny_model(model_type)
    family = family_of(model)
    with torch.no_grad(), capture(model, family) as got:
        model(ids[None])
    mixers = ssm_mixers(model, family)
    assert set(got) == {n for n, _ in mixers}
    for name, mixer in mixers:
        s = got[name]
        with torch.no_grad():
            u, dt, B, C = _recompute(mixer, family, s.h)
        for what, a, b in (("u", s.u, u), ("dt", s.dt_raw, dt), ("B", s.B, B), ("C", s.C, C)):
            assert a.shape == b.shape, (model_type, name, what, a.shape, b.shape)
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (model_type, name, what, (a - b).abs().max())


def _dense_eigs(K: torch.Tensor, n: int) -> torch.Tensor:
    ev = torch.linalg.eigvals(K)
    return ev[ev.abs().argsort(descending=True)[:n]]


def _close_sets(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    # each eigenvalue of a matched to a distinct one of b
    left = list(b)
    for z in a:
        k = min(range(len(left)), key=lambda i: abs(left[i] - z))
        if abs(left[k] - z) > tol * max(1.0, abs(z)):
            return False
        left.pop(k)
    return True


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_spectra_equal_dense_eigenvalues_and_residual_norms_equal_hidden_states(model_type, ids):
    model = tiny_model(model_type)
    family = family_of(model)
    result = probe(model, ids, ProbeConfig(progress=False))
    by_name = {lp.name: lp for lp in result.layers}
    for name, mixer in ssm_mixers(model, family):
        mats = interactions(mixer, family)
        for it in mats:
            # the matrix written out from the module's parameters, independently of families.interactions
            if family.kind == MAMBA1:
                w = mixer.x_proj.weight.double()
                r, n = mixer.time_step_rank, mixer.ssm_state_size
                g = torch.ones(n, dtype=torch.float64)
                if family.bc_norm == "learned":
                    g = (mixer.b_layernorm.weight * mixer.c_layernorm.weight).double()
                K = w[r + n:r + 2 * n].T @ torch.diag(g) @ w[r:r + n]
            else:
                d, G, n = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size
                W = mixer.in_proj.weight.double()
                if hasattr(mixer, "mup_vector"):
                    W = mixer.mup_vector.double().flatten()[:, None] * W * mixer.ssm_in_multiplier
                g0 = it.group
                WB = W[2 * d + g0 * n:2 * d + (g0 + 1) * n]
                WC = W[2 * d + G * n + g0 * n:2 * d + G * n + (g0 + 1) * n]
                K = WC.T @ WB
            label = name if len(mats) == 1 else f"{name}[group {it.group}]"
            got = torch.tensor(by_name[label].eigenvalues, dtype=torch.complex128)
            assert _close_sets(got, _dense_eigs(K.detach(), n), 1e-8), (model_type, label)
    with torch.no_grad():
        hs = model(ids[None], output_hidden_states=True).hidden_states
        emb = model.get_input_embeddings()(ids[None])
    norms = result.tokens.residual_norms
    assert len(norms) == len(result.source["layer_kinds"]) + 1
    assert torch.allclose(torch.tensor(norms[0]), emb[0].norm(dim=-1), rtol=1e-5)
    # hidden_states holds each layer's output, after the embedding in most families (transformers 5's Mamba and
    # FalconMamba leave the embedding out); the last entry is the final norm's output in some families
    skip = 0 if torch.equal(hs[0], emb) else 1
    for k in range(len(hs) - 1):
        assert torch.allclose(torch.tensor(norms[k + skip]), hs[k][0].norm(dim=-1), rtol=1e-5), (model_type, k)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_gradient_shares_equal_an_autograd_computation_and_leave_the_parameters_untouched(model_type, ids):
    """The probe freezes the parameters and starts the graph at the embedding's output; the first stream's
    shares must still count every path from it (Zamba2 carries a copy of the embedding to its hybrid layers)."""
    model = tiny_model(model_type)
    result = probe(model, ids, ProbeConfig(progress=False, ode_positions=0))
    emb = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits
    (g,) = torch.autograd.grad(F.cross_entropy(logits[0, :-1].float(), ids[1:]), emb)
    want = g[0].norm(dim=-1) / g[0].norm(dim=-1).sum()
    assert torch.allclose(torch.tensor(result.tokens.grad_shares[0]), want, rtol=1e-4, atol=1e-7), model_type
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the probe of a transformers model on a GPU")
@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_a_model_on_cuda_probes_like_its_cpu_copy(model_type, ids):
    """The layer matrices come to the CPU wherever the model lives (a 2.7B-shaped Mamba-2 on an H100 once
    failed here: in_proj's weight on the GPU, its scale on the CPU)."""
    from mambadyn.probe import probe_windows

    model = tiny_model(model_type)
    cfg = ProbeConfig(progress=False, attention_layers=[0])  # the attention once failed there: dt_bias on the GPU
    cpu = probe(model, ids, cfg)
    gpu = probe(model.cuda(), ids, cfg)
    torch.testing.assert_close(torch.tensor(gpu.attention[0].distance_profile), torch.tensor(cpu.attention[0].distance_profile),
                               rtol=1e-3, atol=1e-5)
    assert probe_windows(model, ids, cfg, windows=2, window_len=6).windows["n"] == 2
    assert [lp.name for lp in gpu.layers] == [lp.name for lp in cpu.layers]
    for a, b in zip(gpu.layers, cpu.layers):
        assert _close_sets(torch.tensor(a.eigenvalues, dtype=torch.complex128),
                           torch.tensor(b.eigenvalues, dtype=torch.complex128), 1e-8), (model_type, a.name)
    torch.testing.assert_close(torch.tensor(gpu.tokens.residual_norms), torch.tensor(cpu.tokens.residual_norms),
                               rtol=1e-3, atol=1e-4)


def test_a_constrained_model_saved_without_bake_is_refused_with_the_fix(tmp_path, capsys):
    """save_pretrained on a constrained model writes in_proj's raw parameter, which from_pretrained does not
    read (it would start in_proj afresh): the probe refuses the folder and says to bake first."""
    from mambadyn.cli import run
    from mambadyn.refine import constrain_eigenvalues

    model = tiny_model("mamba2")
    constrain_eigenvalues(model, "positive")
    model.save_pretrained(tmp_path / "ck")
    assert run(["probe", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the CLI wraps its line
    assert "mixer.in_proj.weight" in err and "bake(model) before save_pretrained" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_type", ["mamba2", "jamba", "falcon_h1"])
def test_a_saved_folder_probes_end_to_end_with_the_cli(model_type, ids, tmp_path):
    from typer.testing import CliRunner

    from mambadyn.cli import app

    tiny_model(model_type).save_pretrained(tmp_path / "ck")
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids.tolist())))
    res = CliRunner().invoke(app, ["probe", str(tmp_path / "ck"), "--ids", str(tmp_path / "ids.txt"),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    d = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert d["source"]["family"] == model_type and d["source"]["format"] == "transformers"
    assert d["layers"] and all(lp["conjectural"] for lp in d["layers"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert FAMILIES[model_type].matrix in report
    if FAMILIES[model_type].kind == MAMBA1:
        assert d["ode"] and "leaves out the RMSNorms" in report
    else:
        assert not d["ode"] and "Layer ODE: not run" in report


@pytest.mark.parametrize("model_type", ["mamba", "falcon_mamba", "jamba"])
def test_the_mamba1_kinds_run_the_layer_ode_from_their_captured_scan_inputs(model_type, ids):
    from mambadyn.probe.hf_models import ODE_NOTES
    from mambadyn.probe.ode import interaction_system

    model = tiny_model(model_type)
    family = family_of(model)
    result = probe(model, ids, ProbeConfig(progress=False, ode_positions=5))
    mixers = ssm_mixers(model, family)
    kinds = result.source["layer_kinds"]
    stream = [i for i, k in enumerate(kinds) if "ssm" in k.split("+")]
    assert [o.layer for o in result.ode] == list(range(len(mixers)))
    for o in result.ode:
        assert o.positions == 5 and o.t_end == len(kinds) - stream[o.layer] and o.note == ODE_NOTES[family.bc_norm]
        assert result.layers[o.layer].layers_remaining == len(kinds) - stream[o.layer]
    if model_type != "mamba":
        return
    # Mamba's B, C and Δ are linear in u: the system's right-hand side on the captured scan inputs is the scan
    # transformers ran, before its D skip and gate
    with torch.no_grad(), capture(model, family) as got:
        model(ids[None])
    for name, mixer in mixers:
        (it,) = interactions(mixer, family)
        r = mixer.time_step_rank
        system = interaction_system(it, mixer.dt_proj.weight.detach(), mixer.x_proj.weight.detach()[:r])
        c = got[name]
        y = (system.rhs(c.u.double()[None])[0] + mixer.D.double() * c.u) * F.silu(c.z.double())
        assert torch.allclose(y.float(), c.y, atol=1e-5, rtol=1e-4), (name, (y.float() - c.y).abs().max())


def test_a_model_without_ssm_layers_is_refused_with_its_model_type(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match=r"'gpt2' has no selective-SSM layers.*families: .*mamba2"):
        probe(tmp_path / "gpt2", ids=torch.arange(5))


def test_an_unknown_family_with_ssm_modules_is_refused():
    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A_log = torch.nn.Parameter(torch.zeros(2))
            self.in_proj = torch.nn.Linear(2, 2)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "newssm"})()
            self.mixer = Mixer()

    with pytest.raises(ValueError, match="'newssm' has SSM-looking modules .*mixer"):
        family_of(Model())


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    from mambadyn.nn.hf_io import CheckpointError

    tiny_model("mamba2").save_pretrained(tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    weights = load_file(f)
    weights["backbone.layers.1.mixer.in_proj.weight"] = weights["backbone.layers.1.mixer.in_proj.weight"][:-1]
    save_file(weights, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="backbone.layers.1.mixer.in_proj.weight"):
        probe(tmp_path / "ck", ids=torch.arange(5))


@pytest.mark.parametrize("model_type,mode", [("mamba2", "positive"), ("mamba2", "negative"), ("falcon_h1", "mixed"),
                                             ("bamba", "positive")])
def test_constrained_mamba2_layers_keep_their_signs_through_training_and_save_pretrained(model_type, mode, tmp_path):
    """constrain_eigenvalues on a transformers Mamba-2 family works per group; the probe sees the signs it
    guarantees after a training step and after bake + save_pretrained + from_pretrained; re-constraining the
    loaded model leaves its weights as they are."""
    from mambadyn.refine import bake, constrain_eigenvalues

    model = tiny_model(model_type).train()
    constrain_eigenvalues(model, mode)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 40, (1, 12), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    opt.step()

    def signs(m):
        r = probe(m, ids[0], ProbeConfig(progress=False))
        return [(lp.positive, lp.negative, lp.complex_pairs) for lp in r.layers]

    n = 4
    want = {"positive": (n, 0, 0), "negative": (0, n, 0), "mixed": (n // 2, n - n // 2, 0)}[mode]
    assert all(s == want for s in signs(model.eval())), signs(model)
    bake(model).save_pretrained(tmp_path / "ck")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    assert all(s == want for s in signs(loaded))
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    constrain_eigenvalues(loaded, mode)
    after = bake(loaded).state_dict()
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=1e-5, atol=1e-6)


def test_probe_families_benchmark_end_to_end(shared_data, tmp_path):
    """The GPU benchmark's whole path on the CPU at toy size: train, save_pretrained, probe over windows, and the
    table built back from what it wrote; a rerun resumes from the saved models instead of training again."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = tmp_path / "fam"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "probe_families.py"), "--shared", str(shared_data),
           "--out", str(out), "--only", "mamba2-negative,zamba2,falcon_mamba", "--steps", "3", "--d-model", "32", "--layers", "2",
           "--seq-len", "32", "--batch", "2", "--windows", "2", "--window-len", "64", "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["mamba2-negative", "zamba2", "falcon_mamba"]
    assert summary["mamba2-negative"]["steps"] == 3
    # the constraint survives training, bake, save_pretrained and the probe's load
    assert all(p == 0 and c == 0 and n > 0 for p, n, c in summary["mamba2-negative"]["signs"])
    table = (out / "table.md").read_text()
    rows = [r for r in table.splitlines() if r.startswith(("| mamba2", "| zamba2", "| falcon"))]
    assert len(rows) == 3 and all(r.count("|") == 11 for r in rows)
    assert "- falcon_mamba, layer 0: paper agreement:" in table  # the layer ODE's lines: FalconMamba has one
    assert (out / "zamba2" / "report.md").is_file()
    trained = (out / "runs" / "zamba2" / "train.json").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert " step " not in again.stdout  # nothing retrained: training prints its steps
    assert (out / "runs" / "zamba2" / "train.json").read_text() == trained
