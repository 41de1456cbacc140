"""One system at a time, stepping a scipy.integrate OdeSolver: the fallback for stiff systems.

Some D-dim systems are stiff: a large token pulls the others onto a slow manifold (or blows up while
doing so), and the explicit batched Dormand-Prince then needs ever smaller steps. Those few systems
are handed, from the state the batched solver reached, to LSODA, which switches to a BDF method when it
detects stiffness. The same blow-up rule and estimate apply (``blowup.py``), so both paths report the same kind of result.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import integrate

from .blowup import blowing_up, blowup_end_times, local_power


@dataclass
class OneSystem:
    """x (T, L, D): the states at the output times after t0 (NaN where not reached); blowup (L,) blow-up
    times (inf: none); primary (L,) the token's own rate crossed the threshold; frozen_at (L,) when the
    token was frozen (inf: never); reached: got to t_out[-1]."""

    x: np.ndarray
    blowup: np.ndarray
    primary: np.ndarray
    frozen_at: np.ndarray
    reached: bool


def rhs_numpy(S_B: np.ndarray, S_C: np.ndarray, S_delta: np.ndarray, A: np.ndarray, dt_bias: np.ndarray,
              norm_weight: np.ndarray | None = None, norm_eps: float = 1e-5) -> Callable[[np.ndarray], np.ndarray]:
    """One system's right-hand side X (L, D) -> dX/dt (L, D) in NumPy, for scipy's per-call loop (a torch
    call costs ~6x more at these sizes). S_B, S_C (N, D); S_delta (D, D); A (D, N); dt_bias (D,); norm_weight
    (D,) or None. Same recurrence as ``system.token_rhs`` (after ``rms_norm``), which the tests hold it to."""

    def F(X: np.ndarray) -> np.ndarray:
        if norm_weight is not None:
            X = X / np.sqrt(np.mean(X * X, axis=-1, keepdims=True) + norm_eps) * norm_weight
        B, C = X @ S_B.T, X @ S_C.T
        delta = np.logaddexp(0.0, X @ S_delta.T + dt_bias)
        decay = np.exp(delta[:, :, None] * A)
        inject = (delta * X)[:, :, None] * B[:, None, :]
        out = np.empty_like(X)
        h = inject[0]
        out[0] = h @ C[0]
        for l in range(1, len(X)):
            h = decay[l] * h + inject[l]
            out[l] = h @ C[l]
        return out

    return F


def solve_one(F: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, t_out: np.ndarray, *, rtol: float,
              atol: float, blowup_threshold: float, t0: float = 0.0, alive: np.ndarray | None = None,
              method: str = "LSODA", max_steps: int = 20_000) -> OneSystem:
    """Integrate X' = F(X) (X (L, D)) from X(t0) = x0 through the output times t_out (T,) after t0.

    ``alive`` (L,) marks tokens not yet frozen (default all); frozen tokens keep their value. ``method``
    names a scipy.integrate OdeSolver class; after ``max_steps`` steps the system is left unfinished.
    Tokens freeze after the first step that ends with ``blowing_up`` true, as in the batched solver (no
    event root-finding: near a blow-up the dense output is too poor for it).
    """
    L, D = x0.shape
    alive = np.ones(L, bool) if alive is None else alive.copy()
    blow, primary, frozen_at = np.full(L, np.inf), np.zeros(L, bool), np.full(L, np.inf)
    xs = np.full((len(t_out), L, D), np.nan)
    solver_cls = getattr(integrate, method)

    def rate(x, fx):  # an overflowed state counts as an infinite rate: it has blown up
        r = np.linalg.norm(fx, axis=-1) / np.maximum(np.linalg.norm(x, axis=-1), 1e-300)
        return np.nan_to_num(r, nan=np.inf)

    last_rate = np.full(L, np.inf)  # as in the batched solver: the rate must rise past the threshold
    last_norm = np.linalg.norm(np.asarray(x0, float), axis=-1)

    def f(_t, y):
        return (F(y.reshape(L, D)) * alive[:, None]).ravel()

    def freeze(t, hit, r, power=3.0):
        ends, own = blowup_end_times(t, r, hit, power)
        newly = alive & np.isfinite(ends)
        blow[newly], primary[newly], frozen_at[newly] = ends[newly], own[newly], t
        alive[newly] = False

    # overflow is how a blow-up shows itself here, and LSODA's complaints end as "unfinished": both quiet
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        k = int(np.searchsorted(t_out, t0, side="right"))  # next output time
        solver = solver_cls(f, t0, np.asarray(x0, float).ravel(), t_out[-1], rtol=rtol, atol=atol)
        for _ in range(max_steps):
            if solver.status != "running":
                break
            t_prev, y_prev = solver.t, solver.y.copy()
            solver.step()
            if solver.status == "failed":
                return OneSystem(xs, blow, primary, frozen_at, False)
            bad = ~np.isfinite(solver.y.reshape(L, D)).all(axis=-1)
            if bad.any():  # overflowed within one step: those tokens blow up between t_prev and t
                x_prev = y_prev.reshape(L, D)
                r = np.maximum(rate(x_prev, F(x_prev)), 1.0 / (3.0 * (solver.t - t_prev)))
                freeze(t_prev, alive & bad, r)
                solver = solver_cls(f, t_prev, y_prev, t_out[-1], rtol=rtol, atol=atol)
                continue
            if k < len(t_out) and t_out[k] <= solver.t:
                dense = solver.dense_output() if solver.t > t_prev else None
                while k < len(t_out) and t_out[k] <= solver.t:
                    xs[k] = (solver.y if t_out[k] == solver.t or dense is None else dense(t_out[k])).reshape(L, D)
                    k += 1
            y = solver.y.reshape(L, D)
            fy = F(y)
            r, n = rate(y, fy), np.linalg.norm(y, axis=-1)
            hit = alive & blowing_up(y, fy, r, last_rate, solver.t, blowup_threshold)
            power = local_power(r, last_rate, n, last_norm)
            last_rate, last_norm = r, n
            if hit.any():
                freeze(solver.t, hit, r, power)
                if solver.status == "running":  # the right-hand side changed: restart from here
                    solver = solver_cls(f, solver.t, solver.y, t_out[-1], rtol=rtol, atol=atol)
    return OneSystem(xs, blow, primary, frozen_at, solver.status == "finished")
