"""The Triton selective scan, registered as backend ``"triton"``: launches the kernels
(``triton_kernels``) with the launch shapes of ``triton_tuning``, and the autograd function around them.
Inputs may be float32, bfloat16 or float16; the state and all arithmetic are float32. float64 inputs
are left to the PyTorch backends."""

from __future__ import annotations

import os

import torch
import triton

from .registry import register_backend
from .triton_kernels import _bwd_kernel, _fwd_kernel
from .triton_tuning import Tuning, _bwd_meta, _fwd_meta, _sm_count, _tunings


def _as(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # a same-dtype .to() still costs a dispatch, several per backward call
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


def _forward(u, delta, A, B, C, D, z, bias, h0, softplus: bool, fwd: Tuning, bwd: Tuning, save_states: bool):
    """Launch the forward kernel. Returns out (batch, d, L), the last state (batch, d, n), and what
    the backward reads if ``save_states`` (else None): the contiguous inputs, then the states at the
    backward's chunk starts (n_chunks, batch, d, n)."""
    # one set of strides serves u, delta, z, out (and B, C): everything goes in contiguous
    u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
    D, z, bias = (None if t is None else t.contiguous() for t in (D, z, bias))
    batch, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u)
    states = torch.empty(triton.cdiv(L, bwd.chunk), batch, d, n, device=u.device, dtype=torch.float32) \
        if save_states else out
    last = torch.empty(batch, d, n, device=u.device, dtype=torch.float32)
    h0c = None if h0 is None else h0.float().contiguous()
    grid = (batch, triton.cdiv(d, fwd.block_d))
    _fwd_kernel[grid](
        u, delta, A, B, C, D, z, bias, h0c, out, states, last, d, n, L,
        u.stride(0), u.stride(1), B.stride(0), B.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_H0=h0 is not None,
        SOFTPLUS=softplus, **_fwd_meta(fwd, bwd, u.element_size(), n, save_states),
    )
    saved = (u, delta, A, B, C, D, z, bias, h0, states) if save_states else None
    return out, last, saved


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, bias, h0, softplus, fwd, bwd):
        need_grad = any(ctx.needs_input_grad)
        out, last, saved = _forward(u, delta, A, B, C, D, z, bias, h0, softplus, fwd, bwd, need_grad)
        if need_grad:
            ctx.save_for_backward(*saved)
            ctx.softplus, ctx.tuning = softplus, bwd
        # an unused output's gradient arrives as None rather than a zero tensor made and filled for it
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, bias, h0, states = ctx.saved_tensors
        batch, d, L = u.shape
        n = A.shape[1]
        dout = torch.zeros_like(u) if dout is None else dout.contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        f32 = dict(device=u.device, dtype=torch.float32)
        # the atomically summed gradients start at zero; one buffer, because each allocation and fill
        # costs CPU time that a short sequence's kernels do not hide
        sums = torch.zeros(d * n + 2 * batch * n * L + 2 * d, **f32)
        dA, dB, dC, dD, dbias = sums.split([d * n, batch * n * L, batch * n * L, d, d])
        dA, dB, dC = dA.view(d, n), dB.view(batch, n, L), dC.view(batch, n, L)
        dD = dD if D is not None else None
        dbias = dbias if bias is not None else None
        g0 = torch.empty(batch, d, n, **f32)
        dlast = None if dlast is None else dlast.float().contiguous()
        bwd = ctx.tuning
        grid = (batch, triton.cdiv(d, bwd.block_d))
        _bwd_kernel[grid](
            u, delta, A, B, C, D, z, bias, states, dout, dlast,
            du, ddelta, dz, dA, dB, dC, dD, dbias, g0, d, n, L,
            u.stride(0), u.stride(1), B.stride(0), B.stride(1),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None, HAS_DLAST=dlast is not None,
            SOFTPLUS=ctx.softplus, **_bwd_meta(bwd, u.element_size(), n),
        )
        dh0 = None
        if h0 is not None and ctx.needs_input_grad[8]:
            dl0 = delta[:, :, 0].float() + (bias.float() if bias is not None else 0.0)
            dl0 = torch.nn.functional.softplus(dl0) if ctx.softplus else dl0
            dh0 = (torch.exp(dl0[..., None] * A.float()) * g0).to(h0.dtype)
        if B.dtype == C.dtype != torch.float32:  # one conversion for both: they sit side by side in sums
            dB, dC = sums[d * n:d * n + 2 * batch * n * L].to(B.dtype).view(2, batch, n, L).unbind(0)
        return (du, ddelta, _as(dA, A), _as(dB, B), _as(dC, C), None if D is None else _as(dD, D), dz,
                None if bias is None else _as(dbias, bias), dh0, None, None, None)


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
):
    """The fused kernel, with ``selective_scan``'s contract (shapes there). The rest are tuning knobs
    (see ``Tuning``) for the forward and, with ``bwd_``, the backward kernel; None takes the tuned
    default for the input dtype (``FWD_TUNING``, ``BWD_TUNING``)."""
    sms = _sm_count(u.device.index or 0) if u.is_cuda else None
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    fwd, bwd = _tunings(u.element_size(), block_d, chunk, num_warps, bwd_block_d, bwd_chunk, bwd_num_warps,
                        rows=u.shape[0] * u.shape[1], sms=sms, need_grad=need_grad)
    softplus = bool(delta_softplus)
    if need_grad:
        out, last = _TritonScan.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, fwd, bwd)
    else:  # inference skips autograd's bookkeeping (~8 us of a short call's ~70 on the H100 host)
        out, last, _ = _forward(u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, fwd, bwd, False)
    return (out, last) if return_last_state else out


def _unusable(u: torch.Tensor) -> str | None:
    if u.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"the Triton kernel runs on CUDA tensors, these are on {u.device}"
    if u.dtype == torch.float64:
        return "float64 inputs are left to the PyTorch backends (the kernel computes in float32)"
    return None


register_backend("triton", selective_scan_triton, priority=10, unusable_reason=_unusable)
