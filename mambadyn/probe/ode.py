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

Two continuous-time models run from the same tokens: the paper's (``dynamics.TokenSystem``, the update reads
x) and the normalised one (``TokenSystem.with_norm``: the update reads n(x) = s x / sqrt(|x|^2 / D + eps), as a
Mamba block's RMSNorm makes what the scan sees independent of the residual stream's scale). The block's
norm sits on the residual stream, before in_proj, so in d_inner its weight is not defined; the model takes
one scale s, the median RMS of the real scan inputs, so that at t = 0 both models read about the same
tokens, and eps = 1e-5 s^2. Beside the norm, each model's prediction of the cosine to the first token is
set against the stream's: for positions p >= 1, whether cos(x_p, x_1) rises or falls from t = 0 to T in the
model and from this layer to the last in the residual stream (the spaces differ, d_inner and d_model;
only the direction of the change is compared).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from scipy import stats
from torch import nn

from ..dynamics import TokenSystem, simulate
from ..dynamics.outcome import Outcome
from ..refine.spectrum import mixer_matrices
from .clusters import cosine_to_first

MAX_STEPS = 1000  # explicit steps per layer's ODE (about 2.6 ms of right-hand side each at d_inner 1536)
MODELS = ("paper", "normalised")  # the paper's fields sit at OdeCheck's top level, the others under their name


@dataclass
class ModelFit:
    """One continuous-time model's prediction for the positions of one layer, beside the stream."""

    model: str  # "paper" | "normalised"
    horizon: float  # how far the ODE got: t_end, or where the solver stopped
    predicted: list[str]  # per position, an Outcome value by t_end
    predicted_ratio: list[float | None]  # ||x(t_end)|| / ||x(0)||; None after a blow-up or where unfinished
    predicted_cosine_change: list[float | None]  # cos(x_p, x_1) at t_end minus at 0 (None: p = 0, or not valid)
    decided: int
    agreement: float | None  # norm direction
    spearman: float | None
    cosine_decided: int
    cosine_agreement: float | None  # direction of the change of the cosine to the first token
    cosine_spearman: float | None
    solver: str | None


@dataclass
class OdeCheck:
    """The paper's model's fields at the top level (``ModelFit`` of the normalised one in ``normalised``)."""

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
    observed_cosine_change: list[float | None] = field(default_factory=list)  # stream, last layer minus this one
    cosine_agreement: float | None = None  # the paper's model, cosine direction
    cosine_spearman: float | None = None
    normalised: ModelFit | None = None
    norm_scale: float | None = None  # s, the normalised model's weight
    note: str | None = None  # approximations beyond the module docstring's (a family's norms on B, C and Δ)


def interaction_system(it, U: torch.Tensor, V: torch.Tensor) -> TokenSystem:
    """The token system of one Mamba-1-kind layer of a transformers family from its ``nn.families.Interaction``
    (float64, on the CPU) and S_Δ's factors U = dt_proj.weight (D, r), V = x_proj.weight[:r] (r, D)."""
    return TokenSystem(it.S_B[None], it.S_C[None], it.S_delta[None], it.A[None], it.dt_bias[None],
                       S_delta_factors=(U.double().cpu()[None], V.double().cpu()[None]))


def layer_system(mixer: nn.Module) -> TokenSystem:
    """The continuous-time token system of one Mamba-1 mixer, its dt bias included, with S_Δ's low rank
    (dt_proj.weight @ x_proj.weight[:r]) kept as factors: the right-hand side's Δ then costs r/D of the dense
    product (1/32 at d_inner 1536)."""
    mats = {k: v.cpu() for k, v in mixer_matrices(mixer).items()}  # the ODE runs on the CPU, where its tokens are
    r = mixer.dt_proj.in_features
    U = mixer.dt_proj.weight.detach().double().cpu()
    V = mixer.x_proj.weight.detach().double().cpu()[:r]
    return TokenSystem(mats["S_B"][None], mats["S_C"][None], mats["S_delta"][None], mats["A"][None],
                       mats["dt_bias"][None], S_delta_factors=(U[None], V[None]))


def _agree(pred: list[bool | None], score: list[float], obs: list[float]) -> tuple[int, float | None, float | None]:
    """(decided, agreement, Spearman) of predicted directions ``pred`` (None: undecided; True: up) against
    observed changes ``obs`` (> 0: up), ranking ``score`` against ``obs`` over the decided positions."""
    idx = [p for p, v in enumerate(pred) if v is not None and obs[p] is not None]
    if not idx:
        return 0, None, None
    agree = sum(pred[p] == (obs[p] > 0) for p in idx) / len(idx)
    rho = None
    a, b = [score[p] for p in idx], [obs[p] for p in idx]
    if len(idx) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
        rho = float(stats.spearmanr(a, b).statistic)
        rho = rho if math.isfinite(rho) else None
    return len(idx), agree, rho


def _fit(model: str, system: TokenSystem, x0: torch.Tensor, T: float, obs_ratio: list[float],
         obs_dcos: list[float | None]) -> tuple[ModelFit, object]:
    P = x0.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unfinished solve is reported below
        tr = simulate(system, x0, T, n_points=20, max_steps=MAX_STEPS, stiff_fallback=False)
    k = len(tr.t) - 1
    n0, nT = x0[0].norm(dim=-1), tr.x[k, 0].norm(dim=-1)
    ends = tr.blowup_time[0]
    predicted, ratio = [], []
    for p in range(P):
        end, ok, r = float(ends[p]), bool(tr.valid[k, 0, p]), float(nT[p] / n0[p].clamp_min(1e-300))
        if end <= T:
            predicted.append(Outcome.BLOWS_UP)
            ratio.append(None)
        elif math.isfinite(end) and not ok:  # frozen just before t_end on its way to a blow-up after it
            predicted.append(Outcome.GROWS)
            ratio.append(None)
        elif not ok or not math.isfinite(r):  # the solver stopped before t_end: no fate
            predicted.append(Outcome.UNFINISHED)
            ratio.append(None)
        else:
            predicted.append(Outcome.GROWS if r > 1 else Outcome.SHRINKS if r < 1 else Outcome.STAYS)
            ratio.append(r)
    up = {Outcome.BLOWS_UP, Outcome.GROWS}
    pred = [None if o == Outcome.UNFINISHED else o in up for o in predicted]
    score = [math.inf if r is None else r for r in ratio]  # None: blew up or about to
    decided, agree, rho = _agree(pred, score, [r - 1 for r in obs_ratio])
    # the cosine needs both tokens' values at T: none where either is frozen, unfinished or blown up
    valid = tr.valid[k, 0]
    dcos = (cosine_to_first(tr.x[k, 0]) - cosine_to_first(x0[0])).tolist()
    dcos = [None if p == 0 or not (bool(valid[p]) and bool(valid[0])) else dcos[p] for p in range(P)]
    cpred = [None if v is None or v == 0 else v > 0 for v in dcos]
    c_dec, c_agree, c_rho = _agree(cpred, [0.0 if v is None else v for v in dcos], obs_dcos)
    fit = ModelFit(model, tr.reached_times()[0], [o.value for o in predicted], ratio, dcos, decided, agree, rho,
                   c_dec, c_agree, c_rho, tr.stop_reasons()[0])
    return fit, tr


def ode_check(layer: int, mixer: nn.Module | TokenSystem, scan_inputs: torch.Tensor, residual_norms: list[list[float]],
              t_end: float | None = None, first_cosines: list[list[float]] | None = None, stream: int | None = None,
              note: str | None = None) -> OdeCheck:
    """Simulate layer ``layer``'s continuous-time models (the paper's and the normalised one) from its real scan
    inputs (P, D) to ``t_end`` (default: the layers that remain, n_layer - layer) and compare the per-token fates
    there with the residual stream's norms (and, given ``first_cosines``, its cosines to the first token, per
    layer boundary) from that layer to the last. ``mixer``: a mambadyn mixer or the layer's ``TokenSystem``;
    ``stream``: the residual-stream boundary at the layer's input where it differs from ``layer`` (a hybrid's
    SSM layers are not all its layers); ``note``: the approximations beyond the module docstring's."""
    stream = layer if stream is None else stream
    remaining = len(residual_norms) - 1 - stream
    T = float(t_end) if t_end is not None else float(max(remaining, 1))
    system = mixer if isinstance(mixer, TokenSystem) else layer_system(mixer)
    x0 = scan_inputs.double()[None]  # (1, P, D)
    P = x0.shape[1]
    first = torch.tensor(residual_norms[stream][:P])
    last = torch.tensor(residual_norms[-1][:P])
    obs_ratio = (last / first.clamp_min(1e-300)).tolist()
    observed = [Outcome.GROWS if r > 1 else Outcome.SHRINKS for r in obs_ratio]
    obs_dcos: list[float | None] = [None] * P
    if first_cosines is not None:
        c0, c1 = first_cosines[stream][:P], first_cosines[-1][:P]
        obs_dcos = [None if p == 0 else c1[p] - c0[p] for p in range(P)]
    paper, tr = _fit("paper", system, x0, T, obs_ratio, obs_dcos)
    scale = float(x0[0].square().mean(-1).sqrt().median())
    norm = None
    if scale > 0:
        norm, _ = _fit("normalised", system.with_norm(scale, 1e-5 * scale**2), x0, T, obs_ratio, obs_dcos)
    ends = tr.blowup_time[0]
    blow = [None if not math.isfinite(float(e)) else float(e) for e in ends]
    order = [int(i) for i in torch.argsort(ends) if math.isfinite(float(ends[i]))]
    return OdeCheck(layer, P, T, paper.horizon, paper.predicted, paper.predicted_ratio, blow,
                    None if not order else blow[order[0]], order, [o.value for o in observed], obs_ratio,
                    paper.decided, paper.agreement, paper.spearman, paper.solver, obs_dcos, paper.cosine_agreement,
                    paper.cosine_spearman, norm, scale, note)
