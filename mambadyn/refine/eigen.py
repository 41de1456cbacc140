"""Refinement 1: constrain the sign of the eigenvalues of S_C^T S_B in every S6 mixer.

x_proj's weight W ((r + 2N) x D) holds S_Δ's factor (rows :r), S_B (rows r:r+N) and S_C (rows r+N:).
Following the paper's code, the raw weight is reparametrized as

    U   = triu(W[r:r+N], 1) + I_{N x D}           unit-diagonal upper-triangular, rank N
    δ_n = ± (softplus(W[r+N+n, 0]) + threshold)    (mixed: first ⌈N/2⌉ +, the rest -, no threshold)
    S_C = U,   S_B = diag(δ) U      =>   S_C^T S_B = U^T diag(δ) U

a congruence of diag(δ): by Sylvester's law of inertia its N nonzero eigenvalues have the signs of
δ, and by Ostrowski's theorem each lies in [δ_min σ_min(U)^2, δ_max σ_max(U)^2]. So "positive"
keeps every mixer out of the convergent scenario of the token dynamics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .modes import CONSTRAINED, EigenMode


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class EigenSign(nn.Module):
    """Parametrization of an x_proj weight (r + 2N, D) so that S_C^T S_B has eigenvalues of one sign."""

    def __init__(self, dt_rank: int, d_state: int, mode: str, threshold: float = 0.7):
        super().__init__()
        if not EigenMode.parse(mode).constrained:
            raise ValueError(f"EigenSign mode must be one of {CONSTRAINED}, got {mode!r}")
        mode = EigenMode.parse(mode)
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.r, self.n, self.mode, self.threshold = dt_rank, d_state, mode, threshold

    def signs(self, device=None, dtype=None) -> torch.Tensor:
        s = torch.ones(self.n, device=device, dtype=dtype)
        if self.mode is EigenMode.NEGATIVE:
            s = -s
        elif self.mode is EigenMode.MIXED:
            s[math.ceil(self.n / 2):] = -1
        return s

    def delta(self, W: torch.Tensor) -> torch.Tensor:
        """The N diagonal factors δ (their signs are the eigenvalue signs)."""
        mag = F.softplus(W[self.r + self.n :, 0])
        if self.mode is not EigenMode.MIXED:
            mag = mag + self.threshold
        return self.signs(W.device, W.dtype) * mag

    def factor(self, W: torch.Tensor) -> torch.Tensor:
        """U (N, D): unit-diagonal upper-triangular."""
        r, n = self.r, self.n
        return torch.triu(W[r : r + n], diagonal=1) + torch.eye(n, W.shape[1], device=W.device, dtype=W.dtype)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        U = self.factor(W)
        return torch.cat([W[: self.r], self.delta(W)[:, None] * U, U], dim=0)

    @torch.no_grad()
    def right_inverse(self, W_eff: torch.Tensor) -> torch.Tensor:
        """A raw weight whose forward gives ``W_eff`` when W_eff is in the constrained family; otherwise
        the nearest member in the sense of keeping S_C's strict upper triangle and S_B's diagonal
        (magnitudes clamped to the admissible range)."""
        r, n = self.r, self.n
        raw = torch.zeros_like(W_eff)
        raw[:r] = W_eff[:r]
        raw[r : r + n] = W_eff[r + n :]  # S_C = U: its strict upper triangle is U's
        diag = torch.diagonal(W_eff[r : r + n, :n])  # S_B = diag(δ) U has δ on its diagonal
        floor = 0.0 if self.mode is EigenMode.MIXED else self.threshold
        mag = (diag * self.signs(W_eff.device, W_eff.dtype) - floor).clamp_min(1e-4)
        raw[r + n :, 0] = _inv_softplus(mag)
        return raw


def find_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """S6 mixers in any model laid out like Mamba-1 (x_proj, dt_proj, A_log): mambadyn's and transformers'."""
    return [
        (name, m) for name, m in model.named_modules()
        if hasattr(m, "x_proj") and hasattr(m, "dt_proj") and hasattr(m, "A_log")
    ]


def constrain_eigenvalues(model: nn.Module, mode: str, threshold: float = 0.7, init: str = "project") -> nn.Module:
    """Register the eigenvalue-sign parametrization on every mixer's ``x_proj.weight`` (in place).

    mode: "positive" | "negative" | "mixed" | "free" ("free" removes any constraint, keeping the
    current effective weight). init: "project" maps the current weight onto the constrained family
    (exact for weights that are already in it, e.g. loaded from a constrained checkpoint);
    "keep" uses the current weight as the raw parameter, as the paper's code does at initialisation.
    Returns the model.
    """
    mode = EigenMode.parse(mode)
    if init not in ("project", "keep"):
        raise ValueError(f"init must be 'project' or 'keep', got {init!r}")
    mixers = find_mixers(model)
    if not mixers:
        raise ValueError("no Mamba mixer (a module with x_proj, dt_proj and A_log) found in the model")
    for _, m in mixers:
        if parametrize.is_parametrized(m.x_proj, "weight"):
            parametrize.remove_parametrizations(m.x_proj, "weight", leave_parametrized=True)
        if not mode.constrained:
            continue
        dt_rank, n = m.dt_proj.in_features, m.A_log.shape[1]
        if n > m.x_proj.in_features:
            raise ValueError(f"d_state {n} exceeds the mixer width {m.x_proj.in_features}: U cannot have rank N")
        raw = m.x_proj.weight.detach().clone()
        parametrize.register_parametrization(m.x_proj, "weight", EigenSign(dt_rank, n, mode, threshold))
        if init == "keep":
            with torch.no_grad():
                m.x_proj.parametrizations.weight.original.copy_(raw)
    return model


def eigen_mode_of(model: nn.Module) -> str:
    """The constraint on the model's mixers ("free" if none); raises if layers disagree."""
    modes = set()
    for _, m in find_mixers(model):
        if parametrize.is_parametrized(m.x_proj, "weight"):
            modes.update(p.mode.value for p in m.x_proj.parametrizations.weight if isinstance(p, EigenSign))
        else:
            modes.add(EigenMode.FREE.value)
    if len(modes) > 1:
        raise ValueError(f"mixers carry different eigen modes: {sorted(modes)}")
    return modes.pop() if modes else EigenMode.FREE.value
