"""RMSNorm fused with the residual add that precedes it, in Triton, forward and backward.

A pre-norm stack computes, at each block's entry, r = x + residual (x: the previous mixer's output) and
y = weight * r / sqrt(mean(r^2) + eps). In PyTorch that is an add, a cast, a square, a mean, an rsqrt and
two products, each a pass over memory; here it is one kernel that reads x and the residual once and
writes r (the next residual) and y. The backward is one kernel too:

    r̂ = r * rstd,   dr = rstd * (w ȳ - r̂ mean(w ȳ r̂)) + r̄,   dw = sum over rows of ȳ r̂,

where r̄ is the gradient reaching the residual output; x and the residual input both receive dr.

``rms_norm_add(x, residual, weight, eps, residual_fp32)``: x (rows, D) or (..., D), residual the same shape
or None, weight (D,) -> (y in x's dtype, r in float32 if ``residual_fp32`` else in x's and the residual's
promoted dtype). The LM's backbone runs it between blocks on its fused path (``MambaBackbone._fused_stack``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..scan.launch import cdiv, launcher, next_power_of_2


@launcher
@triton.jit
def _rms_norm_add_fwd(x_ptr, res_ptr, w_ptr, y_ptr, r_ptr, rstd_ptr, D, eps,
                BLOCK: tl.constexpr, HAS_RES: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    r = tl.load(x_ptr + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        r += tl.load(res_ptr + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(r * r, axis=0) / D + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(r_ptr + row * D + offs, r.to(r_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + row * D + offs, (r * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + row, rstd)


@launcher
@triton.jit
def _rms_norm_add_bwd(r_ptr, w_ptr, rstd_ptr, dy_ptr, dr_out_ptr, dr_ptr, dw_ptr, rows, D,
                BLOCK: tl.constexpr, ROWS: tl.constexpr, HAS_DR_OUT: tl.constexpr):
    # ROWS rows per program: dw's partial sum stays in registers and is added once per program
    offs = tl.arange(0, BLOCK)
    mask = offs < D
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(ROWS):
        row = tl.program_id(0) * ROWS + i
        m = mask & (row < rows)
        r = tl.load(r_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + row, mask=row < rows, other=0.0)
        dy = tl.load(dy_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
        r_hat = r * rstd
        wdy = w * dy
        dr = rstd * (wdy - r_hat * (tl.sum(wdy * r_hat, axis=0) / D))
        if HAS_DR_OUT:
            dr += tl.load(dr_out_ptr + row * D + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(dr_ptr + row * D + offs, dr.to(dr_ptr.dtype.element_ty), mask=m)
        dw += dy * r_hat
    tl.atomic_add(dw_ptr + offs, dw, mask=mask, sem="relaxed")


def _sum_dtype(x, residual, residual_fp32: bool) -> torch.dtype:
    # what x + residual would give in PyTorch, unless the residual is kept in float32
    if residual_fp32:
        return torch.float32
    return x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)


def _norm_forward(x, residual, weight, eps: float, residual_fp32: bool):
    """x, residual (rows, D) -> y (rows, D) in x's dtype, r = x + residual, rstd (rows,) float32."""
    rows, D = x.shape
    y = torch.empty_like(x)
    r = torch.empty(rows, D, device=x.device, dtype=_sum_dtype(x, residual, residual_fp32))
    rstd = torch.empty(rows, device=x.device, dtype=torch.float32)
    _rms_norm_add_fwd[(rows,)](x, residual, weight, y, r, rstd, D, eps, BLOCK=next_power_of_2(D),
                               HAS_RES=residual is not None)
    return y, r, rstd


def _norm_backward(dy, dr_out, r, weight, rstd, x_dtype):
    """-> dr (rows, D) float32 (the gradient of x and of the residual input) and dw (D,) float32."""
    rows, D = r.shape
    dy = torch.zeros(rows, D, device=r.device, dtype=x_dtype) if dy is None else dy.contiguous()
    dr = torch.empty(rows, D, device=r.device, dtype=torch.float32)
    dw = torch.zeros(D, device=r.device, dtype=torch.float32)
    per = 16
    _rms_norm_add_bwd[(cdiv(rows, per),)](r, weight, rstd, dy, None if dr_out is None else dr_out.contiguous(),
                                          dr, dw, rows, D, BLOCK=next_power_of_2(D), ROWS=per,
                                          HAS_DR_OUT=dr_out is not None)
    return dr, dw


def _rows(x, residual, weight):
    # x and the residual (..., D) as the (rows, D) contiguous tensors the kernels take, and the weight
    D = x.shape[-1]
    return (x.reshape(-1, D).contiguous(), None if residual is None else residual.reshape(-1, D).contiguous(),
            weight.contiguous())


def _input_grads(dr, dw, dtypes, weight):
    # the gradients of x, the residual (None where there was none) and the weight, in their dtypes
    x_dtype, res_dtype = dtypes
    return dr.to(x_dtype), None if res_dtype is None else dr.to(res_dtype), dw.to(weight.dtype)


class _RMSNormAdd(torch.autograd.Function):
    """The eager path, on (..., D) tensors: the (rows, D) views the kernels take are made in here, where
    autograd records none of them (the eager step is CPU-bound, and each recorded view is a node each way).
    The gradients leave in float32 and autograd casts them to the inputs' dtypes."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_fp32):
        y, r, rstd = _norm_forward(*_rows(x, residual, weight), eps, residual_fp32)
        ctx.save_for_backward(r, weight, rstd)
        ctx.dtype, ctx.shape, ctx.has_res = x.dtype, x.shape, residual is not None
        ctx.set_materialize_grads(False)
        return y.view(x.shape), r.view(x.shape)

    @staticmethod
    def backward(ctx, dy, dr_out):
        r, weight, rstd = ctx.saved_tensors
        D = r.shape[-1]
        dy = None if dy is None else dy.reshape(-1, D)
        dr_out = None if dr_out is None else dr_out.reshape(-1, D)
        dr, dw = _norm_backward(dy, dr_out, r, weight, rstd, ctx.dtype)
        dr = dr.view(ctx.shape)
        return dr, dr if ctx.has_res else None, dw, None, None


# the same launches as custom ops for torch.compile (see triton_scan for why)
@torch.library.custom_op("mambadyn::rms_norm_add", mutates_args=())
def _norm_op(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
             residual_fp32: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _norm_forward(x, residual, weight, eps, residual_fp32)


@_norm_op.register_fake
def _(x, residual, weight, eps, residual_fp32):
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=_sum_dtype(x, residual, residual_fp32)),
            x.new_empty(x.shape[0], dtype=torch.float32))


@torch.library.custom_op("mambadyn::rms_norm_add_backward", mutates_args=())
def _norm_backward_op(dy: torch.Tensor, dr_out: torch.Tensor | None, r: torch.Tensor, weight: torch.Tensor,
                      rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _norm_backward(dy, dr_out, r, weight, rstd, dy.dtype)


@_norm_backward_op.register_fake
def _(dy, dr_out, r, weight, rstd):
    return r.new_empty(r.shape, dtype=torch.float32), weight.new_empty(weight.shape, dtype=torch.float32)


def _norm_setup(ctx, inputs, output):
    x, residual, weight, _eps, _fp32 = inputs
    ctx.save_for_backward(output[1], weight, output[2])
    ctx.dtypes = x.dtype, None if residual is None else residual.dtype


def _norm_op_backward(ctx, dy, dr_out, _drstd):
    r, weight, rstd = ctx.saved_tensors
    x_dtype = ctx.dtypes[0]
    dy = r.new_zeros(r.shape, dtype=x_dtype) if dy is None else dy.to(x_dtype)  # the op takes no None for it
    dr, dw = _norm_backward_op(dy, dr_out, r, weight, rstd)
    return (*_input_grads(dr, dw, ctx.dtypes, weight), None, None)


_norm_op.register_autograd(_norm_op_backward, setup_context=_norm_setup)


def rms_norm_add(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                 residual_fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D), residual the same shape or None, weight (D,) -> (weight * rmsnorm(x + residual) in x's
    dtype, x + residual in float32 if ``residual_fp32`` else in their promoted dtype), both (..., D)."""
    D = x.shape[-1]
    if tuple(weight.shape) != (D,):
        raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if not torch.compiler.is_compiling():
        return _RMSNormAdd.apply(x, residual, weight, float(eps), bool(residual_fp32))
    lead = x.shape[:-1]
    y, r = _norm_op(*_rows(x, residual, weight), float(eps), bool(residual_fp32))[:2]
    return y.reshape(*lead, D), r.reshape(*lead, D)
