"""A Dormand-Prince 5(4) integrator with one step size *per system*, vectorized over the batch.

Why not torchdiffeq or scipy: torchdiffeq steps the whole batch with one step size, so each of the
thousands of distinct blow-up times in a batch of fast-divergent systems forces tiny steps on every
system; scipy's solve_ivp handles one system per call. Here every system keeps its own time t_i and
step h_i, all advanced by the same tensor operations, and finished systems drop out of the batch.

Steps are clipped to land exactly on the output times. After each accepted step ``on_step`` may
freeze tokens (set their derivative mask to 0): a token that blows up stops costing steps at once.
"""

from __future__ import annotations

from typing import Callable

import torch

# Dormand & Prince (1980) tableau
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))

# f(idx (m,)) -> (Y (m, ...) -> dY (m, ...)): the right-hand side restricted to systems idx, built once a step
RHS = Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def integrate(f: RHS, y0: torch.Tensor, t_out: torch.Tensor, rtol: float, atol: float,
              on_step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]
              | None = None,
              max_steps: int = 200_000, progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrate y' = f(idx)(y) for each system from t_out[0] through the times t_out (T,).

    y0: (batch, ...). ``f(idx)`` returns the right-hand side of the systems idx (gathered once a step). ``on_step(idx, t, y, dy)``
    is called after each accepted step with those systems' new times, states and f at the new state; it
    returns a (len(idx),) bool of the systems whose right-hand side it changed (or None: none changed),
    since the last stage's f is reused as the next step's first stage (FSAL) only where f is unchanged.
    A system stops early when its step size underflows or after ``max_steps`` steps (every active system
    takes one step per iteration). Returns (ys (T, batch, ...), NaN after where a system stopped;
    t (batch,) and y (batch, ...): the time and state each system ended at, t_out[-1] where it got there).
    """
    b = y0.shape[0]
    T = len(t_out)
    ys = y0.new_full((T, *y0.shape), torch.nan)
    ys[0] = y0
    y = y0.clone()
    t = t_out[0].expand(b).clone()
    nxt = torch.ones(b, dtype=torch.long, device=y0.device)  # index of the next output time
    h = torch.full((b,), float(t_out[1] - t_out[0]) * 0.01, dtype=y0.dtype, device=y0.device)
    red = tuple(range(1, y0.dim()))
    dy = torch.empty_like(y)  # f at the current state, where fresh
    fresh = torch.zeros(b, dtype=torch.bool, device=y0.device)
    for _ in range(max_steps):
        idx = torch.nonzero(nxt < T).flatten()
        if len(idx) == 0:
            break
        stale = idx[~fresh[idx]]
        if len(stale):
            dy[stale] = f(stale)(y[stale])
            fresh[stale] = True
        yi, ti = y[idx], t[idx]
        target = t_out[nxt[idx]]
        hi = torch.minimum(h[idx], target - ti)
        hb = hi.view(-1, *([1] * (y0.dim() - 1)))
        fi = f(idx)
        k = [dy[idx]]
        for s in range(1, 7):
            acc = yi + hb * sum(a * ks for a, ks in zip(_A[s], k) if a != 0.0)
            k.append(fi(acc))
        y_new = acc  # stage 7 is evaluated at the 5th-order solution (FSAL)
        err = hb * sum(e * ks for e, ks in zip(_E, k) if e != 0.0)
        scale = atol + rtol * torch.maximum(yi.abs(), y_new.abs())
        ratio = torch.nan_to_num((err / scale).abs(), nan=torch.inf).amax(dim=red)
        ok = ratio <= 1.0
        factor = torch.where(ratio == 0, 10.0, 0.9 * ratio.clamp_min(1e-10) ** -0.2).clamp(0.2, 10.0)
        h[idx] = torch.where(torch.isfinite(ratio), hi * factor, hi * 0.2)
        if ok.any():
            acc_idx = idx[ok]
            landed = (hi[ok] == (target - ti)[ok])
            t_new = torch.where(landed, target[ok], ti[ok] + hi[ok])
            t[acc_idx] = t_new
            y[acc_idx] = y_new[ok]
            dy[acc_idx] = k[6][ok]
            if on_step is not None:
                changed = on_step(acc_idx, t_new, y[acc_idx], k[6][ok])
                if changed is not None:
                    fresh[acc_idx[changed]] = False
            if landed.any():
                li = acc_idx[landed]
                ys[nxt[li], li] = y[li]
                nxt[li] += 1
                if progress is not None:
                    progress(int(landed.sum()))
        tiny = h[idx] < 1e-13 * t[idx].abs().clamp_min(1e-300)
        if tiny.any():  # cannot proceed: report rather than loop forever
            nxt[idx[tiny]] = T
    return ys, t, y
