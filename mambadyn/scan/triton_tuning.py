"""Launch shapes of the Triton scan: the tuned tables (from the sweeps in results/scan_gpu_sweeps.json),
the choice by dtype and by how many rows fill the GPU, and the constexprs each kernel is compiled with."""

from __future__ import annotations

import functools
import os
from dataclasses import astuple, dataclass

import torch

from .launch import next_power_of_2


@dataclass(frozen=True)
class Tuning:
    """One kernel's launch shape: ``block_d`` channels per program, ``chunk`` steps per parallel scan
    (both powers of two), ``num_warps`` warps per program; for the backward, ``g_in_memory``: where the
    adjoint carried between chunks lives (see ``bwd_kernel``); for the forward, ``wide``: float32 tiles
    hold 8 steps per thread instead of 4 (see ``fwd_kernel``'s WIDE), and ``maxnreg``: a cap on the
    registers per thread (0: none; either kernel); for the backward, ``flip_runs``: reverse its scan by
    mirror-lane shuffles where the kernel's layout is known to suit them (see ``bwd_meta``)."""

    block_d: int
    chunk: int
    num_warps: int
    g_in_memory: bool = True
    wide: bool = False
    maxnreg: int = 0
    flip_runs: bool = True


# by input element size: the fastest shapes of the sweeps in results/ (scan_gpu_sweeps.json,
# scan_gpu_sweep_wide.json, scan_gpu_sweep_bwd_maxnreg.json; the story in triton_scan_history.md). The
# backward has its own shape, because it holds more per element: wider programs spill.
FWD_TUNING = {2: Tuning(block_d=8, chunk=64, num_warps=1),
              4: Tuning(block_d=8, chunk=64, num_warps=1, wide=True, maxnreg=168)}
BWD_TUNING = {2: Tuning(block_d=2, chunk=128, num_warps=1, g_in_memory=True, maxnreg=168),
              4: Tuning(block_d=2, chunk=128, num_warps=1, g_in_memory=True, maxnreg=168)}
# ... and the forward's where batch * d is too small for FWD_TUNING to fill the GPU, by rows (batch * d)
# per SM: fewer, wider programs with more warps, and longer chunks when no backward needs the states
# at 128-step intervals. Fastest in the few-rows sweeps (results/scan_gpu_sweeps.json, scan_gpu_small.json)
FULL_ROWS_PER_SM = 80
FWD_TUNING_MID_ROWS, MID_ROWS_PER_SM = Tuning(block_d=4, chunk=128, num_warps=1), 32
FWD_TUNING_FEW_ROWS = {False: Tuning(block_d=2, chunk=512, num_warps=2),   # inference
                       True: Tuning(block_d=2, chunk=128, num_warps=1)}    # training
# ... and the backward's for as few rows: one row per program, twice BWD_TUNING's programs, where those
# leave each scheduler too few warps to hide latency (results/scan_gpu_sweep_bwd_b1.json and _b4.json)
BWD_TUNING_FEW_ROWS = {2: Tuning(block_d=1, chunk=256, num_warps=1, g_in_memory=True, maxnreg=168),
                       4: Tuning(block_d=1, chunk=128, num_warps=1, g_in_memory=True, maxnreg=168)}


def as_ints(t: Tuning) -> list[int]:
    # a custom op's schema takes a list of ints; Tuning(*that) is the tuning again
    return [int(v) for v in astuple(t)]


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=256)
def _tunings(element_size: int, block_d=None, chunk=None, num_warps=None, bwd_block_d=None, bwd_chunk=None,
             bwd_num_warps=None, rows: int | None = None, sms: int | None = None,
             need_grad: bool = True, bwd_g_in_memory: bool | None = None, wide: bool | None = None,
             maxnreg: int | None = None, bwd_maxnreg: int | None = None,
             bwd_flip_runs: bool | None = None) -> tuple[Tuning, Tuning]:
    """The forward and backward launch shapes: the knobs given, the rest from the tables above.
    ``rows`` (batch * d) and ``sms`` (the GPU's SM count), where known and no shape knob of that kernel
    is given, pick each kernel's shape for few rows."""
    size = 2 if element_size <= 2 else 4
    fwd, bwd = FWD_TUNING[size], BWD_TUNING[size]
    known = rows is not None and sms is not None
    few = known and rows < MID_ROWS_PER_SM * sms
    if known and (block_d, chunk, num_warps) == (None, None, None):
        if few:
            fwd = FWD_TUNING_FEW_ROWS[need_grad]
        elif rows < FULL_ROWS_PER_SM * sms:
            fwd = FWD_TUNING_MID_ROWS
    if few and (bwd_block_d, bwd_chunk, bwd_num_warps) == (None, None, None):
        bwd = BWD_TUNING_FEW_ROWS[size]
    fwd = Tuning(int(block_d or fwd.block_d), int(chunk or fwd.chunk), int(num_warps or fwd.num_warps),
                 wide=bool(fwd.wide if wide is None else wide),
                 maxnreg=int(fwd.maxnreg if maxnreg is None else maxnreg))
    # the backward restarts from states the forward saves at its chunk starts, so its chunk is a multiple
    bwd = Tuning(int(bwd_block_d or bwd.block_d), int(bwd_chunk or max(bwd.chunk, fwd.chunk)),
                 int(bwd_num_warps or bwd.num_warps),
                 bool(bwd.g_in_memory if bwd_g_in_memory is None else bwd_g_in_memory),
                 maxnreg=int(bwd.maxnreg if bwd_maxnreg is None else bwd_maxnreg),
                 flip_runs=bool(bwd.flip_runs if bwd_flip_runs is None else bwd_flip_runs))
    for name, v in (("block_d", fwd.block_d), ("chunk", fwd.chunk), ("bwd_block_d", bwd.block_d),
                    ("bwd_chunk", bwd.chunk)):
        if v < 1 or v & (v - 1):
            raise ValueError(f"selective_scan_triton: {name} must be a power of two, got {v}")
    if need_grad and bwd.chunk < fwd.chunk:
        raise ValueError(
            f"selective_scan_triton: bwd_chunk ({bwd.chunk}) must be at least chunk ({fwd.chunk})")
    return fwd, bwd


def tunings_for(t: torch.Tensor, rows: int, need_grad: bool, **knobs) -> tuple[Tuning, Tuning]:
    """``_tunings`` for the input t (its element size, and its GPU's SM count), ``rows`` = batch * d."""
    # under dynamo the caches' wrapped functions (pure) are traced directly, as dynamo would anyway, without
    # its warning about cache wrappers
    compiling = torch.compiler.is_compiling()
    sm_count, tunings = (_sm_count.__wrapped__, _tunings.__wrapped__) if compiling else (_sm_count, _tunings)
    sms = sm_count(t.device.index or 0) if t.is_cuda else None
    return tunings(t.element_size(), rows=rows, sms=sms, need_grad=need_grad, **knobs)


def _run_length(element_size: int, chunk: int) -> int:
    # the steps one thread holds: Triton loads 16 bytes per thread along time (a layout that differs only
    # costs a layout conversion, never a wrong answer)
    return min(16 // element_size, chunk)


def interpreting() -> bool:
    # Triton's interpreter runs the kernels (on CPU tensors too)
    return os.environ.get("TRITON_INTERPRET") == "1"


def compiled(t: torch.Tensor) -> bool:
    # whether the kernels run compiled for t's GPU: the prefetches are inline PTX, which Triton's
    # interpreter (also given CUDA tensors) cannot run
    return t.is_cuda and not interpreting()


def _launch(t: Tuning) -> dict:
    # the launch options of a kernel's tuning: num_warps, and the register cap where one is set
    return {"num_warps": t.num_warps, **({"maxnreg": int(t.maxnreg)} if t.maxnreg else {})}


@functools.lru_cache(maxsize=256)
def fwd_meta(fwd: Tuning, bwd: Tuning, element_size: int, n: int, save_states: bool, prefetch: bool) -> dict:
    # the forward's launch-shape constexprs and num_warps (tests/support/sass.py compiles with these too).
    # ``prefetch``: only where ``_compiled``. Cached, and so shared: callers unpack it, never change it
    wide = bool(fwd.wide) and element_size == 4
    return dict(SAVE_STATES=save_states, SAVE_T=bwd.chunk, BLOCK_D=fwd.block_d, N=next_power_of_2(n),
                T=fwd.chunk, V=min(8, fwd.chunk) if wide else _run_length(element_size, fwd.chunk),
                PREFETCH=prefetch, WIDE=wide, **_launch(fwd))


@functools.lru_cache(maxsize=256)
def bwd_meta(bwd: Tuning, element_size: int, n: int, prefetch: bool, store_outz: bool = False,
              aligned: bool = False) -> dict:
    # the backward's, likewise. The mirror-lane flip (_flip_runs) is inline PTX written for one layout: a
    # thread holding 8 consecutive steps of one row, a row's 128 (256) steps on 16 (32) lanes of a one-warp
    # program.
    # Triton gives the tiles that layout where it can load 8 16-bit steps at once, that is where every
    # pointer is 16-byte aligned and L and every stride are multiples of 16 (``aligned``: what Triton
    # specializes on; checked in the compiled IR, and on CUDA by tests of both alignments); elsewhere it
    # picks others, in which the shuffles would pair the wrong elements
    V = _run_length(element_size, bwd.chunk)
    flip_runs = (bwd.flip_runs and prefetch and aligned and V == 8 and bwd.num_warps == 1
                 and bwd.chunk // V in (16, 32))
    return dict(GATHER_FLIP=V == 4, FLIP_RUNS=flip_runs, STORE_OUTZ=store_outz, G_IN_MEMORY=bool(bwd.g_in_memory),
                BLOCK_D=bwd.block_d, N=next_power_of_2(n), T=bwd.chunk, V=V, PREFETCH=prefetch, **_launch(bwd))
