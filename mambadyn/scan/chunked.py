"""Chunked selective scan in plain PyTorch: the CPU default.

The sequence is cut into chunks of ``chunk`` steps. Forward keeps only the state at each chunk
boundary; backward walks the chunks in reverse, recomputes each chunk's states from its boundary
state and runs the adjoint recurrence. Peak working memory is O(batch · d · n · chunk) whatever L
is, and nothing goes through autograd's per-step graph.

Inside a chunk the recurrence runs in time-major layout (T, batch, d, n) so that every step is one
fused in-place ``addcmul`` on a contiguous slab:

    forward   h_t = a_t ⊙ h_{t-1} + b_t,            a_t = exp(Δ_t A),  b_t = Δ_t u_t B_t
              y_t = Σ_n C_t h_t
    adjoint   g_t = C_t ȳ_t + a_{t+1} ⊙ g_{t+1}     (g_t = ∂loss/∂h_t)
    grads     ∂b_t = g_t,  ∂(Δ_t A) = g_t ⊙ h_{t-1} ⊙ a_t
"""

from __future__ import annotations

import torch

from .epilogue import compute_dtype, finish, prepare_delta

DEFAULT_CHUNK = 16  # measured: (T, b, d, n) slabs that stay in cache beat longer chunks on CPU


def _chunk_inputs(delta, u, A, B, s, e):
    """Time-major decay a (T, b, d, n), delta·u (T, b, d), B (T, b, n) for steps s:e."""
    dl = delta[:, :, s:e].permute(2, 0, 1)
    du = dl * u[:, :, s:e].permute(2, 0, 1)
    Bt = B[:, :, s:e].permute(2, 0, 1)
    a = torch.exp(dl[..., None] * A)
    return dl, du, Bt, a


def _chunk_states(a, du, Bt, h0):
    """States h (T, b, d, n) of one chunk from its initial state h0 (b, d, n)."""
    h = du[..., None] * Bt[:, :, None, :]
    h[0].addcmul_(a[0], h0)
    for t in range(1, h.shape[0]):
        h[t].addcmul_(a[t], h[t - 1])
    return h


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk):
        batch, d, L = u.shape
        y = u.new_empty(batch, d, L)
        h = h0
        starts = []
        for s in range(0, L, chunk):
            e = min(s + chunk, L)
            starts.append(h)
            _, du, Bt, a = _chunk_inputs(delta, u, A, B, s, e)
            hs = _chunk_states(a, du, Bt, h)
            y[:, :, s:e] = torch.einsum("tbdn,bnt->bdt", hs, C[:, :, s:e])
            h = hs[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.chunk = chunk
        return y, h

    @staticmethod
    def backward(ctx, gy, gh_last):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        chunk = ctx.chunk
        batch, d, L = u.shape
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gB, gC = torch.empty_like(B), torch.empty_like(C)
        gA = torch.zeros_like(A)
        # carry: extra gradient reaching the last state of the chunk being processed
        carry = gh_last if gh_last is not None else u.new_zeros(batch, d, A.shape[1])
        gy = gy if gy is not None else torch.zeros_like(u)
        for i in reversed(range(len(starts))):
            s = i * chunk
            e = min(s + chunk, L)
            h0 = starts[i]
            dl, du, Bt, a = _chunk_inputs(delta, u, A, B, s, e)
            hs = _chunk_states(a, du, Bt, h0)
            gyt = gy[:, :, s:e].permute(2, 0, 1)  # (T, b, d)
            Ct = C[:, :, s:e].permute(2, 0, 1)  # (T, b, n)
            gC[:, :, s:e] = torch.einsum("tbdn,tbd->bnt", hs, gyt)
            g = gyt[..., None] * Ct[:, :, None, :]
            g[-1] += carry
            for t in range(g.shape[0] - 2, -1, -1):
                g[t].addcmul_(a[t + 1], g[t + 1])
            carry = a[0] * g[0]
            # h_{t-1} for every step of the chunk, reusing hs's storage shifted by one
            h_prev = torch.cat([h0[None], hs[:-1]], dim=0)
            gdA = g * h_prev * a  # ∂loss/∂(Δ_t A)
            gBu = torch.einsum("tbdn,tbn->tbd", g, Bt)  # Σ_n g B
            gdelta[:, :, s:e] = (torch.einsum("tbdn,dn->tbd", gdA, A) + gBu * u[:, :, s:e].permute(2, 0, 1)).permute(
                1, 2, 0
            )
            gu[:, :, s:e] = (gBu * dl).permute(1, 2, 0)
            gB[:, :, s:e] = torch.einsum("tbdn,tbd->bnt", g, du)
            gA += torch.einsum("tbdn,tbd->dn", gdA, dl)
        gh0 = carry if ctx.needs_input_grad[5] else None
        return gu, gdelta, gA, gB, gC, gh0, None


def selective_scan_chunked(
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
    chunk: int = DEFAULT_CHUNK,
):
    """Chunked scan with the same contract as ``selective_scan_ref``; differentiable in every input."""
    dt = compute_dtype(u, delta, A, B, C)
    out_dtype = u.dtype
    uc = u.to(dt)
    delta = prepare_delta(delta.to(dt), delta_bias, delta_softplus)
    batch, d, _ = u.shape
    h0 = (
        u.new_zeros(batch, d, A.shape[1], dtype=dt)
        if initial_state is None
        else initial_state.to(dt)
    )
    y, h_last = _ChunkedScan.apply(
        uc, delta.contiguous(), A.to(dt), B.to(dt).contiguous(), C.to(dt).contiguous(), h0, int(chunk)
    )
    out = finish(y, uc, D, z, out_dtype)
    return (out, h_last) if return_last_state else out
