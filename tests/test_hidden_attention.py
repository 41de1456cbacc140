"""Hidden attention (issue 31, Mamba-1 part): Σ_j M_lj u_j + D u_l is the layer's own scan output, in
float64, through the blocked path too; captured inputs reproduce the layer; the views are normalised."""

import pytest
import torch

from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe.attention import (
    attention_rows,
    capture_scan_inputs,
    distance_profile,
    hidden_attention,
    layer_attention,
)
from mambadyn.scan.reference import selective_scan_ref


def _model():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=2, d_state=3)).double()


def test_the_attention_matrix_reproduces_the_layers_scan_in_float64():
    m, ids = _model(), torch.randint(0, 17, (23,), generator=torch.Generator().manual_seed(1))
    for k, s in capture_scan_inputs(m, ids).items():
        mixer = m.backbone.layers[k].mixer
        # the captured inputs are the layer's: the mixer's own scan (without the gate) on them
        ref = selective_scan_ref(s.u.T[None], (s.delta.T)[None], s.A, s.B[:, 0].T[None], s.C[:, 0].T[None], s.D_skip,
                                 delta_softplus=False)[0].T
        torch.testing.assert_close(s.scan_output(), ref, rtol=1e-12, atol=1e-12)
        D = s.u.shape[1]
        for block in (23, 5):  # whole, and blocks smaller than L
            att = layer_attention(s, k, channels=list(range(D)), block=block, channel_block=3)
            y = torch.einsum("dlj,jd->ld", att.M, s.u) + s.D_skip * s.u
            torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
            assert torch.equal(att.M.triu(1), torch.zeros_like(att.M))  # causal
        assert mixer.D.shape == (D,)


def test_the_views_have_their_documented_normalisation():
    m, ids = _model(), torch.arange(15) % 17
    att = hidden_attention(m, ids, layers=[1], channels=[0, 4], block=4)[0]
    assert att.layer == 1 and att.M.shape == (2, 15, 15)
    torch.testing.assert_close(att.mean_rownorm.sum(-1), torch.ones(15, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    s = capture_scan_inputs(m, ids, [1])[1]
    full = attention_rows(s, slice(0, 15), torch.arange(s.u.shape[1]))
    torch.testing.assert_close(att.mean_abs, full.abs().mean(0), rtol=1e-12, atol=1e-14)
    prof = distance_profile(att.mean_rownorm)
    naive = torch.stack([torch.diagonal(att.mean_rownorm, offset=-k).mean() for k in range(15)])
    torch.testing.assert_close(prof, naive, rtol=1e-12, atol=1e-15)


def test_bad_layers_channels_and_sizes_are_one_clear_error():
    m, ids = _model(), torch.arange(10)
    with pytest.raises(ValueError, match="layers \\[5\\] out of range"):
        hidden_attention(m, ids, layers=[5])
    with pytest.raises(ValueError, match="channels \\[99\\] out of range"):
        hidden_attention(m, ids, channels=[99])
    with pytest.raises(ValueError, match="out of the model's vocabulary"):
        hidden_attention(m, torch.tensor([1, 2, 99]))
    s = capture_scan_inputs(m, ids, [0])[0]
    big = type(s)(torch.zeros(20000, 16, dtype=torch.float64), torch.zeros(20000, 16), *[None] * 6)
    with pytest.raises(ValueError, match="GiB"):
        layer_attention(big, channels=list(range(16)))


def _check_against_out_proj_input(model, mixers, ids):
    """(Σ_j M_lj u_j + D u_l) · silu(z_l) is exactly what each layer hands its out_proj."""
    seen, zs = {}, {}
    hooks = []
    for k, mixer in enumerate(mixers):
        hooks.append(mixer.out_proj.register_forward_pre_hook(
            lambda mod, args, k=k: seen.__setitem__(k, args[0][0].detach().double())))
        hooks.append(mixer.in_proj.register_forward_hook(
            lambda mod, args, out, k=k: zs.__setitem__(k, out[0].detach().double().chunk(2, dim=-1)[1])))
    try:
        atts = hidden_attention(model, ids, channels=list(range(mixers[0].A_log.shape[0])), block=4)
    finally:
        for h in hooks:
            h.remove()
    inputs = capture_scan_inputs(model, ids)
    for att in atts:
        s = inputs[att.layer]
        y = (torch.einsum("dlj,jd->ld", att.M, s.u) + s.D_skip * s.u) * torch.nn.functional.silu(zs[att.layer])
        torch.testing.assert_close(y, seen[att.layer], rtol=1e-9, atol=1e-11)


def test_the_layers_own_output_is_the_attention_applied_mambadyn_and_transformers():
    m = _model()
    ids = torch.randint(0, 17, (11,), generator=torch.Generator().manual_seed(2))
    _check_against_out_proj_input(m, [layer.mixer for layer in m.backbone.layers], ids)
    transformers = pytest.importorskip("transformers")
    cfg = transformers.MambaConfig(vocab_size=17, hidden_size=8, state_size=3, num_hidden_layers=2,
                                   use_mambapy=False)
    torch.manual_seed(3)
    hf = transformers.MambaForCausalLM(cfg).double().eval()
    _check_against_out_proj_input(hf, [layer.mixer for layer in hf.backbone.layers], ids)


@pytest.mark.parametrize("model_type", ["mamba", "falcon_mamba", "jamba", "mamba2", "zamba2", "bamba", "nemotron_h",
                                        "granitemoehybrid", "falcon_h1"])
def test_every_family_s_own_scan_output_is_its_attention_applied(model_type):
    """Σ_j M_lj u_j + D u_l equals the float64 recurrence on the layer's captured inputs to float64 precision,
    per channel (Mamba-1 kinds) or per head (Mamba-2 kinds, two groups in Mamba2's), through blocks smaller
    than L; and that recurrence equals the scan output the family's own forward pass computed, to the float32
    in which the families' PyTorch paths compute (they form A, B and the chunk sums in float32 even for a
    float64 model, and Jamba's MoE has no float64 kernel)."""
    pytest.importorskip("transformers")
    from mambadyn.probe.attention import family_scan_inputs
    from tests.support.families import tiny_model

    model = tiny_model(model_type)
    ids = torch.randint(0, 40, (19,), generator=torch.Generator().manual_seed(4))
    inputs, ys, gates = family_scan_inputs(model, ids)
    assert inputs
    for k, s in inputs.items():
        ref = s.scan_output()
        ours = ref if gates[k] is None else ref * torch.nn.functional.silu(gates[k])
        assert ((ours - ys[k]).norm() / ys[k].norm()).item() < 1e-5, (model_type, k)
        per_head = s.units != s.u.shape[1]
        for block in (19, 4):
            att = layer_attention(s, k, channels=list(range(s.units)), block=block, channel_block=3,
                                  unit="head" if per_head else "channel")
            y = torch.einsum("klj,jd->kld", att.M, s.u)[s.unit, :, torch.arange(s.u.shape[1])].T
            torch.testing.assert_close(y + s.D_skip[s.unit] * s.u, ref, rtol=1e-10, atol=1e-12)
    # the public door picks the unit: heads for Mamba-2 kinds, channels for Mamba-1 kinds
    per_head = any(s.units != s.u.shape[1] for s in inputs.values())
    att = hidden_attention(model, ids, layers=[0], **({"heads": [1]} if per_head else {"channels": [1]}))[0]
    assert att.M.shape == (1, 19, 19) and att.unit == ("head" if per_head else "channel")
    with pytest.raises(ValueError, match="pass heads" if per_head else "pass channels"):
        hidden_attention(model, ids, **({"channels": [0]} if per_head else {"heads": [0]}))


@pytest.mark.parametrize("kind", ["mambadyn", "mamba2"])
def test_probe_attention_adds_its_section_figures_and_numbers(kind, tmp_path, capsys):
    import json

    from typer.testing import CliRunner

    from mambadyn.cli import app

    if kind == "mambadyn":
        m = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=3, d_state=3))
        m.save_pretrained(tmp_path / "ck")
    else:
        pytest.importorskip("transformers")
        from tests.support.families import tiny_model

        tiny_model("mamba2").save_pretrained(tmp_path / "ck")
    (tmp_path / "ids.txt").write_text(" ".join(str(i % 17) for i in range(40)))
    args = ["probe", str(tmp_path / "ck"), "--ids", str(tmp_path / "ids.txt"), "--ode-positions", "0"]
    res = CliRunner().invoke(app, args + ["--attention", "layers=0,1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    d = json.loads((out / "probe.json").read_text())
    assert [a["layer"] for a in d["attention"]] == [0, 1]
    for a in d["attention"]:
        assert len(a["distance_profile"]) == 40 and len(a["received"]) == 40
        assert 0 <= a["first_token_mass"] <= 1 and a["spearman_grad"] is not None
        assert abs(sum(a["received"][j] * (40 - j) for j in range(40)) - 40) < 1e-6  # every row sums to 1
    assert (out / "attention.png").is_file() and (out / "attention_distance.png").is_file()
    assert "hidden attention" in (out / "report.md").read_text()
    from mambadyn.cli import run

    capsys.readouterr()
    assert run(args + ["--attention", "7", "--out", str(tmp_path / "out2")]) == 2
    assert "attention layers [7] out of range" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("block", [8, 7, 24])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_blocked_products_equal_the_entrywise_formula_with_steps_large_enough_to_overflow_a_factor(dtype, block):
    """Some blocks hold a step so large that exp(A (S_b - S_j)) would overflow: those are halved until their
    products are safe (down to single steps around the large one), the rest take the factored products; every
    entry equals Δ_j Σ_n C_ln B_jn exp(A_n (S_l - S_j)) written out. Blocks of 8, 7 (uneven halves) and the
    whole length."""
    from mambadyn.probe.attention import ScanInputs

    g = torch.Generator().manual_seed(5)
    L, D, N = 24, 3, 4
    delta = torch.nn.functional.softplus(torch.randn(L, D, generator=g, dtype=torch.float64) - 3)
    delta[13, 1] = 60.0  # |A| x 60 is past float64's exponent range for the block holding step 13
    delta[5, 0] = 9.0  # and past float32's for channel 0
    s = ScanInputs.per_channel(torch.randn(L, D, generator=g, dtype=torch.float64), delta,
                               torch.randn(L, N, generator=g, dtype=torch.float64),
                               torch.randn(L, N, generator=g, dtype=torch.float64),
                               -torch.rand(D, N, generator=g, dtype=torch.float64) * 16 - 0.5,
                               torch.ones(D, dtype=torch.float64))
    S = torch.cumsum(s.delta, 0)
    naive = torch.zeros(D, L, L, dtype=torch.float64)
    for d in range(D):
        for l in range(L):
            for j in range(l + 1):
                naive[d, l, j] = s.delta[j, d] * (s.C[l, 0] * s.B[j, 0] * torch.exp(s.A[d] * (S[l, d] - S[j, d]))).sum()
    att = layer_attention(s.to(dtype), channels=list(range(D)), block=block, channel_block=2)
    # float32: S is a float32 cumulative sum, so a step of 60 leaves ~1e-5 of rounding in A (S_l - S_j)
    tol = dict(rtol=1e-10, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(att.M.double(), naive, **tol)
    assert torch.isfinite(att.mean_rownorm).all()


def test_a_length_whose_views_would_not_fit_is_refused_with_its_size_before_any_work():
    from mambadyn.probe import ProbeConfig, probe
    from mambadyn.probe.attention import check_view_size

    check_view_size(4096)  # 128 MiB in float32: fine
    with pytest.raises(ValueError, match="at L = 20000 tokens needs 3.0 GiB .* probe fewer tokens"):
        check_view_size(20000)
    m = _model()
    ids = torch.arange(20000) % 17
    with pytest.raises(ValueError, match="at L = 20000 tokens needs"):
        probe(m, ids, ProbeConfig(progress=False, max_tokens=20000, attention_layers=[0]))


def test_the_probe_reads_attention_from_its_own_trace_in_one_pass():
    """probe --attention on a mambadyn model: one forward pass (the trace's), and the maps it draws are the
    views hidden_attention computes in its own pass (up to the float32 the probe's views use)."""
    from mambadyn.nn import MambaConfig, MambaLM
    from mambadyn.probe import ProbeConfig, probe
    from mambadyn.probe.attention import block_average, hidden_attention

    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=29, d_model=16, n_layer=3, d_state=4))
    ids = torch.randint(0, 29, (40,), generator=torch.Generator().manual_seed(2))
    calls = []
    handle = m.backbone.register_forward_hook(lambda *_: calls.append(1))
    res = probe(m, ids, ProbeConfig(max_tokens=64, ode_positions=0, progress=False, attention_layers=[0, 2]))
    handle.remove()
    assert calls == [1]
    for k in (0, 2):
        want = block_average(hidden_attention(m, ids, layers=[k])[0].mean_rownorm).float()
        torch.testing.assert_close(res.attention_maps[k], want, rtol=1e-4, atol=1e-6)
