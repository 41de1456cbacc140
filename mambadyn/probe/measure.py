"""What the probe measures in each layer of a Mamba model.

Parameters (from the weights alone), per mixer, float64:
    S_B, S_C (N, D): the B and C rows of x_proj;  S_Δ = dt_proj.weight @ x_proj.weight[:r] (D, D);
    A = -exp(A_log) (D, N);  D = d_inner.
    The N nonzero eigenvalues of S_C^T S_B are those of S_B S_C^T (N x N); the nonzero eigenvalues of
    its symmetric part (S_C^T S_B + S_B^T S_C) / 2 are those of K U U^T with U = [S_B; S_C] (2N x D)
    and K = [[0, I/2], [I/2, 0]] (the symmetric part is U^T K U).
Scenario: the paper proves its criteria in 1-D only; here D = d_inner > 1, so the rule used (no positive
    eigenvalue -> convergent; some positive -> divergent, fast where S_Δ x_l has a positive entry for
    the layer's real tokens) is the paper's 2-D observation extended, and is marked conjectural.
Tokens (on real input), per layer l = 0..n_layer (0: the embedding):
    ||h_l[p]||: the residual stream's norm at position p; ||norm(h_l)[p]|| the mixer's input;
    growth: the slope of log ||h_l[p]|| against l (a least-squares fit per position, labelled a fit);
    gradient share: ||d loss / d h_l[p]|| / sum_p ||d loss / d h_l[p]|| (next-token loss of the text).
ODE seeded from the layer: tokens x_p(0) = the scan input u_l[p] (after in_proj, conv, SiLU) of the first
    positions, simulated under dX/dt = S6_l(X) with the layer's own matrices (shared weights, no bias,
    conv, gate or norm: the paper's continuous-time model) to a horizon T. Its predicted per-token fate
    (blow-up / grows / shrinks) is set beside what the real stack does to the same positions from
    layer l to the last (the residual-stream norm ratio), and the agreement is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from ..dynamics import TokenSystem, simulate


@dataclass
class LayerParams:
    name: str
    eigenvalues: list[complex]  # N nonzero eigenvalues of S_C^T S_B
    symmetric_eigenvalues: list[float]  # 2N nonzero eigenvalues of its symmetric part
    positive: int
    negative: int
    complex_pairs: int
    sym_positive: int
    sym_negative: int
    scenario: str
    scenario_symmetric: str
    conjectural: bool = True
    reason: str = ""


def mixer_matrices(m: nn.Module) -> dict[str, torch.Tensor]:
    """S_B, S_C (N, D), S_delta (D, D), A (D, N) of one mixer, float64, from its effective weights."""
    W = m.x_proj.weight.detach().double()
    r, n = m.dt_proj.in_features, m.A_log.shape[1]
    return {"S_B": W[r: r + n], "S_C": W[r + n:], "S_delta": m.dt_proj.weight.detach().double() @ W[:r],
            "A": -torch.exp(m.A_log.detach().double())}


def _sign_counts(ev: torch.Tensor, atol: float) -> tuple[int, int, int]:
    """(positive, negative, complex pairs) among eigenvalues ``ev``, with ``atol`` as zero."""
    real = ev.real if ev.is_complex() else ev
    imag = ev.imag if ev.is_complex() else torch.zeros_like(ev)
    is_complex = imag.abs() > atol
    return int(((real > atol) & ~is_complex).sum()), int(((real < -atol) & ~is_complex).sum()), int(is_complex.sum()) // 2


def _scenario(npos_real_part: int, fast: bool | None) -> str:
    if npos_real_part == 0:
        return "convergent"
    if fast is None:
        return "divergent"
    return "fast_divergent" if fast else "slow_divergent"


def layer_params(name: str, m: nn.Module, tokens: torch.Tensor | None = None, tol: float = 1e-9) -> LayerParams:
    """The spectrum and the (conjectural) scenario of one mixer; ``tokens`` (L, D) are its real scan
    inputs, used for the fast/slow split (S_Δ x_l > 0 somewhere), or None for parameters only."""
    mats = mixer_matrices(m)
    SB, SC = mats["S_B"], mats["S_C"]
    n = SB.shape[0]
    ev = torch.linalg.eigvals(SB @ SC.T)
    ev = ev[torch.argsort(ev.real)]
    U = torch.cat([SB, SC])
    K = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    K[:n, n:] = K[n:, :n] = 0.5 * torch.eye(n, dtype=torch.float64)
    sym = torch.linalg.eigvals(K @ (U @ U.T)).real.sort().values  # real: similar to a symmetric matrix
    atol = tol * max(float(ev.abs().max()) if ev.numel() else 1.0, 1e-300)  # relative to the spectrum's size
    pos, neg, cpx = _sign_counts(ev, atol)
    spos, sneg, _ = _sign_counts(sym, atol)
    fast = None
    if tokens is not None:
        fast = bool(((tokens.double() @ mats["S_delta"].T) > 0).any())
    npos_real = int((ev.real > atol).sum())
    reason = (f"{npos_real} of {n} nonzero eigenvalues of S_C^T S_B have positive real part"
              + ("" if fast is None else f"; S_Δ x_l has {'a' if fast else 'no'} positive entry on the {len(tokens)} leading "
                 "real tokens"))
    return LayerParams(name, [complex(v) for v in ev.tolist()], sym.tolist(), pos, neg, cpx, spos, sneg,
                       _scenario(npos_real, fast), _scenario(spos, fast), True, reason)


@dataclass
class TokenTrace:
    """Per layer l = 0..n_layer: residual norms (L,), mixer-input norms (L,) for l < n_layer,
    gradient shares (L,); per position: fitted growth across depth."""

    residual_norms: list[list[float]]
    mixer_input_norms: list[list[float]]
    grad_shares: list[list[float]]
    growth_per_layer: list[float]  # fitted slope of log ||h_l[p]|| against l, per position
    fastest_positions: list[int]
    scan_inputs: list[torch.Tensor] = field(repr=False, default_factory=list)  # per layer (L, d_inner)
    loss: float = math.nan


def _lm_blocks(model) -> list[nn.Module]:
    if hasattr(model, "backbone"):
        return list(model.backbone.layers)
    return list(model.layers)


def trace_tokens(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None,
                 keep_scan_inputs: int = 0) -> TokenTrace:
    """Run ``model`` on ``ids`` (L,) token ids (an LM) or (1, C, H, W) images (a classifier with
    ``labels`` (1,)), record the residual stream, mixer inputs and scan inputs of each layer, and the
    loss gradient at every position. ``keep_scan_inputs``: how many leading positions' scan inputs
    (batch 0) to keep for the ODE."""
    blocks = _lm_blocks(model)
    streams: list[torch.Tensor] = []
    mixer_in: list[torch.Tensor] = []
    scan_in: list[torch.Tensor] = []

    def block_hook(_mod, args, out):
        if not streams:
            args[0].retain_grad()
            streams.append(args[0])
        out.retain_grad()
        streams.append(out)

    def norm_hook(_mod, _args, out):
        mixer_in.append(out.detach())

    def conv_hook(_mod, args, out):  # the mixer's u = silu(conv(x)) over the first L steps
        L = args[0].shape[-1]
        scan_in.append(F.silu(out[..., :L]).detach()[0, :, :keep_scan_inputs].T.double())

    handles = []
    for b in blocks:
        handles.append(b.register_forward_hook(block_hook))
        handles.append(b.norm.register_forward_hook(norm_hook))
        if keep_scan_inputs:
            handles.append(b.mixer.conv1d.register_forward_hook(conv_hook))
    try:
        with torch.enable_grad():
            if labels is None:
                x = ids[None]
                logits = model(x)
                loss = F.cross_entropy(logits[0, :-1].float(), ids[1:])
            else:
                logits = model(ids)
                loss = F.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the model's loss on this input is {loss.item()}: non-finite activations")
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    # the measurements are small: they are gathered on the CPU whatever device the model runs on
    norms = [s.detach()[0].norm(dim=-1).cpu() for s in streams]  # (L,) each
    grads = [s.grad[0].norm(dim=-1).cpu() if s.grad is not None else torch.zeros(s.shape[1]) for s in streams]
    shares = [(g / g.sum().clamp_min(1e-300)).tolist() for g in grads]
    logn = torch.stack(norms).double().clamp_min(1e-300).log()  # (layers + 1, L)
    depth = torch.arange(logn.shape[0], dtype=torch.float64)[:, None]
    dc = depth - depth.mean()
    slope = ((dc * (logn - logn.mean(0))).sum(0) / (dc**2).sum()).tolist()
    order = sorted(range(len(slope)), key=lambda p: -slope[p])
    return TokenTrace([n.tolist() for n in norms], [m[0].norm(dim=-1).tolist() for m in mixer_in], shares, slope,
                      order[:10], [x.cpu() for x in scan_in], loss.item())


@dataclass
class OdeCheck:
    layer: int
    positions: int
    t_end: float
    predicted: list[str]  # per position: "blow-up" | "grows" | "shrinks"
    predicted_ratio: list[float | None]  # ||x(T)|| / ||x(0)||, None after a blow-up
    blowup_order: list[int]  # positions (0-based) by blow-up time, earliest first
    observed: list[str]  # "grows" | "shrinks": the residual norm from this layer to the last
    observed_ratio: list[float]
    agreement: float  # fraction of positions whose predicted and observed direction agree
    spearman: float | None  # rank correlation of predicted growth with observed growth


def ode_check(layer: int, mixer: nn.Module, scan_inputs: torch.Tensor, residual_norms: list[list[float]],
              t_end: float = 1.0) -> OdeCheck:
    """Simulate layer ``layer``'s continuous-time model from its real scan inputs (P, D) and compare the
    predicted token fates with the residual stream's norms from that layer to the last."""
    mats = mixer_matrices(mixer)
    system = TokenSystem(mats["S_B"][None], mats["S_C"][None], mats["S_delta"][None], mats["A"][None])
    x0 = scan_inputs.double()[None]  # (1, P, D)
    P = x0.shape[1]
    tr = simulate(system, x0, t_end, n_points=20, max_steps=4000, stiff_fallback=False)
    n0 = x0[0].norm(dim=-1)
    nT = tr.x[-1, 0].norm(dim=-1)
    ratio = (nT / n0.clamp_min(1e-300))
    blew = tr.blew_up[0]
    predicted = ["blow-up" if b else ("grows" if r > 1 else "shrinks") for b, r in zip(blew.tolist(), ratio.tolist())]
    pred_ratio = [None if b else float(r) for b, r in zip(blew.tolist(), ratio.tolist())]
    order = [int(i) for i in torch.argsort(tr.blowup_time[0]) if bool(blew[i])]
    first = torch.tensor(residual_norms[layer][:P])
    last = torch.tensor(residual_norms[-1][:P])
    obs_ratio = (last / first.clamp_min(1e-300)).tolist()
    observed = ["grows" if r > 1 else "shrinks" for r in obs_ratio]
    agree = sum((p in ("blow-up", "grows")) == (o == "grows") for p, o in zip(predicted, observed)) / P
    score = [math.inf if b else float(r) for b, r in zip(blew.tolist(), ratio.tolist())]
    rho = None
    if P >= 3 and len(set(score)) > 1 and len(set(obs_ratio)) > 1:
        rho = float(stats.spearmanr(score, obs_ratio).statistic)
    return OdeCheck(layer, P, t_end, predicted, pred_ratio, order, observed, obs_ratio, agree, rho)
