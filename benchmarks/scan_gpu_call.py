"""Where a short Triton scan call's wall time goes, on the GPU host: at batch 1 and short sequences a
forward+backward call costs the CPU more than the GPU, so the CPU's share decides the table's rows.

    python benchmarks/scan_gpu_call.py [--json results/scan_gpu_call.json] [--profile 25]

On tiny inputs (batch 1, d 64, L 64, bf16, z/D/bias/softplus on), per call, rounds interleaved, synchronizing
only at the end of a round (median over rounds, with min-max):
- ``fwd`` / ``fwd_bwd``: ``selective_scan(backend="triton")`` without grad, and with ``.backward(dy)``;
- ``fwd_bwd_stubbed``: the same with both kernels replaced by no-ops (our wrappers, PyTorch, autograd);
- ``autograd_floor``: a no-op ``autograd.Function`` over the same eight leaves, whose backward returns
  ``empty_like`` gradients: the autograd and gradient-accumulation cost every implementation pays;
- ``fwd_launch`` / ``bwd_launch``: one ``kernel[grid](...)`` with the arguments of a real call, through
  ``mambadyn.scan.launch.Launcher``; ``*_launch_triton``: the same through Triton's own ``JITFunction``;
- with ``--mamba-ssm-build``, ``mamba_ssm_fwd`` / ``mamba_ssm_fwd_bwd``: mamba-ssm's ``selective_scan_fn``
  on the same inputs (what the same call costs the CPU there).
Then a cProfile of the ``fwd_bwd`` calls (the top functions by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mambadyn.scan.triton_scan as ts  # noqa: E402
from benchmarks.scan_cpu_overhead import NoKernel, scan_calls  # noqa: E402
from benchmarks.scan_gpu import inputs, mamba_ssm_scan, per_call_us  # noqa: E402


class _Recorder:
    """Stands in for a kernel: launches it, and keeps the last launch's grid and arguments."""

    def __init__(self, kernel):
        self.kernel, self.last = kernel, None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.last = grid, args, kwargs
            return self.kernel[grid](*args, **kwargs)
        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)


class _Noop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, *rest):
        ctx.shapes = [t for t in (u, *rest)]
        return torch.empty_like(u)

    @staticmethod
    def backward(ctx, dy):
        return tuple(torch.empty_like(t) for t in ctx.shapes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--profile", type=int, default=25, help="functions of the cProfile listing")
    ap.add_argument("--json", default="results/scan_gpu_call.json")
    ap.add_argument("--mamba-ssm-build", help="build_mamba_ssm.py's build folder: time mamba-ssm too")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("scan_gpu_call.py needs a CUDA device (benchmarks/scan_cpu_overhead.py measures the host side "
                 "without one)")

    xs = inputs(1, 64, 64, 16, torch.bfloat16, True)
    dy = torch.randn_like(xs[0])

    fwd, fwd_bwd = scan_calls(xs, dy)

    def autograd_floor():
        for x in xs:
            x.grad = None
        _Noop.apply(*xs).backward(dy)

    kernels = ts.fwd_kernel, ts.bwd_kernel
    rec = _Recorder(kernels[0]), _Recorder(kernels[1])
    ts.fwd_kernel, ts.bwd_kernel = rec
    fwd_bwd()
    torch.cuda.synchronize()
    ts.fwd_kernel, ts.bwd_kernel = kernels
    launches = {}
    for name, r in (("fwd", rec[0]), ("bwd", rec[1])):
        grid, a, kw = r.last
        kernel = r.kernel
        launches[f"{name}_launch"] = lambda kernel=kernel, grid=grid, a=a, kw=kw: kernel[grid](*a, **kw)
        jit = getattr(kernel, "kernel", kernel)  # Triton's own path, under the Launcher
        launches[f"{name}_launch_triton"] = lambda jit=jit, grid=grid, a=a, kw=kw: jit[grid](*a, **kw)

    def stubbed():
        ts.fwd_kernel = ts.bwd_kernel = NoKernel()
        try:
            fwd_bwd()
        finally:
            ts.fwd_kernel, ts.bwd_kernel = kernels

    cases = {"fwd": fwd, "fwd_bwd": fwd_bwd, "fwd_bwd_stubbed": stubbed, "autograd_floor": autograd_floor,
             **launches}
    notes = {}
    if args.mamba_ssm_build:
        theirs, why = mamba_ssm_scan(args.mamba_ssm_build)
        if theirs is None:
            notes["mamba_ssm"] = why
        else:
            def mamba_fwd():
                with torch.no_grad():
                    theirs(*xs)

            def mamba_fwd_bwd():
                for x in xs:
                    x.grad = None
                theirs(*xs).backward(dy)

            cases.update(mamba_ssm_fwd=mamba_fwd, mamba_ssm_fwd_bwd=mamba_fwd_bwd)
    for fn in cases.values():
        for _ in range(20):
            fn()
    times = {k: [] for k in cases}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for k, fn in cases.items():
            times[k].append(per_call_us(fn, args.calls))
    res = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name(),
           "triton": triton.__version__, "torch": torch.__version__, "cpus": os.cpu_count(),
           "load_average_1min": load, "shape": "batch 1, d 64, L 64, n 16, bf16",
           "us_per_call": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
                           for k, v in times.items()},
           "notes": notes}

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        fwd_bwd()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.profile)
    res["profile_fwd_bwd_tottime"] = s.getvalue()
    res["profile_calls"] = args.calls
    res["load_average_1min_after"] = os.getloadavg()[0]

    print(f"{res['device']}; load {load:.2f} -> {res['load_average_1min_after']:.2f}; {res['shape']}")
    print(f"{'case':<18} {'us/call':>9} {'min':>8} {'max':>8}")
    for k, v in res["us_per_call"].items():
        print(f"{k:<18} {v['median']:>9.1f} {v['min']:>8.1f} {v['max']:>8.1f}")
    for k, v in notes.items():
        print(f"{k}: {v}")
    print(res["profile_fwd_bwd_tottime"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
