"""Host-side cost of launching the Triton scan, on any machine (no GPU): what a short call or a small batch
pays in Python before any kernel runs.

    python benchmarks/scan_cpu_overhead.py [--json results/scan_cpu_overhead.json]

1. ``triton.cdiv`` / ``triton.next_power_of_2`` (constexpr functions in Triton 3.6) against the plain integer
   versions in ``mambadyn.scan.launch``, interleaved in rounds: median of the paired ratios, with min-max.
2. One forward and one forward+backward call of ``selective_scan(backend="triton")`` on tiny CPU inputs with
   the two kernels replaced by no-ops: the wrappers' own Python and PyTorch work (validation, tuning lookup,
   allocations, autograd), without Triton's launcher or any GPU time.
Prints the 1-minute load average: timings on a loaded shared host swing, distrust a run under load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mambadyn.scan.triton_scan as ts  # noqa: E402
from mambadyn.scan import selective_scan  # noqa: E402
from mambadyn.scan.launch import cdiv, next_power_of_2  # noqa: E402
from tests.support.stubs import NoKernel  # noqa: E402


def per_call_us(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def paired(a, b, rounds: int, calls: int) -> dict:
    """a and b timed alternately; the median of b/a over rounds, and the medians of each."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(per_call_us(a, calls))
        tb.append(per_call_us(b, calls))
    ratios = [y / x for x, y in zip(ta, tb)]
    return {"a_us": statistics.median(ta), "b_us": statistics.median(tb), "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def scan_calls(xs, dy):
    """One forward (no grad) and one forward+backward of ``selective_scan(backend="triton")`` on
    xs = (u, delta, A, B, C, D, z, delta_bias), with dy the output's gradient."""
    def call():
        return selective_scan(*xs[:5], D=xs[5], z=xs[6], delta_bias=xs[7], delta_softplus=True, backend="triton")

    def fwd():
        with torch.no_grad():
            call()

    def fwd_bwd():
        for x in xs:
            x.grad = None
        call().backward(dy)

    return fwd, fwd_bwd


def scan_wrapper_us(rounds: int, calls: int) -> dict:
    kernels = ts.fwd_kernel, ts.bwd_kernel
    interpret = os.environ.get("TRITON_INTERPRET")
    ts.fwd_kernel = ts.bwd_kernel = NoKernel()
    os.environ["TRITON_INTERPRET"] = "1"  # only so the backend accepts CPU tensors: no kernel runs
    try:
        b, d, L, n = 1, 64, 64, 16
        g = torch.Generator().manual_seed(0)

        def mk(*s, dt=torch.bfloat16):
            return torch.randn(*s, generator=g).to(dt).requires_grad_(True)

        xs = [mk(b, d, L), mk(b, d, L), -torch.rand(d, n, generator=g).requires_grad_(True), mk(b, n, L),
              mk(b, n, L), mk(d, dt=torch.float32), mk(b, d, L), mk(d, dt=torch.float32)]
        dy = torch.randn(b, d, L, generator=g).to(torch.bfloat16)

        fwd, fwd_bwd = scan_calls(xs, dy)
        out = {}
        for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
            for _ in range(50):
                fn()
            out[name] = statistics.median(per_call_us(fn, calls) for _ in range(rounds))
        return out
    finally:
        ts.fwd_kernel, ts.bwd_kernel = kernels
        if interpret is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = interpret


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20000, help="calls per round for the integer helpers")
    ap.add_argument("--json", default="results/scan_cpu_overhead.json")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    res = {"command": "python " + " ".join(sys.argv), "triton": triton.__version__, "torch": torch.__version__,
           "cpus": os.cpu_count(), "load_average_1min": load}
    res["cdiv"] = paired(lambda: cdiv(1536, 8), lambda: triton.cdiv(1536, 8), args.rounds, args.calls)
    res["next_power_of_2"] = paired(lambda: next_power_of_2(16), lambda: triton.next_power_of_2(16), args.rounds,
                                    args.calls)
    res["scan_wrapper_us"] = scan_wrapper_us(args.rounds, 200)
    res["load_average_1min_after"] = os.getloadavg()[0]
    print(f"load average {load:.2f} -> {res['load_average_1min_after']:.2f} ({res['cpus']} CPUs)")
    print(f"{'helper':<16} {'mambadyn us':>12} {'triton us':>10} {'triton / ours (median, min-max)':>34}")
    for k in ("cdiv", "next_power_of_2"):
        r = res[k]
        print(f"{k:<16} {r['a_us']:>12.3f} {r['b_us']:>10.3f} {r['ratio_median']:>18.0f}x "
              f"({r['ratio_min']:.0f}-{r['ratio_max']:.0f})")
    w = res["scan_wrapper_us"]
    print(f"Triton scan wrappers, kernels stubbed (b 1, d 64, L 64, bf16): fwd {w['fwd']:.1f} us, "
          f"fwd+bwd {w['fwd_bwd']:.1f} us")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
