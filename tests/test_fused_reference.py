"""The fused room's reference (``fused.mixer.mixer_inner_ref``) is the mixer's per-op computation, and the
settings mean one thing each (issue 33, items 1-2). Runs on CPU; the fused kernels themselves are held to
the per-op model in tests/test_triton_mixer.py."""

import pytest
import torch

from mambadyn import fused
from mambadyn.fused.mixer import mixer_inner_ref
from mambadyn.nn import MambaConfig, MambaLM


def test_the_reference_composition_is_the_per_op_mixer_in_float64():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=11, d_model=10, n_layer=1, d_state=3, bias=True)).double()
    mixer = m.backbone.layers[0].mixer
    h = torch.randn(2, 13, 10, dtype=torch.float64, requires_grad=True)
    xz = mixer.in_proj(h).transpose(1, 2)
    got = mixer_inner_ref(xz, mixer.conv1d.weight, mixer.conv1d.bias, mixer.x_proj.weight, mixer.dt_proj.weight,
                          mixer.out_proj.weight, mixer.out_proj.bias, mixer.A_log, mixer.D, mixer.dt_proj.bias)
    want = mixer(h)
    # the per-op mixer forms A, D and Δ's bias in float32 (as the kernels read them), hence not 1e-15
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    g1 = torch.autograd.grad(got.sum(), [h, mixer.A_log])
    g2 = torch.autograd.grad(want.sum(), [h, mixer.A_log])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_fused_and_scan_backend_are_two_settings():
    t = torch.zeros(1)
    assert fused.usable(t) == (fused.unusable_reason(t) is None)
    m = MambaLM(MambaConfig(vocab_size=11, d_model=8, n_layer=1, d_state=2, scan_backend="chunked"))
    mixer = m.backbone.layers[0].mixer
    if not fused.usable(t):  # CPU without the interpreter: the per-op path, whatever fused says
        assert not mixer.uses_fused_kernels(t)
    else:
        with pytest.raises(ValueError, match="set fused=False"):
            mixer.uses_fused_kernels(t)
    mixer.fused = False
    assert not mixer.uses_fused_kernels(t)
