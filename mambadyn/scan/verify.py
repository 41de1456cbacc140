"""Check a scan backend against the float64 reference on fresh random inputs, forward and backward.

Used by the test suite (CPU, Triton's interpreter, CUDA) and by ``benchmarks/check_triton.py`` on a
GPU machine. Inputs are drawn in the backend's dtype, then the reference runs in float64 on those
exact (rounded) values, so the error measured is the backend's alone. Errors are relative to the
largest magnitude of each reference tensor (floored at SCALE_FLOOR).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .api import selective_scan
from .reference import selective_scan_ref

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
# the worst relative error accepted for each input dtype (outputs and gradients)
TOLERANCE = {torch.float32: 2e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
# errors are relative to max(|reference|, SCALE_FLOOR): a gradient that is exactly zero in the
# reference (dA at L = 1) is compared in absolute terms
SCALE_FLOOR = 1e-3


@dataclass
class Case:
    batch: int
    d: int
    L: int
    n: int
    dtype: str = "float32"
    has_z: bool = True
    has_D: bool = True
    has_bias: bool = True
    softplus: bool = True
    initial_state: bool = False
    last_state: bool = False
    forward_only: bool = False  # under no_grad: what inference runs (the Triton scan tunes it apart)


def make_inputs(case: Case, device, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Random scan inputs shaped as ``selective_scan`` wants, in ``case.dtype`` (A, D, bias float32)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dt = getattr(torch, case.dtype)
    b, d, L, n = case.batch, case.d, case.L, case.n

    def r(*shape, scale=1.0, shift=0.0, dtype=dt):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)

    delta = r(b, d, L, scale=0.5, shift=-1.0)
    if not case.softplus:  # a raw Δ must be positive, or exp(ΔA) > 1 and the state overflows
        delta = torch.nn.functional.softplus(delta.float()).to(dt)
    return {
        "u": r(b, d, L), "delta": delta,
        "A": -torch.exp(r(d, n, scale=0.5, dtype=torch.float32)),
        "B": r(b, n, L), "C": r(b, n, L),
        "D": r(d, dtype=torch.float32) if case.has_D else None,
        "z": r(b, d, L) if case.has_z else None,
        "delta_bias": r(d, scale=0.1, dtype=torch.float32) if case.has_bias else None,
        "initial_state": r(b, d, n, dtype=torch.float32) if case.initial_state else None,
    }


def _run(fn_backend, inputs, case, out_grad, last_grad):
    xs = {k: (None if v is None else v.detach().clone().requires_grad_(True)) for k, v in inputs.items()}
    kw = dict(D=xs["D"], z=xs["z"], delta_bias=xs["delta_bias"], delta_softplus=case.softplus,
              return_last_state=True)
    if xs["initial_state"] is not None:
        kw["initial_state"] = xs["initial_state"]
    if case.forward_only:
        with torch.no_grad():
            out, last = fn_backend(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], **kw)
        return out, last, {}
    out, last = fn_backend(xs["u"], xs["delta"], xs["A"], xs["B"], xs["C"], **kw)
    loss = (out.double() * out_grad).sum()
    if case.last_state:
        loss = loss + (last.double() * last_grad).sum()
    present = [k for k in GRAD_NAMES if xs[k] is not None]
    grads = torch.autograd.grad(loss, [xs[k] for k in present])
    return out, last, dict(zip(present, grads))


def compare_with_reference(backend: str, case: Case, device="cpu", seed: int = 0, **backend_options) -> dict:
    """Max relative error of ``backend`` against the float64 reference: out, last state, every gradient.

    Returns {"case": ..., "errors": {name: rel_err}, "tolerance": tol, "nonfinite": [names]}.
    """
    inputs = make_inputs(case, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    out_grad = torch.randn(case.batch, case.d, case.L, generator=g, dtype=torch.float64).to(device)
    last_grad = torch.randn(case.batch, case.d, case.n, generator=g, dtype=torch.float64).to(device)

    def ours(*args, **kw):
        return selective_scan(*args, backend=backend, **kw, **backend_options)

    ref_in = {k: (None if v is None else v.double()) for k, v in inputs.items()}
    r_out, r_last, r_grads = _run(selective_scan_ref, ref_in, case, out_grad, last_grad)
    o_out, o_last, o_grads = _run(ours, inputs, case, out_grad, last_grad)
    pairs = {"out": (o_out, r_out), "last_state": (o_last, r_last)}
    pairs.update({f"d{k}": (o_grads[k], r_grads[k]) for k in r_grads})
    errors, nonfinite = {}, []
    for name, (a, b) in pairs.items():
        if not torch.isfinite(a).all():
            nonfinite.append(name)
        errors[name] = ((a.double() - b).abs().max() / b.abs().max().clamp_min(SCALE_FLOOR)).item()
    return {"case": asdict(case), "errors": errors, "tolerance": TOLERANCE[getattr(torch, case.dtype)],
            "nonfinite": nonfinite}
