"""The Triton scan's kernels compiled for an NVIDIA GPU on a machine without one, and counted.

Triton compiles to SASS for a named target (``GPUTarget``) with the ptxas its wheel ships, so the
cost of a kernel change can be read before any device time is spent: registers, spilled accesses,
and the instructions of the innermost loop (one pass over one state of one chunk) per element it
handles. The kernels get the constexprs and argument specializations a launch on a typical Mamba
shape gets (sizes and strides divisible by 16, all options on, the tuned launch shape).

    count("fwd", torch.bfloat16)  ->  SassCount(registers=..., loop_per_element=15.1, ...)
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from mambadyn.scan import triton_kernels as tk
from mambadyn.scan import triton_tuning as tt

# pointer arguments in the inputs' dtype; the others are float32 (A, D, bias, states, summed grads)
_INPUT_DTYPE_ARGS = {"u_ptr", "dl_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddl_ptr",
                     "dz_ptr"}
_TRITON_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,6})\*/\s+(@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_]*)")


@dataclass
class SassCount:
    kernel: str
    dtype: str
    tuning: dict
    registers: int
    spill_instructions: int          # LDL/STL in the whole kernel
    loop_spill_instructions: int     # ... and in the innermost loop
    loop_instructions: int
    elements_per_thread: int         # (channel, step) elements of one state a thread handles per pass
    loop_per_element: float
    loop_mix: dict                   # opcode -> count in the innermost loop

    def as_dict(self) -> dict:
        return asdict(self)


def _constexprs(kernel: str, element_size: int, fwd: tt.Tuning, bwd: tt.Tuning, n: int) -> dict:
    # the launch's own launch-shape constexprs (and num_warps), with every input option on
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, A_LOG=False)
    if kernel == "fwd":
        return dict(flags, HAS_H0=False, **tt.fwd_meta(fwd, bwd, element_size, n, True, True))
    return dict(flags, HAS_DLAST=False, **tt.bwd_meta(bwd, element_size, n, True, aligned=True))  # as compiled here


def compile_triton(kernel: str, dtype: torch.dtype = torch.bfloat16, n: int = 16, arch: int = 90,
                   maxnreg: int | None = None, **opts):
    """Compile ``kernel`` ("fwd" or "bwd") for sm_``arch`` as a launch whose pointers are 16-byte aligned and
    whose sizes and strides are multiples of 16 would be. ``opts`` are ``selective_scan_triton``'s tuning
    knobs; ``maxnreg`` caps the registers per thread (ptxas spills beyond it). Returns (Triton's compiled
    kernel: its ``asm`` holds the TTGIR, PTX and cubin; the kernel's Tuning)."""
    if kernel not in ("fwd", "bwd"):
        raise ValueError(f"kernel must be 'fwd' or 'bwd', got {kernel!r}")
    if dtype not in _TRITON_DTYPE:
        raise ValueError(f"dtype must be one of {list(_TRITON_DTYPE)}, got {dtype}")
    size = torch.tensor([], dtype=dtype).element_size()
    fwd, bwd = tt._tunings(size, **opts)
    fn = (tk.fwd_kernel if kernel == "fwd" else tk.bwd_kernel).kernel  # the JITFunction under the Launcher
    consts = _constexprs(kernel, size, fwd, bwd, n)
    num_warps = consts.pop("num_warps")
    maxnreg = consts.pop("maxnreg", maxnreg)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + (_TRITON_DTYPE[dtype] if name in _INPUT_DTYPE_ARGS else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # sizes and strides
            signature[name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    own = fwd if kernel == "fwd" else bwd
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    return compiled, own


def compile_kernel(kernel: str, dtype: torch.dtype = torch.bfloat16, n: int = 16, arch: int = 90,
                   maxnreg: int | None = None, **opts):
    """``compile_triton``, then its SASS. Returns (the SASS text, registers per thread, the kernel's Tuning)."""
    compiled, own = compile_triton(kernel, dtype, n, arch, maxnreg, **opts)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = _tool("cuobjdump", "-sass", path)
        usage = _tool("cuobjdump", "-res-usage", path)
    return sass, int(re.search(r"REG:(\d+)", usage).group(1)), own


def _tool(name: str, *args: str) -> str:
    done = subprocess.run([os.path.join(_BIN, name), *args], capture_output=True, text=True, check=True)
    return done.stdout


def _instructions(sass: str) -> list[tuple[int, str, str]]:
    """(address, opcode, line) of each instruction."""
    out = []
    for line in sass.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(3).split(".")[0], line))
    return out


def innermost_loop(sass: str) -> list[tuple[int, str, str]]:
    """The instructions of the shortest backward branch's span: the kernels' per-state pass."""
    ins = _instructions(sass)
    loops = []
    for addr, op, line in ins:
        m = re.search(r"\bBRA(?:\.\w+)*\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", line)
        if op == "BRA" and m and m.group(1) and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    if not loops:
        raise RuntimeError("no loop found in the SASS")
    start, end = min(loops, key=lambda se: se[1] - se[0])
    return [x for x in ins if start <= x[0] <= end]


def count(kernel: str, dtype: torch.dtype = torch.bfloat16, n: int = 16, arch: int = 90,
          maxnreg: int | None = None, **opts) -> SassCount:
    """Registers, spills and the innermost loop's instruction count of ``kernel`` for ``dtype``."""
    sass, registers, own = compile_kernel(kernel, dtype, n, arch, maxnreg, **opts)
    loop = innermost_loop(sass)
    spills = sum(op in ("LDL", "STL") for _, op, _ in _instructions(sass))
    per_thread = own.block_d * own.chunk // (32 * own.num_warps)
    mix = collections.Counter(op for _, op, _ in loop)
    return SassCount(kernel, str(dtype).removeprefix("torch."), asdict(own), registers, spills,
                     mix["LDL"] + mix["STL"], len(loop), per_thread, len(loop) / max(per_thread, 1),
                     dict(mix.most_common()))
