"""The S6 mixer after in_proj as one autograd function over the Triton kernels, for training on CUDA.

    x, z = xz                                  xz: (batch, 2 d_inner, L), a view of in_proj's (2 d_inner, batch L)
    u = silu(conv(x))                          triton_conv
    (dt, B, C) = x_proj u;  Δ_raw = dt_proj dt
    y = scan(u, Δ_raw + bias, A, B, C, D) · silu(z)        triton_kernels, softplus fused
    out = out_proj y                           (batch, L, d_model)

Every tensor between the matrix products is a (batch, ·, L) view of a (·, batch L) matrix, the layout
in which each product reads and writes plainly and the kernels find time contiguous, so nothing is copied
or transposed: B and C are row slices of x_proj's output, Δ is dt_proj's output, and the backward writes
dx and dz into the two halves of one dxz buffer that in_proj's backward reads as a matrix.

Memory: the forward keeps xz, x_proj's output and the scan's chunk states. The conv output and Δ are
recomputed in the backward (one conv and one small product), and the gated output that out_proj's weight
gradient needs is written again by the scan's backward kernel, which computes it anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .triton_conv import conv_backward, conv_forward
from .triton_scan import _backward, _forward
from .triton_tuning import _sm_count, _tunings


def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    # (batch, c, L) with strides (L, batch L, 1) -> the (c, batch L) matrix it views
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _as_sequences(m: torch.Tensor, batch: int) -> torch.Tensor:
    # (c, batch L) -> (batch, c, L), a view
    return m.view(m.shape[0], batch, -1).transpose(0, 1)


class _MixerInner(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A, D, dt_bias):
        batch, two_d, L = xz.shape
        d = two_d // 2
        n = A.shape[1]
        rank = dt_proj_w.shape[1]
        if torch.is_autocast_enabled("cuda"):  # custom_fwd leaves the products to us
            dt = torch.get_autocast_dtype("cuda")
            x_proj_w, dt_proj_w, out_proj_w = (w.to(dt) for w in (x_proj_w, dt_proj_w, out_proj_w))
            out_proj_b = None if out_proj_b is None else out_proj_b.to(dt)
        x, z = xz[:, :d], xz[:, d:]
        u = _as_sequences(torch.empty(d, batch * L, device=xz.device, dtype=xz.dtype), batch)
        conv_forward(x, conv_w, conv_b, out=u)
        x_dbl = x_proj_w @ _as_matrix(u)                       # (rank + 2n, batch L)
        delta = _as_sequences(dt_proj_w @ x_dbl[:rank], batch)  # (batch, d, L)
        B = _as_sequences(x_dbl[rank:rank + n], batch)
        C = _as_sequences(x_dbl[rank + n:], batch)
        need_grad = any(ctx.needs_input_grad)
        fwd, bwd = _tuning(xz, need_grad)
        y, _, saved = _forward(u, delta, A, B, C, D, z, dt_bias, None, True, fwd, bwd, need_grad)
        out = F.linear(_as_matrix(y).t(), out_proj_w, out_proj_b)  # (batch L, d_model)
        if need_grad:
            ctx.save_for_backward(xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A, D, dt_bias,
                                  saved[-1])
            ctx.tuning, ctx.has_out_b = bwd, out_proj_b is not None
        return out.view(batch, L, -1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A, D, dt_bias, states = ctx.saved_tensors
        batch, two_d, L = xz.shape
        d = two_d // 2
        n = A.shape[1]
        rank = dt_proj_w.shape[1]
        x, z = xz[:, :d], xz[:, d:]
        dout = dout.reshape(batch * L, -1)
        # recomputed rather than kept (see the module's docstring)
        u = _as_sequences(torch.empty(d, batch * L, device=xz.device, dtype=xz.dtype), batch)
        conv_forward(x, conv_w, conv_b, out=u)
        delta = _as_sequences(dt_proj_w @ x_dbl[:rank], batch)
        B = _as_sequences(x_dbl[rank:rank + n], batch)
        C = _as_sequences(x_dbl[rank + n:], batch)
        dy = _as_sequences(out_proj_w.t() @ dout.t(), batch)  # (batch, d, L)
        dxz = torch.empty_like(xz)
        dx, dz = dxz[:, :d], dxz[:, d:]
        y_gated = torch.empty_like(u)
        du, ddelta, dA, dB, dC, dD, _, dbias, _ = _backward(
            dy, None, u, delta, A, B, C, D, z, dt_bias, states, True, ctx.tuning, dz=dz, out_z=y_gated)
        d_out_w = dout.t() @ _as_matrix(y_gated).t()
        d_out_b = dout.sum(0) if ctx.has_out_b else None
        dd = _as_matrix(ddelta)                                     # (d, batch L)
        d_dt_w = dd @ x_dbl[:rank].t()
        dx_dbl = torch.empty_like(x_dbl)
        torch.mm(dt_proj_w.t(), dd, out=dx_dbl[:rank])
        dx_dbl[rank:rank + n].copy_(_as_matrix(dB))
        dx_dbl[rank + n:].copy_(_as_matrix(dC))
        d_x_proj_w = dx_dbl @ _as_matrix(u).t()
        du_m = _as_matrix(du)
        du_m.addmm_(x_proj_w.t(), dx_dbl)                          # u feeds x_proj as well as the scan
        _, dw, db = conv_backward(x, conv_w, conv_b, du, dx=dx)
        return (dxz, dw.to(conv_w.dtype), None if db is None else db.to(conv_b.dtype), d_x_proj_w, d_dt_w,
                d_out_w, d_out_b, dA, dD, dbias)


def _tuning(xz: torch.Tensor, need_grad: bool):
    sms = _sm_count(xz.device.index or 0) if xz.is_cuda else None
    return _tunings(xz.element_size(), rows=xz.shape[0] * xz.shape[1] // 2, sms=sms, need_grad=need_grad)


def mixer_inner(xz: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                out_proj_bias: torch.Tensor | None, A: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor
                ) -> torch.Tensor:
    """xz (batch, 2 d_inner, L), time contiguous (best: in_proj's (2 d_inner, batch L) output viewed so);
    conv_weight (d_inner, K); conv_bias, D, dt_bias (d_inner,); x_proj_weight (dt_rank + 2n, d_inner);
    dt_proj_weight (d_inner, dt_rank); out_proj_weight (d_model, d_inner); A (d_inner, n) float32
    -> (batch, L, d_model). Differentiable in every tensor argument."""
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz must have shape (batch, 2 d_inner, L), got {tuple(xz.shape)}")
    xz = _as_sequences(_as_matrix(xz), xz.shape[0])  # a view where xz already has that layout, else one copy
    return _MixerInner.apply(xz, conv_weight.reshape(conv_weight.shape[0], -1).contiguous(), conv_bias,
                             x_proj_weight, dt_proj_weight, out_proj_weight, out_proj_bias, A, D, dt_bias)
