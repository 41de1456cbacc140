"""Batched token-system simulation vs a loop of scipy solve_ivp, one system per call.

    python benchmarks/dynamics.py [--batch 10000] [--L 16] [--t-end 100] [--scipy-sample 200]

Both integrate the same random 1-D systems (mu, s ~ U(-2, 2), a ~ U(0.5, 2), tokens of random sign
and magnitude U(0.5, 1.5)) at rtol 1e-7 / atol 1e-10 to the same output times, freezing each token
once its relative rate passes 1e3 (SimConfig.blowup_rate). scipy runs on ``--scipy-sample`` systems
drawn from the batch and its time is scaled to the whole batch (it is a per-system loop, so it scales
linearly); the blow-up times of that sample are compared. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mambadyn.dynamics import SimConfig, TokenSystem, simulate
from mambadyn.dynamics.stiff import solve_one


def scipy_one(mu, s, a, x0, t_out, cfg: SimConfig):
    """One system with scipy's RK45 stepping, the same freeze rule as the batched solver (a token freezes
    after the step where its relative rate passes the threshold). The right-hand side is the 1-D
    formula as one small matrix product, the fastest NumPy form at L = 16."""
    L = len(x0)
    tril = np.tril(np.ones((L, L), bool))

    def F(X):
        x = X[:, 0]
        sp = np.logaddexp(0.0, s * x)
        cum = np.cumsum(sp)
        gap = np.where(tril, cum[:, None] - cum[None, :], np.inf)
        return (mu * x * (np.exp(-a * gap) @ (x * x * sp)))[:, None]

    return solve_one(F, np.asarray(x0, float)[:, None], t_out, rtol=cfg.rtol, atol=cfg.atol,
                     blowup_rate=cfg.blowup_rate, method="RK45", max_steps=cfg.max_steps).blowup


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=10000)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--t-end", type=float, default=100.0)
    ap.add_argument("--n-points", type=int, default=50)
    ap.add_argument("--scipy-sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/dynamics_bench.json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mu, s, a = u(-2, 2, args.batch), u(-2, 2, args.batch), u(0.5, 2, args.batch)
    sign = torch.where(torch.rand(args.batch, args.L, generator=g) < 0.5, -1.0, 1.0).double()
    x0 = sign * u(0.5, 1.5, args.batch, args.L)
    cfg = SimConfig(t_end=args.t_end, n_points=args.n_points, progress=True)
    system = TokenSystem.one_dim(mu, s, a)
    t0 = time.perf_counter()
    traj = simulate(system, x0[..., None], config=cfg)
    t_batched = time.perf_counter() - t0

    idx = torch.randperm(args.batch, generator=g)[: args.scipy_sample]
    t_out = traj.t.numpy()
    t0 = time.perf_counter()
    blows = [scipy_one(mu[i].item(), s[i].item(), a[i].item(), x0[i].numpy(), t_out, cfg) for i in idx.tolist()]
    t_scipy_sample = time.perf_counter() - t0
    t_scipy = t_scipy_sample * args.batch / args.scipy_sample
    ours = traj.blowup_time[idx].numpy()
    ref = np.stack(blows)
    same_fate = float((np.isfinite(ours) == np.isfinite(ref)).mean())
    both = np.isfinite(ours) & np.isfinite(ref)
    rel = float(np.max(np.abs(ours[both] - ref[both]) / ref[both])) if both.any() else 0.0
    row = dict(batch=args.batch, L=args.L, t_end=args.t_end, n_points=args.n_points,
               batched_s=t_batched, scipy_sample=args.scipy_sample, scipy_sample_s=t_scipy_sample,
               scipy_extrapolated_s=t_scipy, speedup=t_scipy / t_batched,
               blowup_fraction=float(traj.blew_up.any(-1).double().mean()),
               same_blowup_fate=same_fate, max_rel_blowup_time_diff=rel, threads=torch.get_num_threads())
    print(f"{'systems':>8} {'L':>3} {'batched s':>10} {'scipy s (extrap.)':>18} {'speed-up':>9} "
          f"{'same fate':>9} {'max rel dT*':>11}")
    print(f"{args.batch:8d} {args.L:3d} {t_batched:10.2f} {t_scipy:18.1f} {row['speedup']:8.1f}x "
          f"{same_fate:9.3f} {rel:11.2e}")
    with open(args.json, "w") as f:
        json.dump(row, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
