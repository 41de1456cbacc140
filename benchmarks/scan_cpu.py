"""CPU selective-scan timings: reference loop vs chunked scan vs transformers' slow path.

    python benchmarks/scan_cpu.py [--sizes small,paper] [--repeats 3] [--json results/scan_cpu.json]

Prints a table of forward and forward+backward median times and ratios, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mambadyn.scan import selective_scan

SIZES = {"small": (2, 256, 256, 16), "paper": (4, 1536, 1024, 16)}


def make_inputs(batch, d, L, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, d, L, generator=g)
    delta = torch.randn(batch, d, L, generator=g) * 0.5 - 1.0
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    B = torch.randn(batch, n, L, generator=g)
    C = torch.randn(batch, n, L, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(batch, d, L, generator=g)
    bias = torch.randn(d, generator=g) * 0.1
    return u, delta, A, B, C, D, z, bias


def transformers_slow_path():
    try:
        from transformers.models.mamba import modeling_mamba as mm
    except ImportError:
        return None
    fn = getattr(mm, "mamba_selective_scan", None)
    if fn is None:
        return None

    def run(u, delta, A, B, C, D, z, bias):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, use_mambapy=False,
                  use_associative_scan=False)

    return run


def ours(backend):
    def run(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)

    return run


def time_fn(fn, inputs, backward, repeats):
    times = []
    for _ in range(repeats + 1):  # first run is warm-up
        xs = [x.detach().clone().requires_grad_(backward) for x in inputs]
        t0 = time.perf_counter()
        y = fn(*xs)
        if backward:
            y.sum().backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="small,paper")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="results/scan_cpu.json")
    ap.add_argument("--skip-reference-at", default="", help="size names where the slow reference is skipped")
    args = ap.parse_args()
    impls = {"reference": ours("reference"), "chunked": ours("chunked")}
    hf = transformers_slow_path()
    if hf is not None:
        impls["transformers_slow"] = hf
    rows = []
    for size in args.sizes.split(","):
        shape = SIZES[size]
        inputs = make_inputs(*shape)
        for name, fn in impls.items():
            if name == "reference" and size in args.skip_reference_at.split(","):
                continue
            fwd = time_fn(fn, inputs, False, args.repeats)
            fb = time_fn(fn, inputs, True, args.repeats)
            rows.append({"size": size, "shape(b,d,L,n)": shape, "impl": name, "fwd_s": fwd, "fwd_bwd_s": fb})
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'size':6} {'impl':18} {'fwd s':>9} {'fwd+bwd s':>10} {'fwd+bwd: chunked speed-up':>26}")
    for r in rows:
        ch = next(x for x in rows if x["size"] == r["size"] and x["impl"] == "chunked")
        ratio = r["fwd_bwd_s"] / ch["fwd_bwd_s"]
        print(f"{r['size']:6} {r['impl']:18} {r['fwd_s']:9.3f} {r['fwd_bwd_s']:10.3f} {ratio:25.2f}x")
    with open(args.json, "w") as f:
        json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
