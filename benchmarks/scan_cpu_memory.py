"""Peak extra memory of one CPU scan fwd+bwd, per backend: each measurement in a fresh process (peak RSS
after the pass minus peak RSS before it, after a warm-up call that compiles numba), backends interleaved.

    PYTHONPATH=. python benchmarks/scan_cpu_memory.py [--size 1,768,2048] [--rounds 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(2)
from mambadyn.scan import selective_scan
backend, (b, d, L), n = sys.argv[1], map(int, sys.argv[2].split(",")), 16
g = torch.Generator().manual_seed(0)
def inputs(b, d, L):
    mk = lambda *s: torch.randn(*s, generator=g)
    xs = [mk(b, d, L), mk(b, d, L) * 0.5 - 1, -torch.exp(mk(d, n) * 0.5), mk(b, n, L), mk(b, n, L), mk(d),
          mk(b, d, L), mk(d) * 0.1]
    return [x.requires_grad_(True) for x in xs]
def run(xs):
    out = selective_scan(*xs[:5], D=xs[5], z=xs[6], delta_bias=xs[7], delta_softplus=True, backend=backend)
    out.sum().backward()
run(inputs(1, 4, 70))
xs = inputs(b, d, L)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run(xs)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1,768,2048")
    ap.add_argument("--backends", default="numba,chunked")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    backends = args.backends.split(",")
    mib = {be: [] for be in backends}
    for _ in range(args.rounds):
        for be in backends:
            out = subprocess.run([sys.executable, "-c", CHILD, be, args.size], capture_output=True, text=True, check=True)
            mib[be].append(float(out.stdout.strip().splitlines()[-1]))
    print(f"| backend | extra peak memory, fwd+bwd at {args.size} (MiB, median of {args.rounds}) |\n|---|---|")
    for be, v in mib.items():
        print(f"| {be} | {statistics.median(v):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "mib": mib}, f, indent=1)


if __name__ == "__main__":
    main()
