"""The Triton kernels of the selective scan, forward and backward (launched by ``triton_scan``).

One program owns one batch row and ``block_d`` channels, and walks the sequence in chunks of
``chunk`` steps. Inside a chunk it takes the n states one after another: for state i, the recurrence
h_t = a_t h_{t-1} + b_t over the chunk is a parallel ``tl.associative_scan`` along time on a
(block_d, chunk) register tile, and C_t h_t adds into y. Time, not states, is the parallel axis,
because B_i and C_i are then per-element loads rather than values every thread must broadcast, and
the scan runs mostly inside each thread. The carried state enters as the chunk's first b, so the
scan's b output is the state itself. Between chunks the n carried states live in memory (the last
state's output buffer, which stays in L1), stored by the lanes holding the chunk's last step and
loaded a state ahead by those holding the next chunk's first: no cross-lane sum sits on the loop's
critical path. Δ's bias and softplus, the D skip and the SiLU gate are fused, so u, Δ, z are read
once and y is written once; each chunk prefetches the next chunk's inputs into L2.

All of u, Δ, z, the output and their gradients share one set of strides (time contiguous), and B, C, dB,
dC another, so the mixer can hand in views of its projections' outputs without copies.

Backward walks the chunks in reverse, with its own launch shape (narrower programs: it holds more
per element, and wider ones spill). Forward saves the state at each backward chunk's start, so a
chunk's states are recomputed from it, and the adjoint g_t = C_t ȳ_t + a_{t+1} g_{t+1} is a reverse
scan, whose carry between chunks lives in memory or in registers (``G_IN_MEMORY``, a tuning knob;
memory under a register cap is the tuned default). The decay's gradient uses a_t h_{t-1} = h_t - b_t,
so h_{t-1} is never needed. dB and dC sum over channels, so programs add their partial sums atomically
into float32 buffers, with relaxed ordering: Triton's default (acq_rel) fences every atomic, and the sums
need no ordering. Both kernels take A, or (``A_LOG``, for the fused mixer) the model's A_log.

Where time goes is read off the SASS, which compiles without a GPU (``tests/support/sass.py``,
``benchmarks/kernel_sass.py``): a thread holds runs of 8 (16-bit inputs) or 4 (float32) consecutive
steps, so per-element selects on the step index are replaced by splitting the run ends out of
registers (``_chunk_end``), and the reverse scan, which Triton lowers as flip + scan + flip at ~15
shuffles per element, becomes flips of our own around a forward scan: one mirror-lane shuffle per
register for 16-bit tiles (``_flip_runs``, inline PTX), a gather for float32 (``_flip``). The counts
behind each choice are in ``results/kernel_sass.json`` and ``results/triton_scan_history.md``.

Inputs may be float32, bfloat16 or float16; the state and all arithmetic are float32. float64
inputs are left to the PyTorch backends.


Variants tried and dropped, with their measurements: ``results/triton_scan_history.md``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .launch import launcher

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _affine(a1, b1, a2, b2):
    # composition of h -> a1 h + b1 then h -> a2 h + b2
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _run_ends(x, R: tl.constexpr, T: tl.constexpr, V: tl.constexpr, LAST: tl.constexpr = True):
    # (R, T) -> (R, T // V): x at the last (LAST) or first step of each thread's run of V consecutive
    # steps, split out of its registers: a select on the step index would cost one per element
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
    return tl.reshape(y, (R, G))


@triton.jit
def _chunk_end(x, R: tl.constexpr, T: tl.constexpr, V: tl.constexpr, LAST: tl.constexpr):
    # (R, T) -> (R,): x at the chunk's last step (LAST) or first, from the run ends: only T // V
    # candidates are compared; a select and an add on every element cost 17% of the forward's inner loop
    G: tl.constexpr = T // V
    y = _run_ends(x, R, T, V, LAST)
    return tl.sum(tl.where(tl.arange(0, G)[None, :] == (G - 1 if LAST else 0), y, 0.0), axis=1)


@triton.jit
def _store_chunk_end(ptr, x, mask, R: tl.constexpr, T: tl.constexpr, V: tl.constexpr, LAST: tl.constexpr):
    # x (R, T) at the chunk's last step (LAST) or first, stored at ptr (R,) by the lanes that hold it:
    # the carry between chunks without _chunk_end's cross-lane sum (the next chunk reads it back)
    G: tl.constexpr = T // V
    at = (tl.arange(0, G) == (G - 1 if LAST else 0))[None, :]
    tl.store(ptr[:, None] + tl.zeros((R, G), dtype=tl.int32), _run_ends(x, R, T, V, LAST), mask=mask[:, None] & at)


@triton.jit
def _run_starts(row_off, start, L, T: tl.constexpr, V: tl.constexpr):
    # (R, T // V) offsets of the first step of each thread's run in the chunk that starts at ``start``,
    # clamped into the sequence: one address per 16-byte run, for _prefetch
    return row_off[:, None] + tl.minimum(tl.maximum(start + tl.arange(0, T // V)[None, :] * V, 0), L - 1)


@triton.jit
def _flip(x, R: tl.constexpr, T: tl.constexpr):
    # (R, T) reversed along T by a gather across lanes. A reverse associative_scan flips its inputs and
    # output with ~5x the shuffles; this wins where a thread holds 4 steps (float32) and loses where
    # it holds 8 (16-bit inputs), so the backward picks per dtype (GATHER_FLIP)
    idx = (T - 1 - tl.arange(0, T))[None, :] + tl.zeros((R, T), dtype=tl.int32)
    return tl.gather(x, idx, 1)


def _flip_asm(lanes: int) -> str:
    # thread j-th register <- the mirror lane's (7 - j)-th, for ``lanes`` lanes per row (see _flip_runs)
    return "".join(f"shfl.sync.bfly.b32 ${j}, ${15 - j}, {lanes - 1}, 31, -1;" for j in range(8))


_FLIP16_ASM, _FLIP32_ASM = tl.constexpr(_flip_asm(16)), tl.constexpr(_flip_asm(32))


@triton.jit
def _flip_runs(x, LANES: tl.constexpr):
    # (R, T) reversed along T where each thread holds one row's run of 8 consecutive steps and a row's T
    # steps lie on LANES (16 or 32) consecutive lanes of one warp (the backward's 16-bit tiles, chunk 128 or
    # 256, one warp): a thread's 8 registers are exchanged with the mirror lane's (lane ^ (LANES - 1)) in
    # reverse order, one butterfly shuffle each, where Triton's flip exchanges each value over log2(T) rounds
    y = tl.inline_asm_elementwise(_FLIP32_ASM if LANES == 32 else _FLIP16_ASM,
                                  "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r,r,r,r,r,r",
                                  [x.to(tl.int32, bitcast=True)], dtype=tl.int32, is_pure=True, pack=8)
    return y.to(tl.float32, bitcast=True)


@triton.jit
def _prefetch(ptr):
    # an L2 prefetch of each address (no register is written): the next chunk's inputs arrive while this
    # chunk computes. Loading them into registers instead costs registers, hence warps per SM
    # (results/triton_scan_history.md)
    return tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptr], dtype=tl.int32,
                                     is_pure=False, pack=1)


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
def _load_A(ptr, mask, A_LOG: tl.constexpr):
    # A, or with A_LOG the model's parameter A_log, A = -exp(A_log): the fused mixer hands A_log in, which
    # saves the eager step the exp and negation kernels of every layer, both ways
    a = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    if A_LOG:
        a = -tl.exp(a)
    return a


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))))


@launcher
@triton.jit
def fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, states_ptr, last_ptr,
    d, n, L,
    s_ub, s_ud, s_bb, s_bn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
    SOFTPLUS: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_T: tl.constexpr,
    BLOCK_D: tl.constexpr, N: tl.constexpr, T: tl.constexpr, V: tl.constexpr, PREFETCH: tl.constexpr = False,
    WIDE: tl.constexpr = False, A_LOG: tl.constexpr = False,
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
    # the carried states live in last_ptr (L1-resident), not in registers: a (block_d, n) register tile
    # took a select and a cross-lane sum to read one state and another sum to write it back, each a chain
    # of shuffles in the loop (counts in results/triton_scan_history.md)
    state_off = (pid_b * d + offs_d[:, None]) * n + offs_n[None, :]
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    tl.store(last_ptr + state_off, h, mask=mask_dn)
    if SAVE_STATES:
        tl.store(states_ptr + state_off, h, mask=mask_dn)
    row = last_ptr + (pid_b * d + offs_d) * n

    n_chunks = (L + T - 1) // T
    for c in range(0, n_chunks):
        # the previous chunk's stores (by the lanes at its last step) are read by the lanes at this
        # chunk's first step
        tl.debug_barrier()
        # the backward's chunks are SAVE_T long (a multiple of T): it restarts from these states
        save = (c > 0) & ((c * T) % SAVE_T == 0)
        saved = states_ptr + ((c * T // SAVE_T) * (tl.num_programs(0) * d) + pid_b * d + offs_d) * n
        t = c * T + offs_t
        mask_t = t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :]
        u = tl.load(u_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
        if WIDE:
            # never performed (L < 0 is false): a 16-bit load of this shape among the chunk's loads makes
            # Triton give them all 8 steps per thread, as for 16-bit inputs, where float32 gets 4
            never = m_dt & (L < 0)
            u += tl.load(u_ptr.to(tl.pointer_type(tl.bfloat16)) + x_off, mask=never, other=0.0).to(tl.float32)
        dl = _delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, SOFTPLUS)  # past L the state passes through
        dlu = dl * u
        if PREFETCH:  # the next chunk
            pf = _run_starts(pid_b * s_ub + offs_d * s_ud, c * T + T, L, T, V)
            _prefetch(u_ptr + pf)
            _prefetch(dl_ptr + pf)
            if HAS_Z:
                _prefetch(z_ptr + pf)
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        bc = pid_b * s_bb + t
        A_n = _load_A(A_ptr + offs_d * n, mask_d, A_LOG)
        B_n = tl.load(B_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + bc, mask=mask_t, other=0.0).to(tl.float32)
        h_n = tl.load(row, mask=mask_d, other=0.0)
        for i in range(0, n):
            A_i, B_i, C_i, h_i = A_n, B_n, C_n, h_n
            # the next state's inputs load while this one computes (Triton would wait for each load)
            more = i + 1 < n
            A_n = _load_A(A_ptr + offs_d * n + i + 1, mask_d & more, A_LOG)
            B_n = tl.load(B_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc + (i + 1) * s_bn, mask=mask_t & more, other=0.0).to(tl.float32)
            h_n = tl.load(row + i + 1, mask=mask_d & more, other=0.0)
            if SAVE_STATES:
                tl.store(saved + i, h_i, mask=mask_d & save)
            a = tl.exp2(dl * (A_i * LOG2E)[:, None])
            b = dlu * B_i[None, :]
            # the carried state enters at the first step, so the scan's b is the state itself
            b = tl.where(offs_t[None, :] == 0, b + a * h_i[:, None], b)
            _, hs = tl.associative_scan((a, b), 1, _affine)
            y += hs * C_i[None, :]
            _store_chunk_end(row + i, hs, mask_d, BLOCK_D, T, V, True)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_off, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + x_off, y.to(out_ptr.dtype.element_ty), mask=m_dt)


@launcher
@triton.jit
def bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddl_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, g0_ptr, outz_ptr,
    d, n, L,
    s_ub, s_ud, s_bb, s_bn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DLAST: tl.constexpr,
    SOFTPLUS: tl.constexpr, GATHER_FLIP: tl.constexpr, FLIP_RUNS: tl.constexpr, STORE_OUTZ: tl.constexpr,
    G_IN_MEMORY: tl.constexpr,
    BLOCK_D: tl.constexpr, N: tl.constexpr, T: tl.constexpr, V: tl.constexpr, PREFETCH: tl.constexpr = False,
    A_LOG: tl.constexpr = False,
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
    # g after the last step: the last state's incoming gradient (carried through a = 1 past L - 1). With
    # G_IN_MEMORY the carried g lives in g0_ptr (which ends up holding g before the first step), as the
    # forward's state does; else in a (block_d, n) register tile, which costs a cross-lane sum to read a
    # state and another to write it, but fewer registers than the loads and stores (uncapped, G_IN_MEMORY
    # is slower where 16-bit inputs fill the GPU; capped at 168 registers it is as fast or faster
    # everywhere measured: results/triton_scan_history.md)
    if HAS_DLAST:
        g = tl.load(dlast_ptr + state_off, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    if G_IN_MEMORY:
        tl.store(g0_ptr + state_off, g, mask=mask_dn)
    grow = g0_ptr + (pid_b * d + offs_d) * n
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)

    n_chunks = (L + T - 1) // T
    for cc in range(0, n_chunks):
        if G_IN_MEMORY:
            tl.debug_barrier()  # the previous chunk's stores of g are read by other lanes
        c = n_chunks - 1 - cc
        t = c * T + offs_t
        mask_t = t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        x_off = pid_b * s_ub + offs_d[:, None] * s_ud + t[None, :]
        # only what the state loop needs stays live through it; u, z, dout and the raw delta are read
        # again after it (from cache), because holding them through it spilled registers
        dl = _delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, SOFTPLUS)
        if PREFETCH:  # the chunk before this one, which comes next
            pf = _run_starts(pid_b * s_ub + offs_d * s_ud, c * T - T, L, T, V)
            _prefetch(u_ptr + pf)
            _prefetch(dl_ptr + pf)
            _prefetch(dout_ptr + pf)
            if HAS_Z:
                _prefetch(z_ptr + pf)
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
        A_n = _load_A(A_ptr + offs_d * n, mask_d, A_LOG)
        # B and C as (block_d, T) tiles, each row the same: a thread loads its own steps (16-bit: 8 at once)
        # in the tiles' layout, where a (T,) vector would be laid out for loading and then shuffled into it
        bc2 = tl.broadcast_to(bc[None, :], (BLOCK_D, T))
        m_t2 = tl.broadcast_to(mask_t[None, :], (BLOCK_D, T))
        B_n = tl.load(B_ptr + bc2, mask=m_t2, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + bc2, mask=m_t2, other=0.0).to(tl.float32)
        h_n = tl.load(st, mask=mask_d, other=0.0)
        if G_IN_MEMORY:
            g_n = tl.load(grow, mask=mask_d, other=0.0)
        for i in range(0, n):
            A_i, B_i, C_i, h_i = A_n, B_n, C_n, h_n
            more = i + 1 < n
            if G_IN_MEMORY:
                g_i = g_n
                g_n = tl.load(grow + i + 1, mask=mask_d & more, other=0.0)
            else:
                g_i = tl.sum(tl.where(offs_n[None, :] == i, g, 0.0), axis=1)
            A_n = _load_A(A_ptr + offs_d * n + i + 1, mask_d & more, A_LOG)
            B_n = tl.load(B_ptr + bc2 + (i + 1) * s_bn, mask=m_t2 & more, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + bc2 + (i + 1) * s_bn, mask=m_t2 & more, other=0.0).to(tl.float32)
            h_n = tl.load(st + i + 1, mask=mask_d & more, other=0.0)
            # recompute the chunk's states
            A2_i = A_i * LOG2E
            a = tl.exp2(dl * A2_i[:, None])
            b = dlu * B_i
            _, hs = tl.associative_scan((a, tl.where(offs_t[None, :] == 0, b + a * h_i[:, None], b)), 1, _affine)
            y += hs * C_i
            tl.atomic_add(dC_ptr + bc + i * s_bn, tl.sum(dy * hs, axis=0), mask=mask_t, sem="relaxed")
            # adjoint g_t = C_t dy_t + a_{t+1} g_{t+1}; the next chunk's g enters at the last step
            a_next = tl.exp2(dl_next * A2_i[:, None])
            r = C_i * dy
            r = tl.where(offs_t[None, :] == T - 1, r + a_next * g_i[:, None], r)
            if FLIP_RUNS:
                _, gs = tl.associative_scan((_flip_runs(a_next, T // V), _flip_runs(r, T // V)), 1, _affine)
                gs = _flip_runs(gs, T // V)
            elif GATHER_FLIP:
                _, gs = tl.associative_scan((_flip(a_next, BLOCK_D, T), _flip(r, BLOCK_D, T)), 1, _affine)
                gs = _flip(gs, BLOCK_D, T)
            else:
                _, gs = tl.associative_scan((a_next, r), 1, _affine, reverse=True)
            if G_IN_MEMORY:
                _store_chunk_end(grow + i, gs, mask_d, BLOCK_D, T, V, False)
            else:
                g = tl.where(offs_n[None, :] == i, _chunk_end(gs, BLOCK_D, T, V, False)[:, None], g)
            tl.atomic_add(dB_ptr + bc + i * s_bn, tl.sum(gs * dlu, axis=0), mask=mask_t, sem="relaxed")
            gB += gs * B_i
            decay = gs * (hs - b)  # g_t a_t h_{t-1}
            gdecay += decay * A_i[:, None]
            dA_i = tl.sum(decay * dl, axis=1)
            if A_LOG:  # the gradient of A_log, where A = -exp(A_log): dA * A
                dA_i = dA_i * A_i
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
            if STORE_OUTZ:  # the gated output again, for out_proj's weight gradient, instead of keeping it
                tl.store(outz_ptr + x_off, (y * zz * sz).to(outz_ptr.dtype.element_ty), mask=m_dt)
        if SOFTPLUS:
            ddl = ddl * tl.sigmoid(_delta(dl_ptr + x_off, m_dt, bias, HAS_BIAS, False))  # softplus'
        ddl = tl.where(m_dt, ddl, 0.0)
        dbias_acc += tl.sum(ddl, axis=1)
        tl.store(du_ptr + x_off, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddl_ptr + x_off, ddl.to(ddl_ptr.dtype.element_ty), mask=m_dt)

    if not G_IN_MEMORY:
        tl.store(g0_ptr + state_off, g, mask=mask_dn)
    tl.atomic_add(dA_ptr + offs_d[:, None] * n + offs_n[None, :], dA_acc, mask=mask_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")
