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

from ..kernel_op import KernelOp
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


def _forward(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
             residual_fp32: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, residual (..., D) -> y, r (..., D), rstd (rows,) float32. The (rows, D) views the kernels take are
    made in here, where autograd records none of them (each recorded view is a node each way)."""
    D = x.shape[-1]
    rows = (x.reshape(-1, D).contiguous(), None if residual is None else residual.reshape(-1, D).contiguous())
    y, r, rstd = _norm_forward(*rows, weight.contiguous(), eps, residual_fp32)
    return y.view(x.shape), r.view(x.shape), rstd


def _forward_fake(x, residual, weight, eps, residual_fp32):
    rows = x.numel() // x.shape[-1]
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=_sum_dtype(x, residual, residual_fp32)),
            x.new_empty(rows, dtype=torch.float32))


def _save(inputs, outputs):
    x, residual, weight, _eps, _fp32 = inputs
    return (outputs[1], weight, outputs[2]), (x.dtype, None if residual is None else residual.dtype)


def _backward(dy: torch.Tensor | None, dr_out: torch.Tensor | None, r: torch.Tensor, weight: torch.Tensor,
              rstd: torch.Tensor, x_dtype: torch.dtype, res_dtype: torch.dtype | None) -> list[torch.Tensor | None]:
    """-> the gradients of x, the residual (None where there was none) and the weight, in their dtypes."""
    D = r.shape[-1]
    dr, dw = _norm_backward(None if dy is None else dy.reshape(-1, D), None if dr_out is None else
                            dr_out.reshape(-1, D), r.reshape(-1, D), weight, rstd, x_dtype)
    dr = dr.view(r.shape)
    return [dr.to(x_dtype), None if res_dtype is None else dr.to(res_dtype), dw.to(weight.dtype)]


def _backward_fake(dy, dr_out, r, weight, rstd, x_dtype, res_dtype):
    return [r.new_empty(r.shape, dtype=x_dtype),
            r.new_empty(0) if res_dtype is None else r.new_empty(r.shape, dtype=res_dtype),
            weight.new_empty(weight.shape)]


_NORM = KernelOp("mambadyn::rms_norm_add", forward=_forward, forward_fake=_forward_fake, save=_save,
                 backward=_backward, backward_fake=_backward_fake, n_outputs=2)


def rms_norm_add(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-5,
                 residual_fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D), residual the same shape or None, weight (D,) -> (weight * rmsnorm(x + residual) in x's
    dtype, x + residual in float32 if ``residual_fp32`` else in their promoted dtype), both (..., D)."""
    D = x.shape[-1]
    if tuple(weight.shape) != (D,):
        raise ValueError(f"weight must have shape ({D},), got {tuple(weight.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    return _NORM(x, residual, weight, float(eps), bool(residual_fp32))
