"""CPU selective scan, side by side: the fused numba kernel, the chunked PyTorch scan, the plain
reference loop and transformers' mambapy path, with the machine's floor measured in the same run.

    pip install mambapy transformers   # for the mambapy column (optional)
    python benchmarks/scan_cpu.py [--sizes 2x256x256,1x768x1024,4x1536x1024] [--rounds 5] \
        [--json results/scan_cpu.json] [--md results/scan_cpu.md]

On a shared host, timings swing with load. Each round therefore runs every implementation once, in an
order that rotates from round to round. The table gives the median over rounds of the *paired* ratio
(other / numba in the same round), with min-max, and records the load average before and after.
The floor is the time the scan's exps and multiply-adds need at the rates this machine shows in the
same run. torch.exp on a large float32 tensor gives the exp rate; a float32 matmul that stays in cache
gives the FMA rate. The forward needs b·d·L·n exps and 3·b·d·L·n multiply-adds; forward+backward
needs 2x the exps (the backward recomputes the states) and 12·b·d·L·n multiply-adds. Inputs are
float32 with z, D, Δ bias and softplus, n = 16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from mambadyn.scan import selective_scan


def make_inputs(batch, d, L, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, d, L, generator=g), torch.randn(batch, d, L, generator=g) * 0.5 - 1.0,
            -torch.exp(torch.randn(d, n, generator=g) * 0.5), torch.randn(batch, n, L, generator=g),
            torch.randn(batch, n, L, generator=g), torch.randn(d, generator=g), torch.randn(batch, d, L, generator=g),
            torch.randn(d, generator=g) * 0.1)


def ours(backend):
    def run(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)
    return run


def mambapy():
    """transformers' scan with mambapy's parallel scan (pscan); None where either is missing."""
    try:
        import mambapy.pscan  # noqa: F401
        from transformers.models.mamba.modeling_mamba import mamba_selective_scan
    except ImportError:
        return None

    def run(u, delta, A, B, C, D, z, bias):
        return mamba_selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                                    use_mambapy=True)
    return run


def once(fn, inputs, backward: bool) -> float:
    xs = [x.detach().clone().requires_grad_(backward) for x in inputs]
    t0 = time.perf_counter()
    if backward:
        fn(*xs).sum().backward()
    else:
        with torch.no_grad():
            fn(*xs)
    return time.perf_counter() - t0


def rates() -> tuple[float, float]:
    """(exps per second, multiply-adds per second) on this machine at the current thread count."""
    x = torch.randn(1 << 24)
    torch.exp(x)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.exp(x)
    exp_rate = 5 * x.numel() / (time.perf_counter() - t0)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    a @ b
    t0 = time.perf_counter()
    for _ in range(50):
        a @ b
    fma_rate = 50 * 256**3 / (time.perf_counter() - t0)
    return exp_rate, fma_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2x256x256,1x768x1024,4x1536x1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-max", type=int, default=2 * 768 * 1024,
                    help="skip the reference loop and mambapy above this b*d*L (they take minutes)")
    ap.add_argument("--json", default="")
    ap.add_argument("--md", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    impls = {"numba": ours("numba"), "chunked": ours("chunked"), "reference": ours("reference")}
    if (m := mambapy()) is not None:
        impls["mambapy"] = m
    rows = []
    for size in args.sizes.split(","):
        b, d, L = (int(v) for v in size.split("x"))
        inputs = make_inputs(b, d, L)
        names = [k for k in impls if k not in ("reference", "mambapy") or b * d * L <= args.reference_max]
        for name in names:  # warm-up (numba compiles or loads its cache here)
            once(impls[name], inputs, True)
        times = {(n, bw): [] for n in names for bw in (False, True)}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                for bw in (False, True):
                    times[(name, bw)].append(once(impls[name], inputs, bw))
        one_thread = []  # numba at 1 thread against 2, paired
        for _ in range(args.rounds):
            torch.set_num_threads(1)
            t1 = once(impls["numba"], inputs, True)
            torch.set_num_threads(args.threads)
            one_thread.append(t1 / once(impls["numba"], inputs, True))
        exp_rate, fma_rate = rates()
        elems = b * d * L * 16
        floor = {False: elems / exp_rate + 3 * elems / fma_rate, True: 2 * elems / exp_rate + 12 * elems / fma_rate}
        for name in names:
            for bw in (False, True):
                t = times[(name, bw)]
                paired = [x / y for x, y in zip(t, times[("numba", bw)])]
                rows.append({"size": size, "impl": name, "pass": "fwd+bwd" if bw else "fwd", "median_s": statistics.median(t),
                             "ratio_to_numba": statistics.median(paired), "ratio_min": min(paired),
                             "ratio_max": max(paired), "floor_s": floor[bw],
                             "times_floor": statistics.median(t) / floor[bw]})
        rows.append({"size": size, "impl": "numba", "pass": "1 thread / 2 threads (fwd+bwd)",
                     "ratio_to_numba": statistics.median(one_thread), "ratio_min": min(one_thread),
                     "ratio_max": max(one_thread)})
        print(f"{size}: exp rate {exp_rate / 1e9:.2f} G/s, FMA rate {fma_rate / 1e9:.1f} G/s", flush=True)
    load_after = os.getloadavg()
    head = ["| size b×d×L | pass | impl | median | ÷ floor | time ÷ numba's (median, min-max) |", "|---|---|---|---|---|---|"]
    lines = []
    for r in rows:
        if "median_s" in r:
            lines.append(f"| {r['size']} | {r['pass']} | {r['impl']} | {r['median_s'] * 1e3:.1f} ms | {r['times_floor']:.1f}x | "
                         f"{r['ratio_to_numba']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
        else:
            lines.append(f"| {r['size']} | {r['pass']} | numba | | | {r['ratio_to_numba']:.2f} "
                         f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")
    table = "\n".join(head + lines)
    print(table)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; threads {args.threads}")
    result = {"torch": torch.__version__, "threads": args.threads, "rounds": args.rounds,
              "load_before": load_before, "load_after": load_after, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + f"\n\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
                    f"{args.threads} threads; {args.rounds} rounds\n")


if __name__ == "__main__":
    main()
