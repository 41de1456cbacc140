"""Instruction counts of the Triton scan kernels, compiled for an H100 (sm_90) on any machine, no GPU
needed: registers, spilled accesses, and the innermost loop's instructions per element.

    python benchmarks/kernel_sass.py [--dtypes bfloat16,float32] [--opts '{"block_d": 4}'] [--json ...]

Use it to weigh a kernel change before spending device time: the forward is issue-bound, so fewer
loop instructions per element is faster unless occupancy drops (check the registers).
"""

from __future__ import annotations

import argparse
import json

import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.sass import count  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--arch", type=int, default=90, help="SM version to compile for")
    ap.add_argument("--opts", default="{}", help="tuning knobs of selective_scan_triton, as JSON")
    ap.add_argument("--maxnreg", type=int, help="cap on registers per thread (what a fuller SM would need)")
    ap.add_argument("--json", default="results/kernel_sass.json")
    args = ap.parse_args()
    opts = json.loads(args.opts)
    rows = []
    print(f"{'kernel':<6} {'dtype':<9} {'block_d':>7} {'chunk':>5} {'warps':>5} {'regs':>4} {'spills':>6} "
          f"{'loop':>5} {'/elem':>6}  top opcodes in the loop")
    for dtype in args.dtypes.split(","):
        for kernel in ("fwd", "bwd"):
            c = count(kernel, getattr(torch, dtype), n=args.n, arch=args.arch, maxnreg=args.maxnreg, **opts)
            t = c.tuning
            top = " ".join(f"{op}:{k}" for op, k in list(c.loop_mix.items())[:6])
            print(f"{kernel:<6} {c.dtype:<9} {t['block_d']:>7} {t['chunk']:>5} {t['num_warps']:>5} "
                  f"{c.registers:>4} {c.spill_instructions:>6} {c.loop_instructions:>5} "
                  f"{c.loop_per_element:>6.1f}  {top}")
            rows.append(c.as_dict())
    with open(args.json, "w") as f:
        json.dump({"arch": f"sm_{args.arch}", "n": args.n, "opts": opts, "maxnreg": args.maxnreg, "rows": rows}, f,
                  indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
