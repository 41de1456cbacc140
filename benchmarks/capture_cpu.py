"""Time ``probe.capture`` (the default names: every SSM layer's input, Δ, B, C and output, and the residual
stream before and after every layer) against one plain forward pass of the same model, side by side.

    python benchmarks/capture_cpu.py [--d-model 768] [--layers 24] [--L 2048] [--rounds 3]
                                     [--names ssm_input,...] [--dtype float64|float32] [--out results/capture_cpu.json]

A 130M-shaped MambaLM (d_model 768, 24 layers, vocabulary 50280) with random weights: the cost does not
depend on what the weights learned. The two are interleaved round by round; the table gives each round's
times, their ratio, and the median ratio with its min-max, beside the load average (this host is shared:
distrust a run whose load is well above the core count)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from mambadyn.nn import MambaLM
from mambadyn.nn.config import MambaConfig
from mambadyn.probe.capture import NAMES, RESID_NAMES, SSM_NAMES, capture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=50280)
    ap.add_argument("--L", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", default=",".join(SSM_NAMES[:-1] + RESID_NAMES))
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="the scan quantities' dtype")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    names = [n for n in args.names.split(",") if n]
    bad = [n for n in names if n not in NAMES]
    if bad:
        ap.error(f"unknown names {bad}; known: {', '.join(NAMES)}")
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.layers, vocab_size=args.vocab)).eval()
    ids = torch.randint(0, args.vocab, (args.L,))

    def forward():
        with torch.no_grad():
            model(ids[None])

    def captured():
        capture(model, ids, names, dtype=getattr(torch, args.dtype))

    forward(), captured()  # warm-up: numba compiles, allocators settle
    rows = []
    for r in range(args.rounds):
        t = {}
        for name, fn in (("forward", forward), ("capture", captured)) if r % 2 == 0 else \
                (("capture", captured), ("forward", forward)):
            t0 = time.perf_counter()
            fn()
            t[name] = time.perf_counter() - t0
        rows.append({"round": r, "forward_s": t["forward"], "capture_s": t["capture"],
                     "ratio": t["capture"] / t["forward"], "load": os.getloadavg()[0]})
        print(f"round {r}: forward {t['forward']:.2f} s, capture {t['capture']:.2f} s, ratio "
              f"{rows[-1]['ratio']:.2f}, load {rows[-1]['load']:.2f}", flush=True)
    ratios = [row["ratio"] for row in rows]
    summary = {"shape": {"d_model": args.d_model, "n_layer": args.layers, "vocab": args.vocab, "L": args.L},
               "names": names, "dtype": args.dtype, "threads": torch.get_num_threads(), "rounds": rows,
               "median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios)}
    print(f"capture / forward: median {summary['median_ratio']:.2f} [{min(ratios):.2f}, {max(ratios):.2f}] over "
          f"{len(rows)} paired rounds, {summary['threads']} threads")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
