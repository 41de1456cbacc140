"""Time `probe` on a 130M-shaped Mamba (d_model 768, 24 layers, vocab 50280, random weights) on CPU.

    python benchmarks/probe_cpu.py [--tokens 2048] [--ode-positions 16] [--out results/probe_cpu.json]

Prints one line per phase and writes JSON with the load average (timings on a shared host swing)."""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import ProbeConfig, probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ode-positions", type=int, default=16)
    ap.add_argument("--out", default="results/probe_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(vocab_size=50280, d_model=768, n_layer=24))
    ids = torch.randint(0, 50280, (args.tokens,))
    load = os.getloadavg()
    t0 = time.perf_counter()
    res = probe(model, ids, ProbeConfig(max_tokens=args.tokens, ode_positions=args.ode_positions, progress=False))
    total = time.perf_counter() - t0
    row = {"tokens": args.tokens, "ode_positions": args.ode_positions, "threads": torch.get_num_threads(),
           "seconds": total, "loadavg_before": load, "loadavg_after": os.getloadavg(), "layers": len(res.layers)}
    print(f"130M-shaped probe, {args.tokens} tokens, {args.ode_positions} ODE positions, "
          f"{row['threads']} threads: {total:.1f} s (load {load[0]:.2f} -> {row['loadavg_after'][0]:.2f})")
    with open(args.out, "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
