"""One decoding step of a Mamba mixer in Triton: the causal conv's state update and the S6 state update.

A decoding step is, per layer: in_proj (a matrix product), the conv step, x_proj and dt_proj (matrix
products), the SSM step, out_proj. The two steps between the products are elementwise over the d_inner
channels and tiny, so in PyTorch each costs a dozen launches (roll, copy, multiply, sum, softplus, exp,
...); here each is one kernel. States are updated in place, so a CUDA graph can capture the step.

``conv_step(x, z?, conv_state, weight, bias)``: x (batch, d); conv_state (batch, d, K) shifts left by one
and takes x as its last column; returns silu(conv_state · weight + bias) (batch, d).
``ssm_step(x, dt, A, B, C, D, z, dt_bias, state)``: Δ = softplus(dt + dt_bias); state (batch, d, n) <-
exp(Δ A) state + Δ B x; returns (C · state + D x) silu(z) (batch, d), in x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..scan.launch import cdiv, launcher, next_power_of_2

LOG2E = tl.constexpr(1.4426950408889634)


@launcher
@triton.jit
def _conv_step_kernel(x_ptr, state_ptr, w_ptr, b_ptr, out_ptr, d,
                      stride_xb, stride_sb, stride_sd, stride_ob,
                      K: tl.constexpr, KP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, KP)
    mask_d = offs_d < d
    rows = state_ptr + pid_b * stride_sb + offs_d[:, None] * stride_sd
    # the state after the shift: column j takes the old column j + 1, the last column takes x
    shifted = tl.load(rows + offs_k[None, :] + 1, mask=mask_d[:, None] & (offs_k[None, :] + 1 < K), other=0.0)
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=mask_d, other=0.0)
    new = tl.where(offs_k[None, :] == K - 1, x[:, None], shifted)
    w = tl.load(w_ptr + offs_d[:, None] * K + offs_k[None, :], mask=mask_d[:, None] & (offs_k[None, :] < K),
                other=0.0)
    acc = tl.sum(new.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    out = acc * tl.sigmoid(acc)
    # every program reads its rows before writing them, and no program reads another's rows
    tl.store(rows + offs_k[None, :], new, mask=mask_d[:, None] & (offs_k[None, :] < K))
    tl.store(out_ptr + pid_b * stride_ob + offs_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@launcher
@triton.jit
def _ssm_step_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, state_ptr, out_ptr, d, n,
                     stride_xb, stride_dtb, stride_Bb, stride_Cb, stride_zb, stride_sb, stride_sd, stride_ob,
                     NP: tl.constexpr, BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                     HAS_DT_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr):
    pid_b = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask = mask_d[:, None] & mask_n[None, :]
    x = tl.load(x_ptr + pid_b * stride_xb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * stride_dtb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dtb_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
    A = tl.load(A_ptr + offs_d[:, None] * n + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    if A_IS_LOG:  # the parameter itself: A = -exp(A_log), here rather than in three kernels before the step
        A = -tl.exp(A)
    B = tl.load(B_ptr + pid_b * stride_Bb + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * stride_Cb + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    srows = state_ptr + pid_b * stride_sb + offs_d[:, None] * stride_sd + offs_n[None, :]
    h = tl.load(srows, mask=mask, other=0.0)
    h = tl.exp2(dt[:, None] * A * LOG2E) * h + (dt * x)[:, None] * B[None, :]
    tl.store(srows, h, mask=mask)
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_zb + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * z * tl.sigmoid(z)
    tl.store(out_ptr + pid_b * stride_ob + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def _check(name: str, t: torch.Tensor, shape: tuple, last_contiguous: bool = True) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if last_contiguous and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension")


def conv_step(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              block_d: int = 64) -> torch.Tensor:
    """x (batch, d); conv_state (batch, d, K), updated in place; weight (d, K); bias (d,) or None ->
    silu(conv) (batch, d) in x's dtype."""
    batch, d = x.shape
    K = weight.shape[-1]
    weight = weight.reshape(d, K).contiguous()
    _check("conv_state", conv_state, (batch, d, K))
    _check("x", x, (batch, d))
    out = torch.empty_like(x)
    grid = (batch, cdiv(d, block_d))
    _conv_step_kernel[grid](x, conv_state, weight, bias, out, d, x.stride(0), conv_state.stride(0),
                            conv_state.stride(1), out.stride(0), K=K, KP=next_power_of_2(K),
                            BLOCK_D=block_d, HAS_BIAS=bias is not None)
    return out


def ssm_step(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None, state: torch.Tensor,
             softplus: bool = True, block_d: int = 32, A_is_log: bool = False) -> torch.Tensor:
    """x, dt, z (batch, d); A (d, n), or A_log with A = -exp(A_log) where ``A_is_log``; B, C (batch, n);
    D, dt_bias (d,); state (batch, d, n) float32, updated in place -> y (batch, d) in x's dtype. A, D and
    dt_bias may be in any float dtype: they are read as float32."""
    batch, d = x.shape
    n = A.shape[1]
    for name, t, shape in (("dt", dt, (batch, d)), ("B", B, (batch, n)), ("C", C, (batch, n)),
                           ("state", state, (batch, d, n))):
        _check(name, t, shape)
    if state.dtype != torch.float32:
        raise TypeError(f"state must be float32, got {state.dtype}")
    A = A.contiguous()
    out = torch.empty_like(x)
    grid = (batch, cdiv(d, block_d))
    _ssm_step_kernel[grid](x, dt, A, B, C, D, z, dt_bias, state, out, d, n,
                           x.stride(0), dt.stride(0), B.stride(0), C.stride(0), 0 if z is None else z.stride(0),
                           state.stride(0), state.stride(1), out.stride(0),
                           NP=next_power_of_2(n), BLOCK_D=block_d, HAS_D=D is not None, HAS_Z=z is not None,
                           HAS_DT_BIAS=dt_bias is not None, SOFTPLUS=softplus, A_IS_LOG=A_is_log)
    return out
