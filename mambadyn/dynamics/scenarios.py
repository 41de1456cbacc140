"""The paper's three 1-D scenarios (and a fast case with slow early tokens) as one recipe: each system
classified from its parameters, simulated, and its observations set beside the predictions and limits.
``mambadyn dynamics scenarios`` writes what this returns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .classify import classify
from .outcome import describe_tokens
from .rates import (
    convergence_constants,
    fitted_convergence_exponent,
    fitted_log_growth_exponent,
    slow_divergence_ratios,
)
from .simulation import Trajectory, simulate
from .system import TokenSystem


def one_dim_cases(L: int, seed: int) -> dict[str, tuple[str, TokenSystem, torch.Tensor]]:
    """name -> (parameters for a title, system, x0 (1, L)): convergent, slow and fast divergence, and a fast
    system whose first half of tokens starts on the slow side."""
    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + torch.rand(1, L, generator=g, dtype=torch.float64)
    mixed = mag * 0.5 * torch.where(torch.arange(L) < L // 2, -1.0, 1.0)  # s x_l < 0 before the middle
    return {
        "convergent": ("mu=-1, s=1, a=1", TokenSystem.one_dim(-1.0, 1.0, 1.0), mag.clone()),
        "slow_divergence": ("mu=1, s=-1, a=1, x>0", TokenSystem.one_dim(1.0, -1.0, 1.0), mag.clone()),
        "fast_divergence": ("mu=1, s=1, a=1, x>0", TokenSystem.one_dim(1.0, 1.0, 1.0), mag * 0.5),
        "fast_divergence_mixed": (f"mu=1, s=1, a=1, x<0 for l<={L // 2}", TokenSystem.one_dim(1.0, 1.0, 1.0), mixed),
    }


@dataclass
class ScenarioRun:
    """One case: its title (with the prediction), trajectory, summary row (JSON-ready) and CSV rows."""

    title: str
    trajectory: Trajectory
    row: dict
    table: list[list]


def run_scenarios(tokens: int = 8, t_end: float = 1e4, seed: int = 0, progress: bool = False,
                  norm: bool = False) -> dict[str, ScenarioRun]:
    """Every case of ``one_dim_cases``, predicted and simulated to ``t_end``; where tokens blow up, simulated
    again on output times that crowd towards each blow-up, so the power law there shows. ``norm``: the same
    parameters in the normalised system (the update reads RMSNorm(x), weight 1, eps 1e-5), whose cases keep
    the paper's names for their parameters, not for what they do."""
    if not math.isfinite(t_end) or t_end <= 0:
        raise ValueError(f"t_end must be a finite time > 0, got {t_end}")
    out = {}
    for name, (params, system, x0) in one_dim_cases(tokens, seed).items():
        if norm:
            system, params = system.with_norm(1.0, 1e-5), params + ", RMSNorm"
        c = classify(system, x0)[0]
        tr = simulate(system, x0, t_end, n_points=300, progress=progress)
        ends = sorted({float(v) for v in tr.blowup_time[0] if math.isfinite(v)})
        if ends:  # tokens freeze at t |x'|/|x| = 1e10 (blowup.py), about 1e-10 T before their blow-up
            near = [T - T * torch.logspace(-0.5, -9.5, 120, dtype=torch.float64) for T in ends]
            tr = simulate(system, x0, t_out=torch.unique(torch.cat([tr.t[1:], *near])), progress=progress)
        observed = tr.token_outcomes()[0]
        window = f"last fifth of the decades up to t = {t_end:g}"
        row = {
            "case": name, "parameters": params, "predicted": c.scenario.value, "reason": c.reason,
            "observed": tr.outcome()[0].value, "solver_stopped": tr.stop_reasons()[0],
            "tokens": [{"predicted": f.outcome.value, "why": f.reason, "basis": f.basis, "end_time_bound": f.bound,
                        "observed": o.value, "end_time": float(tr.blowup_time[0, l]),
                        "blew_up_itself": bool(tr.primary[0, l])}
                       for l, (f, o) in enumerate(zip(c.tokens, observed))],
            "predicted_end_order": None if c.end_order is None else [l + 1 for l in c.end_order],
            "x0": x0[0].tolist(),
            "fitted_convergence_exponent": {"window": window, "values": fitted_convergence_exponent(tr)[0].tolist()},
            "fitted_log_growth_exponent": {"window": window, "values": fitted_log_growth_exponent(tr)[0].tolist()},
        }
        if name == "convergent" and not norm:  # the paper's constants are for the paper's model
            row["sqrt_t_times_x_at_t_end"] = (tr.norms()[-1, 0] * tr.t[-1].sqrt()).tolist()
            row["limit_of_sqrt_t_times_x"] = convergence_constants(-1.0, 1.0, tokens, (x0[0] != 0).tolist()).tolist()
        if name == "slow_divergence" and not norm:
            row["measured_ratio_to_running_min"] = slow_divergence_ratios(tr)[0].tolist()
        table = [["t"] + [f"x{l + 1}" for l in range(tokens)]] + [
            [t] + [v if o else "" for v, o in zip(xs, ok)]
            for t, xs, ok in zip(tr.t.tolist(), tr.x[:, 0, :, 0].tolist(), tr.valid[:, 0].tolist())]
        title = f"{'normalised, ' if norm else ''}{name.replace('_', ' ')} ({params})\npredicted: {describe_tokens([f.outcome for f in c.tokens])}"
        out[name] = ScenarioRun(title, tr, row, table)
    return out
