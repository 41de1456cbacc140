"""The Triton selective scan, registered as backend ``"triton"``: launches the kernels
(``triton_kernels``) with the launch shapes of ``triton_tuning``, and the autograd function around them.
Inputs may be float32, bfloat16 or float16; the state and all arithmetic are float32. float64 inputs
are left to the PyTorch backends."""

from __future__ import annotations

import torch

from ..kernel_op import KernelOp
from .launch import cdiv
from .layout import is_dense, is_matrix_view
from .triton_kernels import bwd_kernel, fwd_kernel
from .triton_tuning import Tuning, as_ints, bwd_meta, compiled, fwd_meta, interpreting, tunings_for


def _layouts(u, delta, z, B, C):
    """The kernels take one set of strides for u, Δ, z (and write out, du, dΔ, dz with it) and one for B and
    C, each with time contiguous. Views that already share them pass through (the fused mixer hands in
    (batch, d, L) views of (d, batch * L) matrices); anything else is made contiguous."""
    su, sB = u.stride(), B.stride()
    same = all(t is None or (t.stride() == su and t.shape == u.shape) for t in (delta, z))
    if not (same and su[-1] == 1 and is_dense(u)):
        u, delta = u.contiguous(), delta.contiguous()
        z = None if z is None else z.contiguous()
    if not (C.stride() == sB and sB[-1] == 1 and is_dense(B)):
        B, C = B.contiguous(), C.contiguous()
    return u, delta, z, B, C


def scan_forward(u, delta, A, B, C, D, z, bias, h0, softplus: bool, fwd: Tuning, bwd: Tuning, save_states: bool,
             a_log: bool = False):
    """Launch the forward kernel. Returns out (batch, d, L) with u's layout, the last state (batch, d, n),
    and what the backward reads if ``save_states`` (else None): the inputs as launched, then the states at
    the backward's chunk starts (n_chunks, batch, d, n). With ``a_log``, A holds A_log (A = -exp(A_log))."""
    u, delta, z, B, C = _layouts(u, delta, z, B, C)
    A = A.contiguous()
    D, bias = (None if t is None else t.contiguous() for t in (D, bias))
    batch, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u)  # empty_like keeps a dense tensor's strides
    states = torch.empty(cdiv(L, bwd.chunk), batch, d, n, device=u.device, dtype=torch.float32) \
        if save_states else out
    last = torch.empty(batch, d, n, device=u.device, dtype=torch.float32)
    h0c = None if h0 is None else h0.float().contiguous()
    grid = (batch, cdiv(d, fwd.block_d))
    su, sB = u.stride(), B.stride()
    fwd_kernel[grid](
        u, delta, A, B, C, D, z, bias, h0c, out, states, last, d, n, L, su[0], su[1], sB[0], sB[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=softplus, A_LOG=a_log, **fwd_meta(fwd, bwd, u.element_size(), n, save_states, compiled(u)),
    )
    saved = (u, delta, A, B, C, D, z, bias, h0, states) if save_states else None
    return out, last, saved


def scan_backward(dout, dlast, u, delta, A, B, C, D, z, bias, states, softplus: bool, bwd: Tuning,
              du=None, dz=None, out_z=None, dBC=None, a_log: bool = False):
    """Launch the backward kernel on the inputs as the forward launched them, and its saved states.
    Returns du, ddelta, dA, dB, dC, dD, dz, dbias (None where the input was None; du, ddelta, dz in u's
    dtype and strides, the rest float32, dB and dC with B's strides, or in dBC's dtype where given) and g0,
    the state gradient before the first step (float32). ``du`` and ``dz``, if given, are written into (a
    fused caller's slices of one buffer); with ``out_z`` given, the gated output out · silu(z) is recomputed
    into it. ``dBC``, a (2n, batch L) matrix where B and C view (n, batch L) matrices, receives dB over dC in
    its dtype (one conversion, no copy after); dB and dC are then views of it. With ``a_log``, A holds A_log
    and dA is its gradient."""
    batch, d, L = u.shape
    n = A.shape[1]
    su = u.stride()
    dout = torch.zeros_like(u) if dout is None else dout
    if dout.stride() != su:
        dout = dout.contiguous() if u.is_contiguous() else torch.empty_like(u).copy_(dout)
    du = torch.empty_like(u) if du is None else du
    ddelta = torch.empty_like(delta)
    dz = (torch.empty_like(z) if dz is None else dz) if z is not None else None
    for name, t in (("du", du), ("dz", dz), ("out_z", out_z)):
        if t is not None and t.stride() != su:
            raise ValueError(f"{name} must have u's strides {su}, got {t.stride()}")
    f32 = dict(device=u.device, dtype=torch.float32)
    # the atomically summed gradients start at zero; one buffer (dB, dC, dA, dD, dbias) and views of it by
    # as_strided alone, because each allocation, fill and view op costs CPU time that a short sequence's
    # kernels do not hide (benchmarks/scan_gpu_call.py)
    bnL = batch * n * L
    sums = torch.zeros(2 * bnL + d * n + 2 * d, **f32)
    sB = B.stride()
    dB, dC = sums.as_strided(B.shape, sB, 0), sums.as_strided(B.shape, sB, bnL)  # with B's strides
    dA = sums.as_strided((d, n), (n, 1), 2 * bnL)
    dD = sums.as_strided((d,), (1,), 2 * bnL + d * n) if D is not None else None
    dbias = sums.as_strided((d,), (1,), 2 * bnL + d * n + d) if bias is not None else None
    g0 = torch.empty(batch, d, n, **f32)
    dlast = None if dlast is None else dlast.float().contiguous()
    grid = (batch, cdiv(d, bwd.block_d))
    bwd_kernel[grid](
        u, delta, A, B, C, D, z, bias, states, dout, dlast,
        du, ddelta, dz, dA, dB, dC, dD, dbias, g0, out_z, d, n, L,
        su[0], su[1], sB[0], sB[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_DLAST=dlast is not None,
        SOFTPLUS=softplus, A_LOG=a_log, **bwd_meta(bwd, u.element_size(), n, compiled(u),
                                       store_outz=out_z is not None and z is not None,
                                       aligned=_aligned((L, su[0], su[1], sB[0], sB[1]),
                                                        (u, delta, B, C, z, dout, du, ddelta, dz, out_z, dB, dC))),
    )
    if dBC is not None:  # dB over dC, side by side in sums: converted once, into the caller's buffer
        if not is_matrix_view(B) or tuple(dBC.shape) != (2 * n, batch * L):
            raise ValueError(f"dBC needs B as a view of an (n, batch L) matrix and shape {(2 * n, batch * L)}")
        both = dBC.view(-1).copy_(sums.narrow(0, 0, 2 * bnL))
        dB, dC = both.as_strided(B.shape, sB, 0), both.as_strided(B.shape, sB, bnL)
    # float32 gradients of 16-bit inputs are cast by autograd as they leave (in C++, cheaper than here)
    return du, ddelta, dA, dB, dC, dD, dz, dbias, g0


def _aligned(ints, tensors) -> bool:
    # what Triton specializes a launch on: 16-byte-aligned pointers, integers that are multiples of 16
    return all(i % 16 == 0 for i in ints) and all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


def _initial_state_grad(g0, delta, A, bias, h0, softplus: bool):
    # the state before step 0 reaches step 0's state through its decay exp(Δ_0 A)
    dl0 = delta[:, :, 0].float() + (bias.float() if bias is not None else 0.0)
    dl0 = torch.nn.functional.softplus(dl0) if softplus else dl0
    return (torch.exp(dl0[..., None] * A.float()) * g0).to(h0.dtype)


def _tuning(t) -> Tuning:
    # eager calls hand the Tuning through; the custom op's schema carries it as a list of ints
    return t if isinstance(t, Tuning) else Tuning(*t)


def _forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None, z: torch.Tensor | None, bias: torch.Tensor | None, h0: torch.Tensor | None,
             softplus: bool, fwd: list[int], bwd: list[int], save: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> out (batch, d, L), the last state (batch, d, n) float32, the states the backward starts its chunks
    from (n_chunks, batch, d, n) float32 (empty without ``save``)."""
    out, last, saved = scan_forward(u, delta, A, B, C, D, z, bias, h0, softplus, _tuning(fwd), _tuning(bwd), save)
    return out, last, saved[-1] if save else last.new_empty(0)


def _forward_fake(u, delta, A, B, C, D, z, bias, h0, softplus, fwd, bwd, save):
    u, *_ = _layouts(u, delta, z, B, C)  # strides only: the fake's out has the real one's layout
    batch, d, L = u.shape
    n = A.shape[1]
    f32 = dict(device=u.device, dtype=torch.float32)
    states = u.new_empty(cdiv(L, bwd[1]), batch, d, n, **f32) if save else u.new_empty(0, **f32)
    return torch.empty_like(u), u.new_empty(batch, d, n, **f32), states


def _save(inputs, outputs):
    u, delta, A, B, C, D, z, bias, h0, softplus, _fwd, bwd, _save = inputs
    return (u, delta, A, B, C, D, z, bias, h0, outputs[2]), (softplus, bwd)


def _cast(g, like):
    return g if g is None or g.dtype == like.dtype else g.to(like.dtype)


def _launched(u, delta, A, B, C, D, z, bias):
    # the inputs as scan_forward launched them (the backward kernel reads them in the same layout)
    u, delta, z, B, C = _layouts(u, delta, z, B, C)
    return (u, delta, A.contiguous(), B, C, *(None if t is None else t.contiguous() for t in (D, z, bias)))


def _backward(dout: torch.Tensor | None, dlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor,
              A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
              bias: torch.Tensor | None, h0: torch.Tensor | None, states: torch.Tensor, softplus: bool,
              bwd: list[int]) -> list[torch.Tensor | None]:
    """-> du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, each in its input's dtype (None where it is None)."""
    if states.numel() == 0:
        raise RuntimeError("the Triton scan ran without saving states (no grad was needed then)")
    inputs = (u, delta, A, B, C, D, z, bias)
    *grads, g0 = scan_backward(dout, dlast, *_launched(*inputs), states, softplus, _tuning(bwd))
    dh0 = None if h0 is None else _initial_state_grad(g0, delta, A, bias, h0, softplus)
    return [_cast(g, t) for g, t in zip(grads, inputs)] + [dh0]


def _backward_fake(dout, dlast, u, delta, A, B, C, D, z, bias, h0, states, softplus, bwd):
    launched = _launched(u, delta, A, B, C, D, z, bias)
    grads = [u.new_empty(0) if t is None else torch.empty_like(t, dtype=like.dtype)
             for t, like in zip(launched, (u, delta, A, B, C, D, z, bias))]
    return grads + [u.new_empty(0) if h0 is None else torch.empty_like(h0)]


_SCAN = KernelOp("mambadyn::triton_scan", forward=_forward, forward_fake=_forward_fake, save=_save,
                 backward=_backward, backward_fake=_backward_fake, n_outputs=2)


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    block_d: int | None = None,
    chunk: int | None = None,
    num_warps: int | None = None,
    bwd_block_d: int | None = None,
    bwd_chunk: int | None = None,
    bwd_num_warps: int | None = None,
    bwd_g_in_memory: bool | None = None,
    wide: bool | None = None,
    maxnreg: int | None = None,
    bwd_maxnreg: int | None = None,
    bwd_flip_runs: bool | None = None,
):
    """The fused kernel, with ``selective_scan``'s contract (shapes there). The rest are tuning knobs
    (see ``Tuning``) for the forward and, with ``bwd_``, the backward kernel; None takes the tuned
    default for the input dtype (``FWD_TUNING``, ``BWD_TUNING``)."""
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    fwd, bwd = tunings_for(u, u.shape[0] * u.shape[1], need_grad, block_d=block_d, chunk=chunk,
                            num_warps=num_warps, bwd_block_d=bwd_block_d, bwd_chunk=bwd_chunk,
                            bwd_num_warps=bwd_num_warps, bwd_g_in_memory=bwd_g_in_memory, wide=wide, maxnreg=maxnreg,
                            bwd_maxnreg=bwd_maxnreg, bwd_flip_runs=bwd_flip_runs)
    if torch.compiler.is_compiling():
        fwd, bwd = as_ints(fwd), as_ints(bwd)
    out, last = _SCAN(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), fwd, bwd, need_grad)
    return (out, last) if return_last_state else out


def triton_unusable_reason(u: torch.Tensor) -> str | None:
    """None where the Triton scan can run on ``u``, else why not."""
    if not u.is_cuda and not interpreting():
        return f"the Triton kernel runs on CUDA tensors, these are on {u.device}"
    if u.dtype == torch.float64:
        return "float64 inputs are left to the PyTorch backends (the kernel computes in float32)"
    return None

