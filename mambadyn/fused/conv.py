"""The mixer's causal depthwise convolution with SiLU, fused in Triton, forward and backward.

    y[b, c, t] = silu(bias[c] + sum_j w[c, j] x[b, c, t - (K - 1) + j]),   x before t = 0 is zero

PyTorch runs it as a padded conv1d (cuDNN), a slice that copies, and a SiLU. Here the forward is one kernel
over (batch, channel block, time block) tiles. The backward is two: the first recomputes the
pre-activation, writes its gradient g = ȳ silu'(pre) in float32, and adds the tile's partial sums of dw and
dbias atomically; the second gathers dx[t] = sum_j w[c, j] g[t + K - 1 - j].

``causal_conv1d_silu(x, weight, bias)``: x (batch, d, L) in any float dtype, weight (d, K) or (d, 1, K),
bias (d,) or None -> (batch, d, L) in x's dtype, differentiable in all three. ``conv_forward`` and
``conv_backward`` are the launches without autograd, for the fused mixer (``fused.mixer``), which hands in
and takes out views of larger buffers: only time must be contiguous."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..scan.launch import cdiv, launcher
from ..scan.layout import is_dense


@triton.jit
def _pre(x_rows, w_ptr, b_ptr, offs_d, offs_t, mask_d, L, K: tl.constexpr, BLOCK_D: tl.constexpr,
         BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr):
    # the pre-activation on a (BLOCK_D, BLOCK_T) tile, in float32
    acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    for j in tl.static_range(K):
        src = offs_t - (K - 1) + j
        xv = tl.load(x_rows + src[None, :], mask=mask_d[:, None] & (src[None, :] >= 0) & (src[None, :] < L),
                     other=0.0)
        wj = tl.load(w_ptr + offs_d * K + j, mask=mask_d, other=0.0).to(tl.float32)
        acc += wj[:, None] * xv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return acc


@launcher
@triton.jit
def _conv_silu_fwd(x_ptr, w_ptr, b_ptr, y_ptr, d, L, sx_b, sx_d, sy_b, sy_d,
                K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < d
    x_rows = x_ptr + pid_b * sx_b + offs_d[:, None] * sx_d
    pre = _pre(x_rows, w_ptr, b_ptr, offs_d, offs_t, mask_d, L, K, BLOCK_D, BLOCK_T, HAS_BIAS)
    y = pre * tl.sigmoid(pre)
    tl.store(y_ptr + pid_b * sy_b + offs_d[:, None] * sy_d + offs_t[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (offs_t[None, :] < L))


@launcher
@triton.jit
def _conv_silu_bwd_grad(x_ptr, w_ptr, b_ptr, gy_ptr, g_ptr, dw_ptr, db_ptr, d, L, sx_b, sx_d, sg_b, sg_d,
                     K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr):
    # gy and g share strides (sg_*): g is made with gy's layout
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < d
    mask = mask_d[:, None] & (offs_t[None, :] < L)
    x_rows = x_ptr + pid_b * sx_b + offs_d[:, None] * sx_d
    g_off = pid_b * sg_b + offs_d[:, None] * sg_d + offs_t[None, :]
    pre = _pre(x_rows, w_ptr, b_ptr, offs_d, offs_t, mask_d, L, K, BLOCK_D, BLOCK_T, HAS_BIAS)
    s = tl.sigmoid(pre)
    gy = tl.load(gy_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    g = tl.where(mask, gy * s * (1.0 + pre * (1.0 - s)), 0.0)
    tl.store(g_ptr + g_off, g, mask=mask)
    for j in tl.static_range(K):
        src = offs_t - (K - 1) + j
        xv = tl.load(x_rows + src[None, :], mask=mask_d[:, None] & (src[None, :] >= 0) & (src[None, :] < L),
                     other=0.0).to(tl.float32)
        tl.atomic_add(dw_ptr + offs_d * K + j, tl.sum(g * xv, axis=1), mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(db_ptr + offs_d, tl.sum(g, axis=1), mask=mask_d, sem="relaxed")


@launcher
@triton.jit
def _conv_silu_bwd_dx(g_ptr, w_ptr, dx_ptr, d, L, sg_b, sg_d, sdx_b, sdx_d,
                   K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < d
    g_rows = g_ptr + pid_b * sg_b + offs_d[:, None] * sg_d
    acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32)
    for j in tl.static_range(K):
        dst = offs_t + (K - 1) - j  # x[t] feeds the output at t + K - 1 - j through w[j]
        gv = tl.load(g_rows + dst[None, :], mask=mask_d[:, None] & (dst[None, :] < L), other=0.0)
        wj = tl.load(w_ptr + offs_d * K + j, mask=mask_d, other=0.0).to(tl.float32)
        acc += wj[:, None] * gv
    tl.store(dx_ptr + pid_b * sdx_b + offs_d[:, None] * sdx_d + offs_t[None, :], acc.to(dx_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (offs_t[None, :] < L))


def _grid(batch: int, d: int, L: int, block_d: int, block_t: int) -> tuple[int, int, int]:
    return batch, cdiv(d, block_d), cdiv(L, block_t)


def _time_contiguous(name: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name} must be contiguous along time (its last dimension), got strides {t.stride()}")


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None = None,
                 block_d: int = 16, block_t: int = 64) -> torch.Tensor:
    """x (batch, d, L), time contiguous (any batch and channel strides); weight (d, K) contiguous; bias (d,)
    or None -> silu(conv) (batch, d, L), written into ``out`` if given (time contiguous), else into a new
    tensor with x's layout where x is dense."""
    batch, d, L = x.shape
    _time_contiguous("x", x)
    out = torch.empty_like(x) if out is None else out
    _time_contiguous("out", out)
    _conv_silu_fwd[_grid(batch, d, L, block_d, block_t)](
        x, weight, bias, out, d, L, x.stride(0), x.stride(1), out.stride(0), out.stride(1), K=weight.shape[1],
        BLOCK_D=block_d, BLOCK_T=block_t, HAS_BIAS=bias is not None)
    return out


def conv_backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gy: torch.Tensor,
                  dx: torch.Tensor | None = None, block_d: int = 16, block_t: int = 64):
    """The gradients of ``conv_forward`` for the output gradient gy (batch, d, L), time contiguous: (dx written
    into ``dx`` if given, else a new tensor with x's layout; dw (d, K) float32; dbias (d,) float32 or None)."""
    batch, d, L = x.shape
    K = weight.shape[1]
    if not is_dense(gy) or gy.stride(-1) != 1:
        gy = gy.contiguous()
    g = torch.empty_like(gy, dtype=torch.float32)  # gy's strides: the kernel indexes both with one set
    dw = torch.zeros(d, K, device=x.device, dtype=torch.float32)
    db = torch.zeros(d, device=x.device, dtype=torch.float32) if bias is not None else None
    grid = _grid(batch, d, L, block_d, block_t)
    _conv_silu_bwd_grad[grid](x, weight, bias, gy, g, dw, db, d, L, x.stride(0), x.stride(1), gy.stride(0),
                           gy.stride(1), K=K, BLOCK_D=block_d, BLOCK_T=block_t, HAS_BIAS=bias is not None)
    dx = torch.empty_like(x) if dx is None else dx
    _time_contiguous("dx", dx)
    _conv_silu_bwd_dx[grid](g, weight, dx, d, L, g.stride(0), g.stride(1), dx.stride(0), dx.stride(1), K=K,
                         BLOCK_D=block_d, BLOCK_T=block_t)
    return dx, dw, db


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, block_d, block_t):
        y = conv_forward(x, weight, bias, block_d=block_d, block_t=block_t)
        ctx.save_for_backward(x, weight, bias)
        ctx.blocks = block_d, block_t
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, bias = ctx.saved_tensors
        block_d, block_t = ctx.blocks
        if gy.stride(-1) != 1:
            gy = gy.contiguous()
        dx, dw, db = conv_backward(x, weight, bias, gy, block_d=block_d, block_t=block_t)
        return dx, dw.to(weight.dtype), None if db is None else db.to(bias.dtype), None, None


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       block_d: int = 16, block_t: int = 64) -> torch.Tensor:
    """x (batch, d, L); weight (d, K) or (d, 1, K); bias (d,) or None -> silu(causal depthwise conv) (batch, d, L)."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, d, L), got {tuple(x.shape)}")
    d = x.shape[1]
    shape = tuple(weight.shape)
    w = weight.reshape(d, shape[-1]) if weight.dim() == 3 and shape[1] == 1 else weight
    if w.dim() != 2 or w.shape[0] != d:
        raise ValueError(f"weight must have shape (d, K) or (d, 1, K) with d = {d}, got {shape}")
    if bias is not None and tuple(bias.shape) != (d,):
        raise ValueError(f"bias must have shape ({d},), got {tuple(bias.shape)}")
    if x.stride(-1) != 1:  # views that keep time contiguous (a slice of in_proj's output) go in as they are
        x = x.contiguous()
    return _ConvSiLU.apply(x, w.contiguous(), None if bias is None else bias.contiguous(), block_d, block_t)
