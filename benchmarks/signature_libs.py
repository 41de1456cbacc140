"""pysiglib against roughpy, the two signature libraries that install here: same values, and time.

    pip install roughpy && python benchmarks/signature_libs.py [--json results/signature_libs.json]

Both compute the depth-5 signature of the same batch of piecewise-linear paths (the lens's default:
3000 paths of 25 points in 3 channels). Prints the largest difference and the time of each, median of
5 interleaved rounds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import pysiglib
import roughpy as rp
import torch


def with_roughpy(paths: np.ndarray, depth: int) -> np.ndarray:
    ctx = rp.get_context(width=paths.shape[-1], depth=depth, coeffs=rp.DPReal)
    out = []
    for p in paths:  # roughpy takes one stream at a time
        stream = rp.LieIncrementStream.from_increments(np.diff(p, axis=0), ctx=ctx)
        out.append(np.array(stream.signature())[1:])  # drop the scalar term
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", type=int, default=3000)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    paths = torch.randn(args.paths, args.points, args.channels, generator=g, dtype=torch.float64).cumsum(1) * 0.2
    a = pysiglib.signature(paths, args.depth).numpy()
    b = with_roughpy(paths.numpy(), args.depth)
    diff = float(np.abs(a - b).max() / np.abs(b).max())
    times = {"pysiglib": [], "roughpy": []}
    for r in range(args.rounds):
        for name in (("pysiglib", "roughpy") if r % 2 == 0 else ("roughpy", "pysiglib")):
            t0 = time.perf_counter()
            pysiglib.signature(paths, args.depth) if name == "pysiglib" else with_roughpy(paths.numpy(), args.depth)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [r / p for p, r in zip(times["pysiglib"], times["roughpy"])]
    result = {"shape": vars(args), "max_relative_difference": diff, "median_s": med,
              "roughpy_over_pysiglib": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
              "load_average": os.getloadavg()}
    print(f"max relative difference {diff:.2e}; pysiglib {med['pysiglib'] * 1e3:.1f} ms, roughpy "
          f"{med['roughpy'] * 1e3:.1f} ms: roughpy/pysiglib {result['roughpy_over_pysiglib']['median']:.1f}x "
          f"(min-max {min(ratios):.1f}-{max(ratios):.1f}), load {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
