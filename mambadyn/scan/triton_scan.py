"""Fused selective scan in Triton: forward and backward, registered as backend ``"triton"``.

One program owns one batch row and ``block_d`` channels, and walks the sequence in chunks of
``chunk`` steps. Inside a chunk it takes the n states one after another: for state i, the recurrence
h_t = a_t h_{t-1} + b_t over the chunk is a parallel ``tl.associative_scan`` along time on a
(block_d, chunk) register tile, and C_t h_t adds into y. Time, not states, is the parallel axis,
because B_i and C_i are then per-element loads rather than values every thread must broadcast, and
the scan runs mostly inside each thread. The carried state enters as the chunk's first b, so the
scan's b output is the state itself. Δ's bias and softplus, the D skip and the SiLU gate are fused,
so u, Δ, z are read once and y is written once.

Backward walks the chunks in reverse, with its own launch shape (narrower programs: it holds more
per element, and wider ones spill). Forward saves the state at each backward chunk's start, so a
chunk's states are recomputed from it, and the adjoint g_t = C_t ȳ_t + a_{t+1} g_{t+1} is a reverse
scan. The decay's gradient uses a_t h_{t-1} = h_t - b_t, so h_{t-1} is never needed. dB and dC sum
over channels, so programs add their partial sums atomically into float32 buffers, with relaxed
ordering: Triton's default (acq_rel) fences every atomic, which cost 1 ms of the 3.2 ms fwd+bwd.

Where time goes is read off the SASS, which compiles without a GPU (``mambadyn.scan.sass``,
``benchmarks/kernel_sass.py``): a thread holds runs of 8 (16-bit inputs) or 4 (float32) consecutive
steps, so per-element selects on the step index are replaced by splitting the run ends out of
registers (``_chunk_end``), and the reverse scan, which Triton lowers as flip + scan + flip at ~15
shuffles per element, becomes a gather-flip where that is cheaper (``_flip``).

Tried and measured slower on the H100 (bf16, batch 8, d 1536, L 2048; results/scan_gpu_sweeps.json):
all n states in one (block_d, n, chunk) tile (fwd+bwd 5.1 ms against 3.2 ms for this kernel, both
with acq_rel atomics); a per-step sequential walk (commit a8c5dcd, 7.7 ms: Triton waits for each
step's loads); one channel per thread with the whole chunk in its registers (6.6 ms: too few threads
to hide latency); two states per pass in the forward (236 registers, so fewer warps; not faster).
Counted in SASS and dropped: a (step, state, channel, state) tile with 8 steps and 4 states in each
thread, so the scan is serial in registers (Triton's default layout gives that), costs 22
instructions per element against 15, because the per-(channel, step) work (softplus, gate, loads)
is then repeated on every lane of a channel; running the adjoint on reversed loads with a single flip
takes 255 registers.

Inputs may be float32, bfloat16 or float16; the state and all arithmetic are float32. float64
inputs are left to the PyTorch backends.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .registry import register_backend

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _affine(a1, b1, a2, b2):
    # composition of h -> a1 h + b1 then h -> a2 h + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _chunk_end(x, R: tl.constexpr, T: tl.constexpr, V: tl.constexpr, LAST: tl.constexpr):
    # (R, T) -> (R,): x at the chunk's last step (LAST) or first. A thread holds runs of V consecutive
    # steps, so the run ends are split out of its registers and only T // V candidates are compared; a
    # select and an add on every element cost 17% of the forward's inner loop
    G: tl.constexpr = T // V
    y = x
    if V >= 8:
        y0, y1 = tl.split(tl.reshape(y, (R, G, 4, 2)))
        y = y1 if LAST else y0
    if V >= 4:
        y0, y1 = tl.split(tl.reshape(y, (R, G, 2, 2)))
        y = y1 if LAST else y0
    if V >= 2:
        y0, y1 = tl.split(tl.reshape(y, (R, G, 1, 2)))
        y = y1 if LAST else y0
    y = tl.reshape(y, (R, G))
    return tl.sum(tl.where(tl.arange(0, G)[None, :] == (G - 1 if LAST else 0), y, 0.0), axis=1)


@triton.jit
def _flip(x, R: tl.constexpr, T: tl.constexpr):
    # (R, T) reversed along T by a gather across lanes. A reverse associative_scan flips its inputs and
    # output with ~5x the shuffles; this wins where a thread holds 4 steps (float32) and loses where
    # it holds 8 (16-bit inputs), so the backward picks per dtype (GATHER_FLIP)
    idx = (T - 1 - tl.arange(0, T))[None, :] + tl.zeros((R, T), dtype=tl.int32)
    return tl.gather(x, idx, 1)


@triton.jit
def _delta(ptr, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    # Δ at ptr with its bias (and softplus); zero where masked, so a = 1 and b = 0 there
    x = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + bias[:, None]
    if SOFTPLUS:
        x = _softplus(x)
    return tl.where(mask, x, 0.0)


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@triton.jit
def _fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, states_ptr, last_ptr,
    d, n, L,
    s_ub, s_ud, s_bb, s_bn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_T: tl.constexpr,
    BLOCK_D: tl.constexpr, N: tl.constexpr, T: tl.constexpr, V: tl.constexpr,
):
    # time-parallel, state-serial: a (BLOCK_D, T) tile per state index, scanned along T
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, T)
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = (pid_b * d + offs_d[:, None]) * n + offs_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)

    n_chunks = (L + T - 1) // T
    for c in range(0, n_chunks):
        # the backward's chunks are SAVE_T long (a multiple of T): it restarts from these states
        if SAVE_STATES and (c * T) % SAVE_T == 0:
            saved = (c * T // SAVE_T) * (tl.num_programs(0) * d) + pid_b * d + offs_d[:, None]
            tl.store(states_ptr + saved * n + offs_n[None, :], h, mask=mask_dn)
        t = c * T + offs_t
        mask_t = t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :]
        u = tl.load(u_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
        dl = _delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, SOFTPLUS)  # past L the state passes through
        dlu = dl * u
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        bc = pid_b * s_bb + t
        A_n = tl.load(A_ptr + offs_d * n, mask=mask_d, other=0.0).to(tl.float32)
        B_n = tl.load(B_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        for i in range(0, n):
            A_i, B_i, C_i = A_n, B_n, C_n
            # the next state's inputs load while this one computes (Triton would wait for each load)
            more = i + 1 < n
            A_n = tl.load(A_ptr + offs_d * n + i + 1, mask=mask_d & more, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            h_i = tl.sum(tl.where(offs_n[None, :] == i, h, 0.0), axis=1)
            a = tl.exp2(dl * (A_i * LOG2E)[:, None])
            b = dlu * B_i[None, :]
            # the carried state enters at the first step, so the scan's b is the state itself
            b = tl.where(offs_t[None, :] == 0, b + a * h_i[:, None], b)
            _, hs = tl.associative_scan((a, b), 1, _affine)
            y += hs * C_i[None, :]
            h_last = _chunk_end(hs, BLOCK_D, T, V, True)
            h = tl.where(offs_n[None, :] == i, h_last[:, None], h)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + x_off, y.to(out_ptr.dtype.element_ty), mask=m_dt)
    tl.store(last_ptr + state_off, h, mask=mask_dn)


@triton.jit
def _bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, g0_ptr,
    d, n, L,
    s_ub, s_ud, s_bb, s_bn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, GATHER_FLIP: tl.constexpr,
    BLOCK_D: tl.constexpr, N: tl.constexpr, T: tl.constexpr, V: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, N)
    offs_t = tl.arange(0, T)
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = (pid_b * d + offs_d[:, None]) * n + offs_n[None, :]
    # g after the last step: the last state's incoming gradient (carried through a = 1 past L - 1)
    if HAS_DLAST:
        g = tl.load(dlast_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    n_chunks = (L + T - 1) // T
    for cc in range(0, n_chunks):
        c = n_chunks - 1 - cc
        t = c * T + offs_t
        mask_t = t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :]
        # only what the state loop needs stays live through it; u, z, dout and the raw delta are read
        # again after it (from cache), because holding them through it spilled registers
        dl = _delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, SOFTPLUS)
        m_next = mask_d[:, None] & (t + 1 < L)[None, :]
        dl_next = _delta(dl_ptr + x_off + 1, m_next, bias, HAS_BIAS, SOFTPLUS)  # a = 1 from step L - 1 on
        dlu = dl * tl.load(u_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
        dy = tl.load(dout_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        gB = tl.zeros((BLOCK_D, T), dtype=tl.float32)  # sum over states of g_t B_t
        gdecay = tl.zeros((BLOCK_D, T), dtype=tl.float32)  # sum over states of g_t a_t h_{t-1} A
        bc = pid_b * s_bb + t
        st = states_ptr + (c * (tl.num_programs(0) * d) + pid_b * d + offs_d) * n
        A_n = tl.load(A_ptr + offs_d * n, mask=mask_d, other=0.0).to(tl.float32)
        B_n = tl.load(B_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        h_n = tl.load(st, mask=mask_d, other=0.0)
        for i in range(0, n):
            A_i, B_i, C_i, h_i = A_n, B_n, C_n, h_n
            more = i + 1 < n
            A_n = tl.load(A_ptr + offs_d * n + i + 1, mask=mask_d & more, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            h_n = tl.load(st + i + 1, mask=mask_d & more, other=0.0)
            # recompute the chunk's states
            A2_i = A_i * LOG2E
            a = tl.exp2(dl * A2_i[:, None])
            b = dlu * B_i[None, :]
            _, hs = tl.associative_scan((a, tl.where(offs_t[None, :] == 0, b + a * h_i[:, None], b)), 1, _affine)
            y += hs * C_i[None, :]
            tl.atomic_add(dC_ptr + bc + i * s_bn, tl.sum(dy * hs, axis=0), mask=mask_t, sem="relaxed")
            # adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}; the next chunk's g enters at the last step
            g_i = tl.sum(tl.where(offs_n[None, :] == i, g, 0.0), axis=1)
            a_next = tl.exp2(dl_next * A2_i[:, None])
            r = C_i[None, :] * dy
            r = tl.where(offs_t[None, :] == T - 1, r + a_next * g_i[:, None], r)
            if GATHER_FLIP:
                _, gs = tl.associative_scan((_flip(a_next, BLOCK_D, T), _flip(r, BLOCK_D, T)), 1, _affine)
                gs = _flip(gs, BLOCK_D, T)
            else:
                _, gs = tl.associative_scan((a_next, r), 1, _affine, reverse=True)
            g_first = _chunk_end(gs, BLOCK_D, T, V, False)
            g = tl.where(offs_n[None, :] == i, g_first[:, None], g)
            tl.atomic_add(dB_ptr + bc + i * s_bn, tl.sum(gs * dlu, axis=0), mask=mask_t, sem="relaxed")
            gB += gs * B_i[None, :]
            decay = gs * (hs - b)  # g_t a_t h_{t-1}
            gdecay += decay * A_i[:, None]
            dA_i = tl.sum(decay * dl, axis=1)
            dA_acc = tl.where(offs_n[None, :] == i, dA_acc + dA_i[:, None], dA_acc)
        u = tl.load(u_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
        du = gB * dl
        ddl = gB * u + gdecay
        if HAS_D:
            y += Dv[:, None] * u
            dD_acc += tl.sum(dy * u, axis=1)
            du += dy * Dv[:, None]
        if HAS_Z:
            dout = tl.load(dout_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
            zz = tl.load(z_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            tl.store(dz_ptr + x_off, (dout * y * sz * (1.0 + zz * (1.0 - sz))).to(dz_ptr.dtype.element_ty), mask=m_dt)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(_delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, False))  # softplus'
        ddl = tl.where(m_dt, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + x_off, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddl_ptr + x_off, ddl.to(ddl_ptr.dtype.element_ty), mask=m_dt)

    tl.store(g0_ptr + state_off, g, mask=mask_dn)
    tl.atomic_add(dA_ptr + offs_d[:, None] * n + offs_n[None, :], dA_acc, mask=mask_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")


@dataclass(frozen=True)
class Tuning:
    """One kernel's launch shape: ``block_d`` channels per program, ``chunk`` steps per parallel scan
    (both powers of two), ``num_warps`` warps per program."""

    block_d: int
    chunk: int
    num_warps: int


# by input element size: the fastest of the sweeps in results/scan_gpu_sweeps.json (H100, batch 8,
# d 1536, n 16). The backward has its own, because it holds more per element: wider programs spill
FWD_TUNING = {2: Tuning(block_d=8, chunk=64, num_warps=1), 4: Tuning(block_d=4, chunk=128, num_warps=2)}
BWD_TUNING = {2: Tuning(block_d=2, chunk=128, num_warps=1), 4: Tuning(block_d=2, chunk=128, num_warps=1)}
# ... and the forward's where batch * d is too small for FWD_TUNING to fill the GPU, by rows (batch * d)
# per SM: fewer, wider programs with more warps, and longer chunks when no backward needs the states
# at 128-step intervals. Fastest in the few-rows sweeps of results/scan_gpu_sweeps.json (batch 1-4,
# d 768-2560, L 2048, bf16): 1.3-3.8x faster than FWD_TUNING there (results/scan_gpu_small.json)
FULL_ROWS_PER_SM = 80
FWD_TUNING_MID_ROWS, MID_ROWS_PER_SM = Tuning(block_d=4, chunk=128, num_warps=1), 32
FWD_TUNING_FEW_ROWS = {False: Tuning(block_d=2, chunk=512, num_warps=2),   # inference
                       True: Tuning(block_d=2, chunk=128, num_warps=1)}    # training


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=256)
def _tunings(element_size: int, block_d=None, chunk=None, num_warps=None, bwd_block_d=None, bwd_chunk=None,
             bwd_num_warps=None, rows: int | None = None, sms: int | None = None,
             need_grad: bool = True) -> tuple[Tuning, Tuning]:
    """The forward and backward launch shapes: the knobs given, the rest from the tables above.
    ``rows`` (batch * d) and ``sms`` (the GPU's SM count), where known and no forward knob is given,
    pick the forward for few rows."""
    size = 2 if element_size <= 2 else 4
    fwd = FWD_TUNING[size]
    if (block_d, chunk, num_warps) == (None, None, None) and rows is not None and sms is not None:
        if rows < MID_ROWS_PER_SM * sms:
            fwd = FWD_TUNING_FEW_ROWS[need_grad]
        elif rows < FULL_ROWS_PER_SM * sms:
            fwd = FWD_TUNING_MID_ROWS
    fwd = Tuning(int(block_d or fwd.block_d), int(chunk or fwd.chunk), int(num_warps or fwd.num_warps))
    bwd = BWD_TUNING[size]
    # the backward restarts from states the forward saves at its chunk starts, so its chunk is a multiple
    bwd = Tuning(int(bwd_block_d or bwd.block_d), int(bwd_chunk or max(bwd.chunk, fwd.chunk)),
                 int(bwd_num_warps or bwd.num_warps))
    for name, v in (("block_d", fwd.block_d), ("chunk", fwd.chunk), ("bwd_block_d", bwd.block_d),
                    ("bwd_chunk", bwd.chunk)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"selective_scan_triton: {name} must be a power of two, got {v}")
    if bwd.chunk < fwd.chunk:
        raise ValueError(
            f"selective_scan_triton: bwd_chunk ({bwd.chunk}) must be at least chunk ({fwd.chunk})")
    return fwd, bwd


def _run_length(element_size: int, chunk: int) -> int:
    # the steps one thread holds: Triton loads 16 bytes per thread along time (a layout that differs only
    # costs a layout conversion, never a wrong answer)
    return min(16 // element_size, chunk)


def _fwd_meta(fwd: Tuning, bwd: Tuning, element_size: int, n: int, save_states: bool) -> dict:
    # the forward's launch-shape constexprs and num_warps (mambadyn.scan.sass compiles with these too)
    return dict(SAVE_STATES=save_states, SAVE_T=bwd.chunk, BLOCK_D=fwd.block_d, N=triton.next_power_of_2(n),
                T=fwd.chunk, V=_run_length(element_size, fwd.chunk), num_warps=fwd.num_warps)


def _bwd_meta(bwd: Tuning, element_size: int, n: int) -> dict:
    # the backward's, likewise
    V = _run_length(element_size, bwd.chunk)
    return dict(GATHER_FLIP=V == 4, BLOCK_D=bwd.block_d, N=triton.next_power_of_2(n), T=bwd.chunk, V=V,
                num_warps=bwd.num_warps)


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
