"""The S6 mixer after in_proj as one differentiable call over the Triton kernels, for training on CUDA.

    x, z = xz                                  xz: (batch, 2 d_inner, L), a view of in_proj's (2 d_inner, batch L)
    u = silu(conv(x))                          fused.conv
    (dt, B, C) = x_proj u;  Δ_raw = dt_proj dt
    y = scan(u, Δ_raw + bias, A, B, C, D) · silu(z)        triton_kernels, softplus fused, A = -exp(A_log)
    out = out_proj y                           (batch, L, d_model)

Every tensor between the matrix products is a (batch, ·, L) view of a (·, batch L) matrix, the layout
in which each product reads and writes plainly and the kernels find time contiguous, so nothing is copied
or transposed: B and C are row slices of x_proj's output, Δ is dt_proj's output, and the backward writes
dx and dz into the two halves of one dxz buffer that in_proj's backward reads as a matrix.

Memory: the forward keeps xz, x_proj's output and the scan's chunk states. The conv output and Δ are
recomputed in the backward (one conv and one small product), and the gated output that out_proj's weight
gradient needs is written again by the scan's backward kernel, which computes it anyway.

The autograd paths, eager and compiled, are built by ``kernel_op.KernelOp`` from one forward/backward pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernel_op import KernelOp
from ..scan.layout import is_matrix_view
from ..scan.triton_scan import scan_backward, scan_forward
from ..scan.triton_tuning import Tuning, as_ints, tunings_for
from .conv import conv_backward, conv_forward

# Inside the autograd Function and the custom ops nothing is recorded, so these views are single as_strided
# calls there: each view op is a dispatch, and the eager step is CPU-bound (a transpose and a reshape or view
# per change of layout cost the fused layer ~20 dispatches a step). Where autograd records (mixer_inner),
# plain views are used: as_strided's backward is a scatter into a zero buffer.

def _as_matrix(t: torch.Tensor) -> torch.Tensor:
    # (batch, c, L) with strides (L, batch L, 1) -> the (c, batch L) matrix it views (else a copy)
    batch, c, L = t.shape
    if is_matrix_view(t):
        return t.as_strided((c, batch * L), (batch * L, 1), t.storage_offset())
    return t.transpose(0, 1).reshape(c, -1)


def _as_sequences(m: torch.Tensor, batch: int) -> torch.Tensor:
    # (c, batch L) with unit column stride -> (batch, c, L), a view
    c, cols = m.shape
    if m.stride(1) == 1:
        return m.as_strided((batch, c, cols // batch), (cols // batch, m.stride(0), 1), m.storage_offset())
    return m.view(c, batch, -1).transpose(0, 1)


def _split(x_dbl, dt_proj_w, n: int, batch: int):
    # Δ before its bias, B and C from x_proj's output: (batch, ., L) views of (., batch L) matrices
    rank = dt_proj_w.shape[1]
    delta = _as_sequences(dt_proj_w @ x_dbl[:rank], batch)
    return delta, _as_sequences(x_dbl[rank:rank + n], batch), _as_sequences(x_dbl[rank + n:], batch)


def _conv(xz, conv_w, conv_b):
    batch, two_d, L = xz.shape
    u = _as_sequences(torch.empty(two_d // 2, batch * L, device=xz.device, dtype=xz.dtype), batch)
    return conv_forward(xz[:, :two_d // 2], conv_w, conv_b, out=u)


def _mixer_forward(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A_log, D, dt_bias,
                   fwd: Tuning, bwd: Tuning, save: bool):
    """-> out (batch, L, d_model), x_proj's output (dt_rank + 2n, batch L), and the scan's chunk states if
    ``save`` (else None)."""
    batch, two_d, L = xz.shape
    u = _conv(xz, conv_w, conv_b)
    x_dbl = x_proj_w @ _as_matrix(u)
    delta, B, C = _split(x_dbl, dt_proj_w, A_log.shape[1], batch)
    y, _, saved = scan_forward(u, delta, A_log, B, C, D, xz[:, two_d // 2:], dt_bias, None, True, fwd, bwd, save,
                           a_log=True)
    out = F.linear(_as_matrix(y).t(), out_proj_w, out_proj_b)  # (batch L, d_model)
    return out.view(batch, L, -1), x_dbl, saved[-1] if save else None


def _mixer_backward(dout, xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, has_out_b: bool, A_log,
                    D, dt_bias, states, bwd: Tuning):
    """-> the gradients of xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A_log, D, dt_bias
    (None for an absent bias)."""
    batch, two_d, L = xz.shape
    d, n, rank = two_d // 2, A_log.shape[1], dt_proj_w.shape[1]
    dout = dout.reshape(batch * L, -1)
    u = _conv(xz, conv_w, conv_b)  # recomputed rather than kept (see the module's docstring)
    delta, B, C = _split(x_dbl, dt_proj_w, n, batch)
    dy = _as_sequences(out_proj_w.t() @ dout.t(), batch)  # (batch, d, L)
    dxz = torch.empty_like(xz)
    y_gated = torch.empty_like(u)
    dx_dbl = torch.empty_like(x_dbl)  # (rank + 2n, batch L): dΔ's product, then dB and dC from the scan
    du, ddelta, dA_log, _, _, dD, _, dbias, _ = scan_backward(
        dy, None, u, delta, A_log, B, C, D, xz[:, d:], dt_bias, states, True, bwd, dz=dxz[:, d:], out_z=y_gated,
        dBC=dx_dbl[rank:], a_log=True)
    d_out_w = dout.t() @ _as_matrix(y_gated).t()
    d_out_b = dout.sum(0) if has_out_b else None
    dd = _as_matrix(ddelta)  # (d, batch L)
    d_dt_w = dd @ x_dbl[:rank].t()
    torch.mm(dt_proj_w.t(), dd, out=dx_dbl[:rank])
    d_x_proj_w = dx_dbl @ _as_matrix(u).t()
    _as_matrix(du).addmm_(x_proj_w.t(), dx_dbl)  # u feeds x_proj as well as the scan
    _, dw, db = conv_backward(xz[:, :d], conv_w, conv_b, du, dx=dxz[:, :d])
    return (dxz, dw.to(conv_w.dtype), None if db is None else db.to(conv_b.dtype), d_x_proj_w, d_dt_w, d_out_w,
            d_out_b, dA_log, dD, dbias)


def _tuning(t) -> Tuning:
    return t if isinstance(t, Tuning) else Tuning(*t)


def _launch_layout(xz):
    # the layout the launches take: eager callers hand it in already (mixer_inner), a fake cannot promise it
    return xz if is_matrix_view(xz) else _as_sequences(_as_matrix(xz), xz.shape[0])


def _forward(xz: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None, x_proj_w: torch.Tensor,
             dt_proj_w: torch.Tensor, out_proj_w: torch.Tensor, out_proj_b: torch.Tensor | None,
             A_log: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor, fwd: list[int], bwd: list[int],
             save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> out (batch, L, d_model), x_proj's output (dt_rank + 2n, batch L), the chunk states (empty unless
    ``save``)."""
    out, x_dbl, states = _mixer_forward(_launch_layout(xz), conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w,
                                        out_proj_b, A_log, D, dt_bias, _tuning(fwd), _tuning(bwd), save)
    return out, x_dbl, states if save else x_dbl.new_empty(0, dtype=torch.float32)


def _forward_fake(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A_log, D, dt_bias, fwd, bwd,
                  save):
    batch, two_d, L = xz.shape
    n = A_log.shape[1]
    f32 = {"dtype": torch.float32}
    states = xz.new_empty(-(-L // bwd[1]), batch, two_d // 2, n, **f32) if save else xz.new_empty(0, **f32)
    return (xz.new_empty(batch, L, out_proj_w.shape[0]), xz.new_empty(x_proj_w.shape[0], batch * L), states)


def _save(inputs, outputs):
    xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A_log, D, dt_bias, _fwd, bwd, _save = inputs
    return ((xz, conv_w, conv_b, outputs[1], x_proj_w, dt_proj_w, out_proj_w, A_log, D, dt_bias, outputs[2]),
            (out_proj_b is not None, bwd))


def _backward(dout: torch.Tensor | None, xz: torch.Tensor, conv_w: torch.Tensor, conv_b: torch.Tensor | None,
              x_dbl: torch.Tensor, x_proj_w: torch.Tensor, dt_proj_w: torch.Tensor, out_proj_w: torch.Tensor,
              A_log: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor, states: torch.Tensor, has_out_b: bool,
              bwd: list[int]) -> list[torch.Tensor | None]:
    """-> the gradients of xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, A_log, D,
    dt_bias, each in its input's dtype (the bias's: out_proj_w's), None for an absent bias."""
    if states.numel() == 0:
        raise RuntimeError("the fused mixer ran without saving its states (no grad was needed then)")
    if dout is None:
        dout = x_dbl.new_zeros(xz.shape[0], xz.shape[2], out_proj_w.shape[0], dtype=out_proj_w.dtype)
    grads = _mixer_backward(dout, _launch_layout(xz), conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w,
                            has_out_b, A_log, D, dt_bias, states, _tuning(bwd))
    like = (xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_w, A_log, D, dt_bias)
    return [g if g is None or g.dtype == t.dtype else g.to(t.dtype) for g, t in zip(grads, like)]


def _backward_fake(dout, xz, conv_w, conv_b, x_dbl, x_proj_w, dt_proj_w, out_proj_w, A_log, D, dt_bias, states,
                   has_out_b, bwd):
    out_b = out_proj_w.new_empty(out_proj_w.shape[0]) if has_out_b else xz.new_empty(0)
    batch, _, L = xz.shape
    # dxz has the launches' layout: (batch, 2 d_inner, L) viewing a (2 d_inner, batch L) matrix
    return [xz.new_empty_strided(xz.shape, (L, batch * L, 1)), conv_w.new_empty(conv_w.shape),
            xz.new_empty(0) if conv_b is None else conv_b.new_empty(conv_b.shape), x_proj_w.new_empty(x_proj_w.shape),
            dt_proj_w.new_empty(dt_proj_w.shape), out_proj_w.new_empty(out_proj_w.shape), out_b,
            A_log.new_empty(A_log.shape), D.new_empty(D.shape), dt_bias.new_empty(dt_bias.shape)]


def _prepare(xz, conv_w, conv_b, x_proj_w, dt_proj_w, out_proj_w, out_proj_b, *rest):
    # the products run in autocast's dtype, as F.linear's would; done inside the Function, unseen by autograd:
    # a recorded cast per weight costs the host-bound eager step 4 nodes a layer each way
    return (xz, conv_w, conv_b, *_autocast(x_proj_w, dt_proj_w, out_proj_w, out_proj_b), *rest)


_MIXER = KernelOp("mambadyn::mixer_inner", forward=_forward, forward_fake=_forward_fake, save=_save,
                  backward=_backward, backward_fake=_backward_fake, n_outputs=1, prepare=_prepare)


def _autocast(x_proj_w, dt_proj_w, out_proj_w, out_proj_b):
    # the products run in autocast's dtype, as F.linear's would
    if not torch.is_autocast_enabled(x_proj_w.device.type):
        return x_proj_w, dt_proj_w, out_proj_w, out_proj_b
    dt = torch.get_autocast_dtype(x_proj_w.device.type)
    return (x_proj_w.to(dt), dt_proj_w.to(dt), out_proj_w.to(dt), None if out_proj_b is None else out_proj_b.to(dt))


def mixer_inner(xz: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                out_proj_bias: torch.Tensor | None, A_log: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor
                ) -> torch.Tensor:
    """xz (batch, 2 d_inner, L), time contiguous (best: in_proj's (2 d_inner, batch L) output viewed so);
    conv_weight (d_inner, K); conv_bias, D, dt_bias (d_inner,); x_proj_weight (dt_rank + 2n, d_inner);
    dt_proj_weight (d_inner, dt_rank); out_proj_weight (d_model, d_inner); A_log (d_inner, n), the model's
    parameter (A = -exp(A_log) is formed inside the kernels, so the step records no exp or negation)
    -> (batch, L, d_model). Differentiable in every tensor argument."""
    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz must have shape (batch, 2 d_inner, L), got {tuple(xz.shape)}")
    conv_weight = conv_weight.reshape(conv_weight.shape[0], -1).contiguous()
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                                                    out_proj_weight, out_proj_bias, A_log, D, dt_bias))
    fwd, bwd = tunings_for(xz, xz.shape[0] * xz.shape[1] // 2, need_grad)
    if torch.compiler.is_compiling():
        fwd, bwd = as_ints(fwd), as_ints(bwd)
    batch, two_d, L = xz.shape
    if not is_matrix_view(xz):  # not in_proj's layout (see MambaMixer._fused_forward): one copy into it
        xz = xz.transpose(0, 1).reshape(two_d, -1).view(two_d, batch, L).transpose(0, 1)
    return _MIXER(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, out_proj_weight, out_proj_bias, A_log,
                  D, dt_bias, fwd, bwd, need_grad)


def mixer_inner_ref(xz: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                    x_proj_weight: torch.Tensor, dt_proj_weight: torch.Tensor, out_proj_weight: torch.Tensor,
                    out_proj_bias: torch.Tensor | None, A_log: torch.Tensor, D: torch.Tensor, dt_bias: torch.Tensor
                    ) -> torch.Tensor:
    """What ``mixer_inner`` computes, in plain PyTorch ops and the reference scan (any device and dtype,
    float64 included): the reference the fused mixer is held to. Same arguments and shapes."""
    from ..scan.reference import selective_scan_ref

    if xz.dim() != 3 or xz.shape[1] % 2:
        raise ValueError(f"xz must have shape (batch, 2 d_inner, L), got {tuple(xz.shape)}")
    x, z = xz.chunk(2, dim=1)
    d_inner, L = x.shape[1], x.shape[2]
    w = conv_weight.reshape(d_inner, 1, -1)
    u = F.silu(F.conv1d(x, w, conv_bias, padding=w.shape[-1] - 1, groups=d_inner)[..., :L])
    n = A_log.shape[1]
    r = dt_proj_weight.shape[1]
    dt, B, C = torch.einsum("od,bdl->bol", x_proj_weight, u).split([r, n, n], dim=1)
    delta = torch.einsum("dr,brl->bdl", dt_proj_weight, dt)
    y = selective_scan_ref(u, delta, -torch.exp(A_log), B, C, D, z=z, delta_bias=dt_bias, delta_softplus=True)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)
