"""Time `probe` on a 130M-shaped Mamba (d_model 768, 24 layers, vocab 50280, random weights) on CPU.

    python benchmarks/probe_cpu.py [--tokens 2048] [--ode-positions 16] [--backends numba,chunked] [--rounds 2]
        [--out results/probe_cpu.json]

Runs the whole probe once per scan backend per round, the order rotating between rounds, and prints each
backend's median and the paired ratio to the first, with the load average (timings on a shared host
swing)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import ProbeConfig, probe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--ode-positions", type=int, default=16)
    ap.add_argument("--backends", default="numba,chunked")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="results/probe_cpu.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(vocab_size=50280, d_model=768, n_layer=24))
    ids = torch.randint(0, 50280, (args.tokens,))
    ap_backends = args.backends.split(",")
    load = os.getloadavg()
    times: dict[str, list[float]] = {b: [] for b in ap_backends}
    layers = 0
    for r in range(args.rounds):
        for backend in ap_backends[r % len(ap_backends):] + ap_backends[: r % len(ap_backends)]:
            for layer in model.backbone.layers:
                layer.mixer.scan_backend = backend
            t0 = time.perf_counter()
            res = probe(model, ids, ProbeConfig(max_tokens=args.tokens, ode_positions=args.ode_positions,
                                                progress=False))
            times[backend].append(time.perf_counter() - t0)
            layers = len(res.layers)
            print(f"round {r} {backend}: {times[backend][-1]:.1f} s", flush=True)
    first = ap_backends[0]
    row = {"tokens": args.tokens, "ode_positions": args.ode_positions, "threads": torch.get_num_threads(),
           "layers": layers, "rounds": args.rounds, "loadavg_before": load, "loadavg_after": os.getloadavg(),
           "seconds": {b: statistics.median(t) for b, t in times.items()}, "all_seconds": times,
           "ratio_to_" + first: {b: statistics.median([x / y for x, y in zip(t, times[first])])
                                 for b, t in times.items()}}
    for b in ap_backends:
        print(f"130M-shaped probe, {args.tokens} tokens, {args.ode_positions} ODE positions, {row['threads']} threads, "
              f"scan {b}: {row['seconds'][b]:.1f} s (x{row['ratio_to_' + first][b]:.2f} of {first})")
    print(f"load {load[0]:.2f} -> {row['loadavg_after'][0]:.2f}")
    with open(args.out, "w") as f:
        json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
