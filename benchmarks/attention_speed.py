"""Time the hidden attention of one layer (all units, both aggregated views, no per-unit M kept) at a real
size: L = 4096 tokens, d_inner 1536 channels, N = 16 states (a 790M-shaped Mamba-1 layer), on whatever
device the inputs live (CPU by default).

    python benchmarks/attention_speed.py [--L 4096] [--d 1536] [--n 16] [--dtype float32,float64]
        [--block 256] [--channel-block 64] [--device cpu] [--out results/attention_speed.json]

The inputs are synthetic with a trained layer's scales (Δ = softplus(N(-4, 1)), A_n = -n, B and C
standard normal). Prints one line per dtype with the load average and writes JSON."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mambadyn.probe.attention import ScanInputs, layer_attention


def inputs(L: int, d: int, n: int, dtype, device) -> ScanInputs:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(L, d, generator=g, dtype=torch.float64)
    delta = F.softplus(torch.randn(L, d, generator=g, dtype=torch.float64) - 4)
    B, C = torch.randn(L, n, generator=g, dtype=torch.float64), torch.randn(L, n, generator=g, dtype=torch.float64)
    A = -torch.arange(1, n + 1, dtype=torch.float64).expand(d, n).contiguous()
    s = ScanInputs.per_channel(u, delta, B, C, A, torch.ones(d, dtype=torch.float64))
    return ScanInputs(*(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in
                        (s.u, s.delta, s.B, s.C, s.A, s.D_skip, s.unit, s.group)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--dtype", default="float32,float64")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--channel-block", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=1, help="calls per dtype: the first is reported as seconds, the "
                    "median of the others (warm: CUDA kernels loaded, caches filled) as seconds_warm")
    ap.add_argument("--out", default="results/attention_speed.json")
    args = ap.parse_args()
    rows = []
    for name in args.dtype.split(","):
        s = inputs(args.L, args.d, args.n, getattr(torch, name), args.device)
        load = os.getloadavg()[0]
        times = []
        for _ in range(max(1, args.reps)):
            t0 = time.perf_counter()
            att = layer_attention(s, block=args.block, channel_block=args.channel_block)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        dt = times[0]
        warm = statistics.median(times[1:]) if len(times) > 1 else None
        rows.append({"L": args.L, "d_inner": args.d, "N": args.n, "dtype": name, "device": args.device,
                     "threads": torch.get_num_threads(), "seconds": dt, "seconds_warm": warm, "reps": len(times),
                     "load_avg_1min": load,
                     "block": args.block, "channel_block": args.channel_block,
                     "row_sums_ok": bool(torch.allclose(att.mean_rownorm.sum(-1).double().cpu(),
                                                        torch.ones(args.L, dtype=torch.float64), atol=1e-4))})
        print(f"L {args.L} d_inner {args.d} N {args.n} {name:8s} on {args.device} ({torch.get_num_threads()} threads, "
              f"load {load:.2f}): {dt:7.2f} s" + ("" if warm is None else f", warm {warm:.2f} s"), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
