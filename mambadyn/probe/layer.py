"""What the probe reads from one Mamba-1 mixer: its spectrum, its effective Δ on real tokens, and the
paper's (conjectural) scenario with the numbers that say whether it matters at the model's depth.

Spectrum (weights alone, float64; ``refine.layer_spectrum``): the N nonzero eigenvalues of S_C^T S_B and the
nonzero eigenvalues of its symmetric part. The symmetric part's inertia is structural: when
U = [S_B; S_C] has full row rank 2N <= D, Sylvester's law forces N positive and N negative eigenvalues
whatever the weights (see ``refine.spectrum``), so it says nothing about training. The probe reports
whether it is forced, and its counts only as that.

Δ's bias. A real layer computes Δ = softplus(S_Δ u + b) with b = dt_proj.bias (about -6.9 to -2.3 at
initialisation, and trained checkpoints keep it there), while the paper's Δ = softplus(S_Δ u) has no b.
What b changes, in 1-D (x' = mu x Σ_j x_j^2 softplus(s x_j + b) ..., derived in dynamics.classify):
* not the fate: every 1-D theorem holds for any b, so asymptotically (|x| -> inf) the sign of S_Δ x
  still decides fast against slow;
* the time scale: while s x + b << 0, softplus(s x + b) ~ e^b e^(s x), so growth runs e^(-b) times slower
  (b = -4.6: 100x) until s x ~ -b, and a lone token's blow-up time
  T(x0, b) = ∫_{x0}^∞ dy / (mu y^3 softplus(s y + b)) grows like e^(-b) while s x0 < -b.
A real stack has only so many layers: one layer is one residual step x <- x + S6(x), i.e. t = 1 of the
continuous-time model, and the tokens entering layer l meet n_layer - l more steps. A predicted blow-up
at t >> n_layer - l is a statement about a model with many more layers, not about this one.

So per layer the probe reports the effective Δ on the layer's real tokens (quantiles over positions and
channels), the fraction of entries with S_Δ u > 0 (the asymptotic sign the conjecture reads) and with
S_Δ u + b > 0 (active now), and, from the layer's own ODE with its bias (``probe.ode``), the first
blow-up time in layer steps set beside the layers that remain.

Scenario: the paper proves its criteria in 1-D only; here D = d_inner > 1, so the rule
(``dynamics.classify.conjecture``) is the paper's 2-D observation extended, and is always labelled a
conjecture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dynamics.classify import conjecture
from ..refine.spectrum import layer_spectrum, mixer_matrices, rank_rtol, selective_params

QUANTILES = (0.01, 0.05, 0.5, 0.95, 0.99)


@dataclass
class DeltaStats:
    """Δ = softplus(S_Δ u + b) of one layer on its real scan inputs u, over every (position, channel)."""

    entries: int
    quantiles: dict[str, float]  # "q01", "q05", "q50", "q95", "q99" of the effective Δ
    max: float
    frac_sdx_positive: float  # S_Δ u > 0: the asymptotic sign the paper's fast/slow split reads
    frac_active_positive: float  # S_Δ u + b > 0: where softplus is past its knee now
    dt_bias: dict[str, float]  # min, median, max of b over channels


def delta_statistics(mixer: nn.Module, u: torch.Tensor) -> DeltaStats:
    """Δ statistics of ``mixer`` on its scan inputs u (L, d_inner) (after in_proj, conv, SiLU)."""
    raw, b, _, _ = selective_params(mixer, u.float())
    return delta_stats(raw, b)


def delta_stats(raw: torch.Tensor, b: torch.Tensor) -> DeltaStats:
    """Δ = softplus(raw + b) statistics: raw (L, channels) is Δ's data-dependent part on every position
    (S_Δ u), b (channels,) its bias. Computed where raw is (on a GPU only a handful of numbers come back: a
    2.8B layer at L = 2048 has 10M entries, whose copy and selection on the CPU took 0.27 s a layer)."""
    raw, b = raw.detach().float(), b.detach().float().to(raw.device)
    active = raw + b
    delta = F.softplus(active)
    n = delta.numel()
    q = quantiles(delta.flatten(), QUANTILES)
    return DeltaStats(int(n), {f"q{round(100 * p):02d}": v for p, v in zip(QUANTILES, q)},
                      float(delta.max()), int((raw > 0).sum()) / n, int((active > 0).sum()) / n,
                      {"min": float(b.min()), "median": float(b.median()), "max": float(b.max())})


def quantiles(x: torch.Tensor, qs: tuple[float, ...], sort: bool | None = None) -> list[float]:
    """numpy's default ("linear") quantiles qs of x (n,), on x's device. On the CPU numpy selects by
    partition, O(n) (torch.quantile sorts: 5x slower at a 130M layer's 3M entries); on a GPU a sort is fast,
    and torch.quantile refuses more than 2^24 entries, so the two order statistics around each quantile are
    read from a sort. ``sort``: force the sort (None: on a GPU only)."""
    if not (x.is_cuda if sort is None else sort):
        return [float(v) for v in np.quantile(x.cpu().numpy(), qs)]
    pos = torch.tensor(qs, dtype=torch.float64) * (x.numel() - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    ranked = x.sort().values
    v_lo, v_hi = ranked[lo.to(x.device)].double().cpu(), ranked[hi.to(x.device)].double().cpu()
    return (v_lo + (v_hi - v_lo) * (pos - lo)).tolist()


@dataclass
class LayerParams:
    name: str
    eigenvalues: list[complex]  # N nonzero eigenvalues of S_C^T S_B
    symmetric_eigenvalues: list[float]  # nonzero eigenvalues of its symmetric part (2N when U has full rank)
    positive: int
    negative: int
    complex_pairs: int
    sym_positive: int
    sym_negative: int
    symmetric_forced: bool  # N positive and N negative by Sylvester's law (U = [S_B; S_C] of full row rank 2N)
    symmetric_note: str
    scenario: str  # an Outcome value: the paper's conjecture for this layer (never a theorem here)
    conjectural: bool
    reason: str
    delta: DeltaStats | None = None
    first_blowup: float | None = None  # in layer steps: the layer's own ODE from its real tokens (None: none seen)
    ode_horizon: float | None = None  # how far that ODE ran
    layers_remaining: int | None = None  # residual steps from this layer to the last (this one included)
    depth_note: str = ""
    matrix: str = "S_C^T S_B"  # which interaction matrix the spectrum is of (nn.families)
    matrix_note: str = ""  # how it relates to what the layer computes
    group: int | None = None  # Mamba-2 kinds: the group of heads that shares this B and C


def _sign_counts(ev: torch.Tensor, atol: float) -> tuple[int, int, int]:
    """(positive, negative, complex pairs) among eigenvalues ``ev``, with ``atol`` as zero."""
    real = ev.real if ev.is_complex() else ev
    imag = ev.imag if ev.is_complex() else torch.zeros_like(ev)
    is_complex = imag.abs() > atol
    return int(((real > atol) & ~is_complex).sum()), int(((real < -atol) & ~is_complex).sum()), int(is_complex.sum()) // 2


def layer_params(name: str, m: nn.Module, tokens: torch.Tensor | None = None, delta: DeltaStats | None = None,
                 tol: float = 1e-9) -> LayerParams:
    """The spectrum and the (conjectural) scenario of one mambadyn mixer. ``tokens`` (P, D): real scan inputs
    whose S_Δ u signs split fast from slow (None: parameters only); ``delta``: the layer's Δ statistics."""
    mats = {k: v.cpu() for k, v in mixer_matrices(m).items()}  # the tokens and the spectra live on the CPU
    sdx_positive = None if tokens is None else bool(((tokens.double() @ mats["S_delta"].T) > 0).any())
    lp = matrix_params(name, mats["S_B"], mats["S_C"], rank_rtol(m.x_proj.weight), sdx_positive, tol=tol)
    if tokens is not None:
        lp.reason += f" (on the {len(tokens)} leading real tokens; asymptotic sign, without Δ's bias)"
    lp.delta = delta
    return lp


def matrix_params(name: str, SB: torch.Tensor, SC: torch.Tensor, rtol: float, sdx_positive: bool | None,
                  matrix: str = "S_C^T S_B", note: str = "", group: int | None = None, tol: float = 1e-9,
                  spectrum: tuple[torch.Tensor, torch.Tensor, int] | None = None) -> LayerParams:
    """The spectrum of K = S_C^T S_B given by its factors S_B, S_C (N, D), and the paper's (conjectural)
    scenario with ``sdx_positive``: whether Δ's data-dependent part has a positive entry on the tokens
    (None: no tokens). ``rtol``: the rank tolerance (``rank_rtol``); ``matrix``, ``note``: what K is;
    ``spectrum``: ``layer_spectrum(SB, SC, rtol)`` where the caller has it already (it depends on the weights
    alone, and many windows share it)."""
    n, D = SB.shape
    ev, sym, rank = spectrum if spectrum is not None else layer_spectrum(SB, SC, rtol)
    atol = tol * max(float(ev.abs().max()) if ev.numel() else 1.0, 1e-300)  # relative to the spectrum's size
    pos, neg, cpx = _sign_counts(ev, atol)
    spos, sneg, _ = _sign_counts(sym, atol)
    forced = rank == 2 * n
    sym_note = (f"forced by linear algebra: U = [S_B; S_C] has full row rank 2N = {2 * n} <= D = {D}, so the "
                f"symmetric part U^T K U has N positive and N negative eigenvalues for any weights (Sylvester's law of "
                f"inertia)" if forced else
                f"not forced: U = [S_B; S_C] has rank {rank} < 2N = {2 * n} (a constrained eigen mode ties S_B to S_C), "
                f"so the signs are the layer's own: {spos} positive, {sneg} negative")
    guess, why = conjecture(int((ev.real > atol).sum()), matrix, sdx_positive)
    return LayerParams(name, [complex(v) for v in ev.tolist()], sym.tolist(), pos, neg, cpx, spos, sneg, forced,
                       sym_note, guess.value, True, why, matrix=matrix, matrix_note=note, group=group)


def note_ode(lp: LayerParams, o, remaining: int) -> None:
    """Set the layer's ODE fields from its ``probe.ode.OdeCheck`` ``o``, with ``remaining`` layers after it."""
    lp.first_blowup, lp.ode_horizon, lp.layers_remaining = o.first_blowup, o.horizon, remaining
    lp.depth_note = depth_note(lp, stopped=o.solver is not None)


def depth_note(lp: LayerParams, stopped: bool = False) -> str:
    """One sentence setting the layer's predicted blow-up against the layers that remain; ``stopped``: the
    ODE's solver gave up at ``lp.ode_horizon``."""
    if lp.layers_remaining is None or lp.ode_horizon is None:
        return ""
    rem = lp.layers_remaining
    if lp.first_blowup is not None:
        where = "within" if lp.first_blowup <= rem else "beyond"
        return (f"its ODE from the real tokens first blows up at t = {lp.first_blowup:.4g} layer steps, {where} "
                f"the {rem} that remain")
    if stopped:
        return (f"its ODE from the real tokens shows no blow-up up to t = {lp.ode_horizon:.4g} layer steps, where "
                f"the solver stopped (stiff), short of the {rem} that remain: undetermined")
    return (f"its ODE from the real tokens shows no blow-up in the {rem} layer steps that remain (any blow-up lies "
            f"beyond the model's depth)" if lp.ode_horizon >= rem else
            f"its ODE from the real tokens shows no blow-up up to t = {lp.ode_horizon:.4g} layer steps "
            f"(the {rem} that remain were not simulated: --ode-t-end)")
