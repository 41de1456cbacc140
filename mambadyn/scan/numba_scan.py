"""Fused selective scan on CPU, compiled by numba: the CPU default where numba imports.

One pass over memory per (batch, channel) does the exp, the recurrence with a float32 state (float64 for
float64 inputs), the C contraction and the D skip; the (batch, channel) pairs run in parallel on numba's
threads, as many as torch uses. Δ's bias and softplus before it and the SiLU gate after it are torch's
(vectorized) operations: inside the numba loop they were libm calls, one per (batch, channel, step), and
took more than half of the forward.

Eager calls run through an autograd Function; under ``torch.compile`` the same forward and backward are
``torch.library`` custom ops with fake implementations (both built by ``kernel_op.KernelOp``), so a mixer on
this backend compiles without a graph break.

Backward: the forward keeps the state every ``SAVE`` steps. The backward walks each channel's chunks in
reverse, recomputes a chunk's states and decays from its saved state into a small local buffer, and
runs the adjoint recurrence through it. dB and dC sum over channels, so each thread writes a partial
sum for its group of channels, and torch adds the groups at the end. The same holds for dA and dD over
the batch. Without grad, the forward saves nothing.

numba's default threading layer must not be entered from two Python threads at once; mambadyn runs
parallel work (experiment grids) in processes.

Why numba and not torch.compile: inductor would have to lower a sequential loop over L (it has no CPU
codegen for a recurrence: it unrolls or falls back to per-step kernels), and it needs a C++ toolchain
on the user's machine. numba installs as a wheel and compiles the loop as written.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ..kernel_op import KernelOp
from .epilogue import compute_dtype, finish, prepare_delta

SAVE = 64  # steps between saved states: the backward's chunk
# reordered sums and fused multiply-adds let LLVM vectorize the loops over the n states; no assumption
# about NaN or inf is made, so they still propagate
FASTMATH = {"reassoc", "contract", "nsz"}


@intrinsic
def _bits_to_float32(typingctx, bits):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def exp_vec(x):  # pragma: no cover - replaced by the overload below inside numba
    """exp(x), written so that LLVM vectorizes it across a loop (float32); float64 keeps libm's exp."""
    return math.exp(x)


@overload(exp_vec, inline="always")
def _exp_vec(x):
    # numba calls libm's scalar expf, which no loop around it vectorizes (pip's llvmlite has no SVML), and
    # the exp of every (step, state) is most of the scan's time. Here: x = k ln2 + r with |r| <= ln2/2 (ln2
    # in two parts, so r keeps its bits), exp(r) by the degree-7 polynomial of Cephes' expf, 2^k built in
    # the exponent bits. Relative error 6e-8 on [-87, 88]; below -87.3 it returns 0 (libm: a subnormal,
    # under 1.2e-38), above 88.7 inf; NaN stays NaN.
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return lambda x: math.exp(x)
    f = np.float32

    def impl(x):
        xc = x if not (x < f(-87.0)) else f(-87.0)  # written so that NaN passes through
        xc = xc if not (xc > f(88.0)) else f(88.0)
        k = math.floor(xc * f(1.4426950408889634) + f(0.5))
        r = (xc - k * f(0.693359375)) - k * f(-2.12194440e-4)
        p = f(1.9875691500e-4)
        p = p * r + f(1.3981999507e-3)
        p = p * r + f(8.3334519073e-3)
        p = p * r + f(4.1665795894e-2)
        p = p * r + f(1.6666665459e-1)
        p = p * r + f(5.0000001201e-1)
        p = (p * r * r + r + f(1.0)) * _bits_to_float32(np.int32(k + f(127.0)) << 23)
        p = p if not (x < f(-87.3)) else f(0.0)
        return p if not (x > f(88.7)) else f(np.inf)

    return impl


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(u, dt, A, Bt, Ct, D, h0, save, out, h_last, saved):  # pragma: no cover
    b, d, L = u.shape
    n = A.shape[1]
    for job in prange(b * d):
        i, c = job // d, job % d
        h = h0[i, c].copy()
        for t in range(L):
            if save > 0 and t % save == 0:
                saved[i, c, t // save] = h
            dtt = dt[i, c, t]
            ut = u[i, c, t]
            du = dtt * ut
            acc = 0.0
            for k in range(n):
                h[k] = exp_vec(dtt * A[c, k]) * h[k] + du * Bt[i, t, k]
                acc += h[k] * Ct[i, t, k]
            out[i, c, t] = acc + D[c] * ut
        h_last[i, c] = h


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(u, dt, A, Bt, Ct, D, save, saved, gout, gh_last, groups, gu, gdt_out, gA, gD, gB, gC,
              gh0):  # pragma: no cover
    b, d, L = u.shape
    n = A.shape[1]
    per = (d + groups - 1) // groups
    n_chunks = (L + save - 1) // save
    for job in prange(b * groups):
        i, grp = job // groups, job % groups
        hs = np.empty((save + 1, n), dtype=saved.dtype)
        a = np.empty((save, n), dtype=saved.dtype)
        for c in range(grp * per, min(d, (grp + 1) * per)):
            g = gh_last[i, c].copy()
            sD = 0.0
            for ch in range(n_chunks - 1, -1, -1):
                s = ch * save
                e = min(s + save, L)
                hs[0] = saved[i, c, ch]
                for t in range(s, e):  # recompute the chunk's decays and states
                    dtt = dt[i, c, t]
                    du = dtt * u[i, c, t]
                    for k in range(n):
                        a[t - s, k] = exp_vec(dtt * A[c, k])
                        hs[t - s + 1, k] = a[t - s, k] * hs[t - s, k] + du * Bt[i, t, k]
                for t in range(e - 1, s - 1, -1):
                    r = t - s
                    dtt = dt[i, c, t]
                    ut = u[i, c, t]
                    gy = gout[i, c, t]
                    sD += gy * ut
                    gut = gy * D[c]
                    du = dtt * ut
                    gdt = 0.0
                    for k in range(n):
                        g[k] += gy * Ct[i, t, k]
                        gC[grp, i, t, k] += gy * hs[r + 1, k]
                        gB[grp, i, t, k] += g[k] * du
                        gut += g[k] * dtt * Bt[i, t, k]
                        gda = g[k] * a[r, k] * hs[r, k]  # ∂loss/∂(Δ_t A_k)
                        gdt += gda * A[c, k] + g[k] * Bt[i, t, k] * ut
                        gA[i, c, k] += gda * dtt
                        g[k] *= a[r, k]
                    gu[i, c, t] = gut
                    gdt_out[i, c, t] = gdt
            gh0[i, c] = g
            gD[i, c] = sD


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _scan_forward(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor, Ct: torch.Tensor,
             D: torch.Tensor, h0: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dt: Δ itself (bias added, softplus applied); Bt, Ct: B and C time-major, (b, L, n) contiguous.
    -> y = C·h + D u (b, d, L), last state (b, d, n), states every SAVE steps for the backward (b, d, k, n)."""
    numba.set_num_threads(_threads())
    b, d, L = u.shape
    n = A.shape[1]
    out = torch.empty_like(u)
    h_last = torch.empty(b, d, n, dtype=u.dtype)
    saved = torch.empty(b, d, (L + SAVE - 1) // SAVE if grad else 0, n, dtype=u.dtype)
    _forward(u.numpy(), dt.numpy(), A.numpy(), Bt.numpy(), Ct.numpy(), D.numpy(), h0.numpy(), SAVE if grad else 0,
             out.numpy(), h_last.numpy(), saved.numpy())
    return out, h_last, saved


def _scan_forward_fake(u, dt, A, Bt, Ct, D, h0, grad):
    b, d, L = u.shape
    n = A.shape[1]
    return (torch.empty_like(u), u.new_empty(b, d, n),
            u.new_empty(b, d, (L + SAVE - 1) // SAVE if grad else 0, n))


def _scan_backward(gout: torch.Tensor | None, gh_last: torch.Tensor | None, u: torch.Tensor, dt: torch.Tensor,
                   A: torch.Tensor, Bt: torch.Tensor, Ct: torch.Tensor, D: torch.Tensor,
                   saved: torch.Tensor) -> list[torch.Tensor]:
    """-> the gradients of u, dt, A, Bt, Ct, D, h0."""
    if saved.shape[2] == 0:
        raise RuntimeError("the numba scan ran without saving states (no grad was needed then)")
    numba.set_num_threads(_threads())
    b, d, L = u.shape
    n = A.shape[1]
    gout = torch.zeros_like(u) if gout is None else gout
    gh_last = u.new_zeros(b, d, n) if gh_last is None else gh_last
    groups = max(1, min(d, -(-_threads() // b)))  # enough jobs for every thread
    gout, gh_last = gout.to(u.dtype).contiguous(), gh_last.to(u.dtype).contiguous()
    gu, gdt = torch.empty_like(u), torch.empty_like(u)
    gA = torch.zeros(b, d, n, dtype=u.dtype)
    gD = torch.empty(b, d, dtype=u.dtype)
    gB = torch.zeros(groups, b, L, n, dtype=u.dtype)
    gC = torch.zeros(groups, b, L, n, dtype=u.dtype)
    gh0 = torch.empty(b, d, n, dtype=u.dtype)
    _backward(u.numpy(), dt.numpy(), A.numpy(), Bt.numpy(), Ct.numpy(), D.numpy(), SAVE, saved.numpy(),
              gout.numpy(), gh_last.numpy(), groups, gu.numpy(), gdt.numpy(), gA.numpy(), gD.numpy(), gB.numpy(),
              gC.numpy(), gh0.numpy())
    return [gu, gdt, gA.sum(0), gB.sum(0), gC.sum(0), gD.sum(0), gh0]


def _scan_backward_fake(gout, gh_last, u, dt, A, Bt, Ct, D, saved):
    return [torch.empty_like(t) for t in (u, dt, A, Bt, Ct, D)] + [u.new_empty(u.shape[0], u.shape[1], A.shape[1])]


def _save(inputs, outputs):
    u, dt, A, Bt, Ct, D, _h0, _grad = inputs
    return (u, dt, A, Bt, Ct, D, outputs[2]), ()


# torch.compile traces a mixer through the custom op without a graph break
_SCAN = KernelOp("mambadyn::numba_scan", forward=_scan_forward, forward_fake=_scan_forward_fake, save=_save,
                 backward=_scan_backward, backward_fake=_scan_backward_fake, n_outputs=2)


def selective_scan_numba(
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
    """Fused CPU scan with the contract of ``selective_scan_ref``; differentiable in every input."""
    dt = compute_dtype(u, delta, A, B, C)
    batch, d, _ = u.shape
    n = A.shape[1]

    def prep(t):
        return t.to(dt).contiguous()

    # inference (no grad) takes the forward-only path: no saved states
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                           for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    h0 = u.new_zeros(batch, d, n, dtype=dt) if initial_state is None else prep(initial_state)
    # Δ's bias and softplus and the SiLU gate are the PyTorch backends' own steps around the kernel (see the
    # module docstring); autograd chains them. D stays in the kernel.
    # Δ is made contiguous first: a strided Δ through the bias add broke the compiled backward (a view error
    # under torch.compile, tests/test_numba_scan.py)
    delta = prepare_delta(prep(delta), delta_bias, delta_softplus)
    y, h_last = _SCAN(
        prep(u), delta.contiguous(), prep(A), prep(B.transpose(1, 2)), prep(C.transpose(1, 2)),  # time-major, once
        u.new_zeros(d, dtype=dt) if D is None else prep(D), h0, grad)
    out = finish(y, u, None, z, u.dtype)
    return (out, h_last) if return_last_state else out


def numba_unusable_reason(u: torch.Tensor) -> str | None:
    return None if u.device.type == "cpu" else f"the numba scan runs on CPU tensors, not {u.device.type}"


__all__ = ["selective_scan_numba"]
