"""Plain sequential selective scan: the ground truth every fast path is tested against.

For each channel d and state n, with Δ already biased and (optionally) softplus-ed:

    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t          (h: (batch, d, n))
    y_t = <C_t, h_t> + D u_t,   then y_t ← y_t · silu(z_t)

It runs in float64 when given float64 inputs and in float32 otherwise.
"""

from __future__ import annotations

import torch

from .epilogue import compute_dtype, finish, prepare_delta


def selective_scan_ref(
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
):
    """Sequential scan. Shapes: u, delta, z (batch, d, L); A (d, n); B, C (batch, n, L); D, delta_bias (d,);
    initial_state (batch, d, n). Returns y (batch, d, L) [and the last state (batch, d, n)]."""
    dt = compute_dtype(u, delta, A, B, C)
    out_dtype = u.dtype
    uc, Ac, Bc, Cc = u.to(dt), A.to(dt), B.to(dt), C.to(dt)
    delta = prepare_delta(delta.to(dt), delta_bias, delta_softplus)
    batch, d, L = u.shape
    h = (
        torch.zeros(batch, d, A.shape[1], dtype=dt, device=u.device)
        if initial_state is None
        else initial_state.to(dt)
    )
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * Ac)  # (batch, d, n)
        h = dA * h + (delta[:, :, t] * uc[:, :, t])[:, :, None] * Bc[:, None, :, t]
        ys.append((h * Cc[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(batch, d, 0)
    out = finish(y, uc, D, z, out_dtype)
    return (out, h) if return_last_state else out
