"""The continuous-time model of one layer, seeded from its real tokens, set beside what the stack does.

Tokens x_p(0) = the scan inputs u_l[p] (after in_proj, conv, SiLU) of the first positions evolve under
dX/dt = S6_l(X) with the layer's own S_B, S_C, S_Δ, A and Δ's bias b (``dynamics.TokenSystem``): what one
residual step of this layer computes on its scan inputs, repeated with shared weights. It omits the
conv, the gate z, the D skip, the norm, in_proj / out_proj (so x lives in d_inner, not in the residual
stream) and the other layers; those are the approximations behind every comparison here.

One layer is one unit of t, so the tokens entering layer l meet R = n_layer - l more steps. The ODE runs to
t = R (or the user's horizon): a first blow-up before R is something the depth allows; none by R means the
blow-up, if any, lies beyond the model's depth (a lower bound, not a time). Going further is not attempted:
on real layers the system turns stiff (fast-decaying channels beside growing tokens) and a D x N-dimensional
stiff solve costs minutes per layer. The explicit solver gets ``MAX_STEPS``; where it stops first, the
positions it did not carry to R are UNFINISHED and no fate is reported for them. Per position, what the ODE
does by t = R (an ``Outcome``: BLOWS_UP, GROWS, SHRINKS or STAYS) is set beside what the real stack does to
the same position from layer l to the last (the residual-stream norm ratio: GROWS or SHRINKS).
Agreement: the fraction of decided positions whose direction matches (None when none is decided);
Spearman: the rank correlation of predicted and observed growth over decided positions.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from scipy import stats
from torch import nn

from ..dynamics import TokenSystem, simulate
from ..dynamics.outcome import Outcome
from ..refine.spectrum import mixer_matrices

MAX_STEPS = 1000  # explicit steps per layer's ODE (about 2.6 ms of right-hand side each at d_inner 1536)


@dataclass
class OdeCheck:
    layer: int
    positions: int
    t_end: float  # the comparison's horizon, in layer steps (the layers that remain, by default)
    horizon: float  # how far the ODE got: t_end, or where the solver stopped
    predicted: list[str]  # per position, an Outcome value by t_end
    predicted_ratio: list[float | None]  # ||x(t_end)|| / ||x(0)||; None after a blow-up or where unfinished
    blowup_times: list[float | None]  # per position, when its solution ends (None: not by ``horizon``)
    first_blowup: float | None
    blowup_order: list[int]  # positions (0-based) by blow-up time, earliest first
    observed: list[str]  # "grows" | "shrinks": the residual norm from this layer to the last
    observed_ratio: list[float]
    decided: int  # positions with a predicted fate (not unfinished)
    agreement: float | None  # fraction of decided positions whose predicted and observed direction agree
    spearman: float | None  # rank correlation of predicted with observed growth over decided positions
    solver: str | None  # why the ODE stopped early, where it did


def layer_system(mixer: nn.Module) -> TokenSystem:
    """The continuous-time token system of one Mamba-1 mixer, its dt bias included."""
    mats = {k: v.cpu() for k, v in mixer_matrices(mixer).items()}  # the ODE runs on the CPU, where its tokens are
    return TokenSystem(mats["S_B"][None], mats["S_C"][None], mats["S_delta"][None], mats["A"][None],
                       mats["dt_bias"][None])


def ode_check(layer: int, mixer: nn.Module, scan_inputs: torch.Tensor, residual_norms: list[list[float]],
              t_end: float | None = None) -> OdeCheck:
    """Simulate layer ``layer``'s continuous-time model from its real scan inputs (P, D) to ``t_end`` (default:
    the layers that remain, n_layer - layer) and compare the per-token fates there with the residual stream's
    norms from that layer to the last."""
    remaining = len(residual_norms) - 1 - layer
    T = float(t_end) if t_end is not None else float(max(remaining, 1))
    system = layer_system(mixer)
    x0 = scan_inputs.double()[None]  # (1, P, D)
    P = x0.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unfinished solve is reported below
        tr = simulate(system, x0, T, n_points=20, max_steps=MAX_STEPS, stiff_fallback=False)
    k = len(tr.t) - 1
    n0, nT = x0[0].norm(dim=-1), tr.x[k, 0].norm(dim=-1)
    ends = tr.blowup_time[0]
    predicted, pred_ratio = [], []
    for p in range(P):
        end, ok, r = float(ends[p]), bool(tr.valid[k, 0, p]), float(nT[p] / n0[p].clamp_min(1e-300))
        if end <= T:
            predicted.append(Outcome.BLOWS_UP)
            pred_ratio.append(None)
        elif math.isfinite(end) and not ok:  # frozen just before t_end on its way to a blow-up after it
            predicted.append(Outcome.GROWS)
            pred_ratio.append(None)
        elif not ok or not math.isfinite(r):  # the solver stopped before t_end: no fate
            predicted.append(Outcome.UNFINISHED)
            pred_ratio.append(None)
        else:
            predicted.append(Outcome.GROWS if r > 1 else Outcome.SHRINKS if r < 1 else Outcome.STAYS)
            pred_ratio.append(r)
    blow = [None if not math.isfinite(float(e)) else float(e) for e in ends]
    order = [int(i) for i in torch.argsort(ends) if math.isfinite(float(ends[i]))]
    first = torch.tensor(residual_norms[layer][:P])
    last = torch.tensor(residual_norms[-1][:P])
    obs_ratio = (last / first.clamp_min(1e-300)).tolist()
    observed = [Outcome.GROWS if r > 1 else Outcome.SHRINKS for r in obs_ratio]
    decided = [p for p in range(P) if predicted[p] != Outcome.UNFINISHED]
    agree = rho = None
    if decided:
        up = {Outcome.BLOWS_UP, Outcome.GROWS}
        agree = sum((predicted[p] in up) == (observed[p] == Outcome.GROWS) for p in decided) / len(decided)
        score = [math.inf if pred_ratio[p] is None else pred_ratio[p] for p in decided]  # None: blew up or about to
        obs = [obs_ratio[p] for p in decided]
        if len(decided) >= 3 and len(set(score)) > 1 and len(set(obs)) > 1:
            rho = float(stats.spearmanr(score, obs).statistic)
            rho = rho if math.isfinite(rho) else None
    return OdeCheck(layer, P, T, tr.reached_times()[0], [o.value for o in predicted], pred_ratio, blow,
                    None if not order else blow[order[0]], order, [o.value for o in observed], obs_ratio,
                    len(decided), agree, rho, tr.stop_reasons()[0])
