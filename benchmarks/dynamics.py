"""Batched token-system simulation vs a loop of scipy solve_ivp, one system per call.

    python benchmarks/dynamics.py [--batch 10000] [--L 16] [--t-end 100] [--scipy-sample 200]

Both integrate the same random 1-D systems (mu, s ~ U(-2, 2), a ~ U(0.5, 2), tokens of random sign
and magnitude U(0.5, 1.5)) at rtol 1e-7 / atol 1e-10 to the same output times, freezing each token
once its relative rate passes 1e4. scipy runs on ``--scipy-sample`` systems drawn from the batch and
its time is scaled to the whole batch (it is a per-system loop, so it scales linearly); the blow-up
times of that sample are compared. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.integrate import solve_ivp

from mambadyn.dynamics import SimConfig, TokenSystem, simulate


def scipy_one(mu, s, a, x0, t_out, cfg: SimConfig):
    """One system with scipy's RK45; tokens freeze (terminal event, then restart) at the blow-up rate."""
    L = len(x0)
    alive = np.ones(L, bool)
    blow = np.full(L, np.inf)
    tril = np.tril(np.ones((L, L)))

    def F(x):
        sp = np.logaddexp(0.0, s * x)
        cum = np.cumsum(sp)
        gap = np.where(tril > 0, cum[:, None] - cum[None, :], np.inf)
        return mu * x * (np.exp(-a * gap) @ (x * x * sp))

    def rate(x):
        return np.abs(F(x)) / np.maximum(np.abs(x), 1e-300)

    def f(_t, x):
        return F(x) * alive

    def event(_t, x):
        return np.max(np.where(alive, rate(x), 0.0)) - cfg.blowup_rate

    event.terminal, event.direction = True, 1
    t0, x = 0.0, np.asarray(x0, float)
    while t0 < t_out[-1] and alive.any():
        te = t_out[t_out > t0]
        sol = solve_ivp(f, (t0, t_out[-1]), x, method="RK45", rtol=cfg.rtol, atol=cfg.atol, t_eval=te,
                        events=event)
        if sol.status != 1:
            break
        t0, x = sol.t_events[0][0], sol.y_events[0][0]
        r = rate(x)
        hit = alive & (r >= cfg.blowup_rate * (1 - 1e-6))
        est = np.where(hit, t0 + 1.0 / (3.0 * r), np.inf)
        ends = np.minimum.accumulate(est)  # token l ends with the first blow-up among 1..l
        newly = alive & np.isfinite(ends)
        blow[newly] = ends[newly]
        alive &= ~newly
    return blow


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
