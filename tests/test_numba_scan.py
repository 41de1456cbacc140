"""The fused CPU scan (numba) against the float64 reference: forward and every gradient, odd shapes, an
initial state, a last-state gradient, half inputs, the inference path; auto picks it on CPU."""

import pytest
import torch

pytest.importorskip("numba")

from mambadyn.scan import available_backends, selective_scan, selective_scan_ref  # noqa: E402
from mambadyn.scan.numba_scan import SAVE  # noqa: E402
from mambadyn.scan.verify import Case, compare_with_reference  # noqa: E402

CASES = [
    Case(2, 5, 37, 4, initial_state=True, last_state=True),  # L below one saved chunk
    Case(1, 3, 2 * SAVE + 5, 7, initial_state=True, last_state=True),  # several chunks, n odd
    Case(3, 6, SAVE, 16),  # exactly one chunk
    Case(1, 3, 9, 3, has_z=False, has_D=False, has_bias=False, softplus=False),
    Case(1, 1, 1, 1),  # one step
    Case(1, 4, 50, 8, dtype="bfloat16", last_state=True),
    Case(2, 4, 70, 8, dtype="float16"),
    Case(2, 5, 33, 4, last_state=True, forward_only=True),  # no grad: nothing saved
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.batch}x{c.d}x{c.L}x{c.n}-{c.dtype}")
def test_matches_the_float64_reference(case):
    r = compare_with_reference("numba", case, seed=3)
    assert not r["nonfinite"], r
    bad = {k: v for k, v in r["errors"].items() if v > r["tolerance"]}
    assert not bad, f"{r['case']}: {bad}"


def test_float64_is_exact_in_every_gradient():
    r = compare_with_reference("numba", Case(2, 3, SAVE + 11, 5, dtype="float32", initial_state=True,
                                                last_state=True), seed=7)
    assert max(r["errors"].values()) < 2e-5
    g = torch.Generator().manual_seed(0)
    xs = dict(u=torch.randn(2, 3, 80, generator=g, dtype=torch.float64),
              delta=torch.randn(2, 3, 80, generator=g, dtype=torch.float64),
              A=-torch.rand(3, 4, generator=g, dtype=torch.float64) - 0.1,
              B=torch.randn(2, 4, 80, generator=g, dtype=torch.float64),
              C=torch.randn(2, 4, 80, generator=g, dtype=torch.float64),
              D=torch.randn(3, generator=g, dtype=torch.float64), z=torch.randn(2, 3, 80, generator=g, dtype=torch.float64),
              delta_bias=torch.randn(3, generator=g, dtype=torch.float64))
    leaves = {k: v.clone().requires_grad_(True) for k, v in xs.items()}
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a[:5], D=a[5], z=a[6], delta_bias=a[7],
                                                              delta_softplus=True, backend="numba"),
                                    tuple(leaves.values()), eps=1e-6, atol=1e-7)


def test_inference_path_equals_the_training_path():
    g = torch.Generator().manual_seed(1)
    u, dl = torch.randn(2, 8, 100, generator=g), torch.randn(2, 8, 100, generator=g)
    A, B, C = -torch.rand(8, 4, generator=g), torch.randn(2, 4, 100, generator=g), torch.randn(2, 4, 100, generator=g)
    with torch.no_grad():
        a = selective_scan(u, dl, A, B, C, delta_softplus=True, backend="numba")
    b = selective_scan(u.requires_grad_(True), dl, A, B, C, delta_softplus=True, backend="numba")
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    torch.testing.assert_close(a, selective_scan_ref(u.detach(), dl, A, B, C, delta_softplus=True), rtol=1e-4, atol=1e-5)


def test_auto_is_numba_on_cpu():
    assert available_backends(torch.zeros(1, 1, 1))[0] == "numba"


def test_torch_compile_traces_a_model_on_the_numba_scan_without_graph_breaks():
    from tests.support.compile_check import compile_and_compare
    from mambadyn.nn import MambaConfig, MambaLM

    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=20, d_model=16, n_layer=2, d_state=4, scan_backend="numba"))
    x = torch.randint(0, 20, (2, 70))
    r = compile_and_compare(m, x)
    assert r["breaks"] == 0 and r["graphs"] == 1, r["reasons"]
    assert r["err"] < 1e-5, r  # compiled equals eager, parameter gradients included
    torch.library.opcheck(torch.ops.mambadyn.numba_scan, (
        torch.randn(1, 2, 5), torch.rand(1, 2, 5), -torch.rand(2, 3), torch.randn(1, 5, 3), torch.randn(1, 5, 3),
        torch.randn(2), torch.zeros(1, 2, 3), True))


def test_the_vectorizable_exp_matches_libm_and_keeps_nan_and_inf():
    import numba
    import numpy as np

    from mambadyn.scan.numba_scan import exp_vec

    @numba.njit
    def run(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = exp_vec(x[i])
        return out

    x = np.concatenate([np.linspace(-87.0, 88.0, 200001), [-1e-30, 0.0, 1e-30]]).astype(np.float32)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(run(x) - ref) / ref) < 2e-7
    edge = run(np.array([np.nan, -np.inf, -200.0, -87.5, 89.0, np.inf], dtype=np.float32))
    assert np.isnan(edge[0]) and np.all(edge[1:4] == 0) and np.all(np.isinf(edge[4:]))
    x64 = np.linspace(-700, 700, 1001)
    np.testing.assert_allclose(run(x64), np.exp(x64), rtol=1e-15)  # float64 keeps libm's exp
