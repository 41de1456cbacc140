"""Selective scan: every backend against the float64 reference, forward and backward; bad input."""

import pytest
import torch

from mambadyn.scan import available_backends, selective_scan, selective_scan_chunked, selective_scan_ref

CPU_BACKENDS = [b for b in available_backends() if b != "triton"]


def make(batch, d, L, n, dtype=torch.float32, seed=None, grad=True):
    g = torch.Generator().manual_seed(seed if seed is not None else torch.randint(0, 2**31, ()).item())
    r = lambda *s, scale=1.0, shift=0.0: (torch.randn(*s, generator=g) * scale + shift).to(dtype)  # noqa: E731
    xs = dict(
        u=r(batch, d, L), delta=r(batch, d, L, scale=0.5, shift=-0.5), A=-torch.exp(r(d, n, scale=0.5)),
        B=r(batch, n, L), C=r(batch, n, L), D=r(d), z=r(batch, d, L), delta_bias=r(d, scale=0.1),
    )
    if grad:
        for v in xs.values():
            v.requires_grad_(True)
    return xs


def run(backend, xs, softplus=True, with_z=True, **kw):
    args = dict(xs)
    if not with_z:
        args.pop("z")
    return selective_scan(**args, delta_softplus=softplus, return_last_state=True, backend=backend, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 5, 37, 4), (3, 8, 64, 16), (1, 4, 129, 8)])
@pytest.mark.parametrize("with_z", [True, False])
def test_matches_float64_reference_forward_and_backward(backend, shape, with_z):
    xs32 = make(*shape)
    xs64 = {k: v.detach().double().requires_grad_(True) for k, v in xs32.items()}
    y, h = run(backend, xs32, with_z=with_z)
    y_ref, h_ref = run("reference", xs64, with_z=with_z)
    assert y.dtype == torch.float32 and y.shape == shape[:2] + (shape[2],)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-4)
    w = torch.randn_like(y_ref)
    names = [k for k in xs32 if with_z or k != "z"]
    g32 = torch.autograd.grad((y * w.float()).sum() + h.pow(2).sum(), [xs32[k] for k in names])
    g64 = torch.autograd.grad((y_ref * w).sum() + h_ref.pow(2).sum(), [xs64[k] for k in names])
    for name, a, b in zip(names, g32, g64):
        err = (a.double() - b).norm() / b.norm().clamp_min(1e-12)
        assert err < 1e-4, f"{backend}: grad of {name} rel err {err:.2e}"


@pytest.mark.parametrize("chunk", [1, 3, 16, 1000])
def test_chunked_any_chunk_size_float64_exact(chunk):
    xs = make(2, 3, 50, 5, dtype=torch.float64)
    y, h = selective_scan_chunked(**xs, delta_softplus=True, return_last_state=True, chunk=chunk)
    y_ref, h_ref = selective_scan_ref(**xs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)


def test_chunked_gradcheck_float64():
    xs = make(1, 2, 7, 3, dtype=torch.float64, seed=3)
    names = list(xs)

    def f(*vals):
        out = selective_scan_chunked(**dict(zip(names, vals)), delta_softplus=True, return_last_state=True, chunk=3)
        return out

    assert torch.autograd.gradcheck(f, tuple(xs[k] for k in names), eps=1e-6, atol=1e-6)


def test_initial_state_continues_a_scan():
    xs = make(2, 3, 40, 4, dtype=torch.float64, grad=False)
    y_full, h_full = selective_scan_ref(**xs, delta_softplus=True, return_last_state=True)
    first = {k: (v[..., :25] if v.dim() == 3 else v) for k, v in xs.items()}
    second = {k: (v[..., 25:] if v.dim() == 3 else v) for k, v in xs.items()}
    _, h1 = selective_scan_chunked(**first, delta_softplus=True, return_last_state=True)
    y2, h2 = selective_scan_chunked(**second, delta_softplus=True, return_last_state=True, initial_state=h1)
    torch.testing.assert_close(y2, y_full[..., 25:])
    torch.testing.assert_close(h2, h_full)


@pytest.mark.parametrize("backend", ["reference", "chunked", "numba"])
def test_the_door_takes_initial_state_by_name(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend} is not available here")
    xs = make(2, 3, 30, 4, dtype=torch.float64, grad=False)
    y_full, h_full = selective_scan_ref(**xs, delta_softplus=True, return_last_state=True)
    first = {k: (v[..., :12] if v.dim() == 3 else v) for k, v in xs.items()}
    second = {k: (v[..., 12:] if v.dim() == 3 else v) for k, v in xs.items()}
    _, h1 = selective_scan(**first, delta_softplus=True, return_last_state=True, backend=backend)
    y2, h2 = selective_scan(**second, delta_softplus=True, return_last_state=True, initial_state=h1, backend=backend)
    torch.testing.assert_close(y2, y_full[..., 12:])
    torch.testing.assert_close(h2, h_full)
    with pytest.raises(ValueError, match="initial_state must have shape"):
        selective_scan(**second, initial_state=h1[:, :2], backend=backend)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_keep_dtype_with_float32_state(dtype):
    xs = make(2, 4, 33, 8, grad=False)
    ref = selective_scan_ref(**xs, delta_softplus=True)
    y = selective_scan(**{k: v.to(dtype) for k, v in xs.items()}, delta_softplus=True, backend="chunked")
    assert y.dtype == dtype
    err = (y.double() - ref.double()).norm() / ref.double().norm()
    assert err < 3e-2


def test_bad_input_errors_name_the_problem():
    xs = make(2, 4, 10, 3, grad=False)
    with pytest.raises(ValueError, match=r"u must have shape \(batch, d, L\)"):
        selective_scan(**{**xs, "u": xs["u"][0]})
    with pytest.raises(ValueError, match=r"B must have shape \(batch, n, L\)"):
        selective_scan(**{**xs, "B": xs["B"][:, :2]})
    with pytest.raises(ValueError, match=r"delta must have shape"):
        selective_scan(**{**xs, "delta": xs["delta"][..., :5]})
    with pytest.raises(TypeError, match=r"C has dtype torch.int64"):
        selective_scan(**{**xs, "C": xs["C"].long()})
    with pytest.raises(ValueError, match=r"D must have shape \(d,\)"):
        selective_scan(**{**xs, "D": torch.ones(5)})
    with pytest.raises(ValueError, match="unknown scan backend 'nope'"):
        selective_scan(**xs, backend="nope")
    with pytest.raises(ValueError, match="sequence length L is 0"):
        selective_scan(**{k: (v[..., :0] if v.dim() == 3 else v) for k, v in xs.items()})


def test_chunked_is_usable_on_cpu():
    assert "chunked" in available_backends(torch.zeros(1, 1, 1))
