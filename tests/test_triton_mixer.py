"""The fused training path (``fused.mixer`` for the mixer, ``triton_norm`` between blocks) against the
per-op model with the float64 reference scan: logits and every parameter's gradient, in Triton's
interpreter on CPU (a subprocess) and compiled on CUDA. Odd sizes: d_inner not a multiple of any block,
n not a power of two, L not a multiple of a chunk (and one case where everything is aligned); with and
without biases; float32 and bfloat16."""

import pytest
import torch

pytest.importorskip("triton")

from tests.support.triton_interpret import run_script

SCRIPT = "mixer"


def _check(interpret: bool):
    got = run_script(SCRIPT, interpret)
    assert all(got["fused"].values()), got["fused"]  # the fused path ran, not the per-op one
    worst = got["worst"]
    for k, v in worst.items():
        if k.startswith("fused-float32"):
            assert v < 2e-4, (k, v, worst)
        elif k.startswith("fused-"):  # bfloat16: within twice the per-op path's error (or 1%)
            assert v < max(2 * worst[k.replace("fused-", "plain-")], 1e-2), (k, v, worst)
        if "bfloat16" in k:  # and both near the float64 reference (0.01-0.03 measured; both share the scan)
            assert v < 0.08, (k, v, worst)


def test_fused_model_matches_the_reference_in_the_interpreter():
    _check(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need CUDA")
def test_fused_model_matches_the_reference_on_cuda():
    _check(interpret=False)


def test_fused_path_is_off_where_it_cannot_run():
    from mambadyn.nn import MambaConfig, MambaLM

    m = MambaLM(MambaConfig(vocab_size=11, d_model=8, n_layer=1, d_state=2))
    mixer = m.backbone.layers[0].mixer
    assert not mixer.uses_fused_kernels(torch.zeros(1, dtype=torch.float64))
    mixer.fused = False
    assert not mixer.uses_fused_kernels(torch.zeros(1))


def test_the_fused_layer_records_no_more_than_its_products_and_functions(monkeypatch):
    # the eager step is CPU-bound: every op autograd records is a dispatch forward and a node backward. A_log,
    # D and Δ's bias reach the mixer's function as the parameters themselves (A = -exp(A_log) is formed in
    # the kernels), xz as in_proj's product viewed once, and the add+norm takes its (rows, D) views inside its
    # function. The graph's shape needs no kernel to run: they are stubbed, and the interpreter flag only makes
    # the Triton backend accept CPU tensors
    import mambadyn.fused.conv as tc
    import mambadyn.fused.norm as tn
    import mambadyn.scan.triton_scan as ts
    from tests.support.stubs import NoKernel
    from mambadyn.nn import MambaConfig, MambaLM

    for mod, names in ((ts, ["fwd_kernel", "bwd_kernel"]),
                       (tc, ["_conv_silu_fwd", "_conv_silu_bwd_grad", "_conv_silu_bwd_dx"]),
                       (tn, ["_rms_norm_add_fwd", "_rms_norm_add_bwd"])):
        for name in names:
            monkeypatch.setattr(mod, name, NoKernel())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = MambaLM(MambaConfig(vocab_size=11, d_model=8, n_layer=2, d_state=4))
    mixer = m.backbone.layers[0].mixer
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    assert mixer.uses_fused_kernels(hidden)
    fn = mixer(hidden).grad_fn
    assert type(fn).__name__ == "MixerInnerBackward"
    inputs = [f for f, _ in fn.next_functions]
    leaves = [f.variable for f in inputs if type(f).__name__ == "AccumulateGrad"]
    for name, p in (("A_log", mixer.A_log), ("D", mixer.D), ("dt_bias", mixer.dt_proj.bias)):
        assert any(v is p for v in leaves), f"{name} reaches the mixer through recorded ops"
    chain, f = [], inputs[0]
    while f is not None and type(f).__name__ != "MmBackward0":
        chain.append(type(f).__name__)
        f = f.next_functions[0][0]
    assert chain == ["TransposeBackward0", "ViewBackward0"], chain
    y, r = tn.rms_norm_add(torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8, requires_grad=True),
                           torch.ones(8, requires_grad=True))
    assert type(y.grad_fn).__name__ == "RmsNormAddBackward" and y.grad_fn is r.grad_fn


COMPILE_SCRIPT = "mixer_compile"


def _compile_check(interpret: bool):
    r = run_script(COMPILE_SCRIPT, interpret)
    assert r["breaks"] == 0 and r["graphs"] == 1, r
    assert r["err"] < 1e-5, r  # compiled (custom ops) and eager (autograd functions) launch the same kernels


def test_torch_compile_takes_the_fused_path_without_graph_breaks_in_the_interpreter():
    """Under torch.compile the fused mixer and add+norm are custom ops with fake implementations: one graph,
    no break, the eager model's outputs and gradients; opcheck checks the ops' fakes and autograd."""
    _compile_check(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need CUDA")
def test_torch_compile_takes_the_fused_path_without_graph_breaks_on_cuda():
    _compile_check(interpret=False)
