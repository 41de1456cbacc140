"""probe.capture: the named tensors per layer; states equal the reference scan's, outputs follow from them,
the residual stream chains from layer to layer; for mambadyn models and a transformers family."""

import pytest
import torch

from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe.capture import NAMES, capture
from mambadyn.scan.reference import selective_scan_ref


def test_states_outputs_and_residuals_of_a_mambadyn_model():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=2, d_state=3)).double()
    ids = torch.randint(0, 17, (21,), generator=torch.Generator().manual_seed(1))
    got = capture(m, ids, NAMES, channels=[0, 3, 7])
    for k in (0, 1):
        u, dt, B, C = got["ssm_input"][k], got["ssm_dt"][k], got["ssm_B"][k][:, 0], got["ssm_C"][k][:, 0]
        A = -torch.exp(m.backbone.layers[k].mixer.A_log.detach())
        y, last = selective_scan_ref(u.T[None], dt.T[None], A, B.T[None], C.T[None], None, return_last_state=True)
        h = got["ssm_state"][k]  # (L, 3, N) for channels 0, 3, 7
        torch.testing.assert_close(h[-1], last[0, [0, 3, 7]], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close((h * C[:, None, :]).sum(-1), y[0].T[:, [0, 3, 7]], rtol=1e-12, atol=1e-12)
        D = m.backbone.layers[k].mixer.D.detach()
        torch.testing.assert_close(got["ssm_output"][k], y[0].T + D * u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["resid_post"][0], got["resid_pre"][1])
    torch.testing.assert_close(got["resid_pre"][0], m.backbone.embeddings(ids).float())


def test_a_transformers_family_and_bad_names():
    pytest.importorskip("transformers")
    from mambadyn.probe.attention import family_scan_inputs
    from tests.support.families import tiny_model

    model = tiny_model("mamba2")
    ids = torch.arange(15) % 40
    got = capture(model, ids, ["ssm_output", "ssm_state", "resid_post"], layers=[1], channels=[0, 9])
    _, ys, _ = family_scan_inputs(model, ids, [1])
    assert ((got["ssm_output"][1] - ys[1]).norm() / ys[1].norm()) < 1e-5
    assert got["ssm_state"][1].shape == (15, 2, 4) and got["resid_post"][1].shape == (15, 16)
    with pytest.raises(ValueError, match="unknown capture names \\['hook_x'\\]"):
        capture(model, ids, ["hook_x"])
    with pytest.raises(ValueError, match="channels \\[99\\] out of range"):
        capture(model, ids, ["ssm_state"], layers=[0], channels=[99])


def test_one_forward_pass_serves_every_name():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=2, d_state=3))
    calls = []
    h = m.backbone.layers[0].register_forward_pre_hook(lambda mod, args: calls.append(1))
    got = capture(m, torch.arange(9) % 17, NAMES, channels=[0])
    assert len(calls) == 1 and set(got) == set(NAMES)
    capture(m, torch.arange(9) % 17, ["resid_pre"])
    h.remove()
    assert len(calls) == 2


@pytest.mark.parametrize("names", [["ssm_input", "resid_post"], ["resid_pre"]])
def test_capture_stops_before_the_output_head(names):
    """The head is a fifth of a 130M model's CPU forward and nothing captured needs it: it never runs, and the
    model is left as it was (the next forward runs it and returns logits)."""
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=2, d_state=3))
    calls = []
    m.lm_head.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 17, (9,))
    got = capture(m, ids, names)
    assert calls == [] and all(len(got[n]) == 2 for n in names)
    assert m(ids[None]).shape == (1, 9, 17) and calls == [1]


@pytest.mark.parametrize("L,K,bias", [(37, 4, True), (3, 4, False), (1, 2, True)])
def test_the_captures_causal_conv_equals_torchs_conv1d(L, K, bias):
    """The scan inputs' convolution (shifted multiply-adds, since torch's float64 conv1d crawls on a CPU)
    against F.conv1d with causal padding, in float64, including L < K."""
    import torch.nn.functional as F

    from mambadyn.probe.attention import causal_depthwise_conv

    g = torch.Generator().manual_seed(L * K)
    x, w = torch.randn(5, L, generator=g, dtype=torch.float64), torch.randn(5, K, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    want = F.conv1d(x[None], w[:, None], b, padding=K - 1, groups=5)[0, :, :L]
    torch.testing.assert_close(causal_depthwise_conv(x, w, b), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("family", ["mambadyn", "mamba2"])
def test_a_float32_capture_is_the_float64_one_rounded(family):
    """dtype=torch.float32 (half the memory) gives every scan quantity within float32 rounding of the float64
    capture, for a mambadyn model and a transformers family; other dtypes are refused."""
    if family == "mambadyn":
        torch.manual_seed(0)
        model, ids = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=2, d_state=3)), torch.arange(23) % 17
    else:
        pytest.importorskip("transformers")
        from tests.support.families import tiny_model

        model, ids = tiny_model("mamba2"), torch.arange(23) % 40
    names = ["ssm_input", "ssm_dt", "ssm_B", "ssm_C", "ssm_output", "ssm_state"]
    hi, lo = capture(model, ids, names), capture(model, ids, names, dtype=torch.float32)
    for n in names:
        for k, t in hi[n].items():
            assert t.dtype == torch.float64 and lo[n][k].dtype == torch.float32, n
            torch.testing.assert_close(lo[n][k].double(), t, rtol=1e-4, atol=1e-5, msg=f"{family} {n} layer {k}")
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        capture(model, ids, names, dtype=torch.float16)
