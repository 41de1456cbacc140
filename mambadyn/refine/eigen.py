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
    """Parametrization of an x_proj weight (r + 2N, D) so that S_C^T S_B has eigenvalues of one sign; with
    ``groups``, ``b_start`` and ``c_start``, of a Mamba-2 in_proj weight, per group g (B_g at rows
    b_start + g N, C_g at c_start + g N; every other row passes through)."""

    def __init__(self, dt_rank: int, d_state: int, mode: str, threshold: float = 0.7, groups: int = 1,
                 b_start: int | None = None, c_start: int | None = None):
        super().__init__()
        self.groups = groups
        self.b_start = dt_rank if b_start is None else b_start
        self.c_start = dt_rank + d_state if c_start is None else c_start
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

    def _rows(self, g: int) -> tuple[slice, slice]:
        n = self.n
        return slice(self.b_start + g * n, self.b_start + (g + 1) * n), slice(self.c_start + g * n, self.c_start + (g + 1) * n)

    def delta(self, W: torch.Tensor, g: int = 0) -> torch.Tensor:
        """The N diagonal factors δ of group g (their signs are the eigenvalue signs)."""
        mag = F.softplus(W[self._rows(g)[1], 0])
        if self.mode is not EigenMode.MIXED:
            mag = mag + self.threshold
        return self.signs(W.device, W.dtype) * mag

    def factor(self, W: torch.Tensor, g: int = 0) -> torch.Tensor:
        """U (N, D) of group g: unit-diagonal upper-triangular."""
        rows = W[self._rows(g)[0]]
        return torch.triu(rows, diagonal=1) + torch.eye(self.n, W.shape[1], device=W.device, dtype=W.dtype)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        if self.groups == 1 and self.b_start == self.r and W.shape[0] == self.r + 2 * self.n:  # x_proj: one cat
            U = self.factor(W)
            return torch.cat([W[: self.r], self.delta(W)[:, None] * U, U], dim=0)
        out = W.clone()
        for g in range(self.groups):
            U = self.factor(W, g)
            b, c = self._rows(g)
            out[b] = self.delta(W, g)[:, None] * U
            out[c] = U
        return out

    @torch.no_grad()
    def right_inverse(self, W_eff: torch.Tensor) -> torch.Tensor:
        """A raw weight whose forward gives ``W_eff`` when W_eff is in the constrained family; otherwise
        the nearest member in the sense of keeping S_C's strict upper triangle and S_B's diagonal
        (magnitudes clamped to the admissible range)."""
        n = self.n
        raw = W_eff.clone()
        floor = 0.0 if self.mode is EigenMode.MIXED else self.threshold
        for g in range(self.groups):
            b, c = self._rows(g)
            raw[b] = W_eff[c]  # S_C = U: its strict upper triangle is U's
            raw[c] = 0.0
            diag = torch.diagonal(W_eff[b, :n])  # S_B = diag(δ) U has δ on its diagonal
            mag = (diag * self.signs(W_eff.device, W_eff.dtype) - floor).clamp_min(1e-4)
            raw[c, 0] = _inv_softplus(mag)
        return raw


def find_mamba2_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Mamba-2 mixers of transformers' families (in_proj holding x, B, C and dt; per-head A_log)."""
    return [(name, m) for name, m in model.named_modules()
            if hasattr(m, "in_proj") and hasattr(m, "A_log") and hasattr(m, "n_groups") and m.A_log.dim() == 1]


def _mamba2_sign(m: nn.Module, mode, threshold: float) -> EigenSign:
    d, G, n = m.intermediate_size, m.n_groups, m.ssm_state_size
    if n > m.in_proj.in_features:
        raise ValueError(f"state size {n} exceeds the model width {m.in_proj.in_features}: U cannot have rank N")
    return EigenSign(0, n, mode, threshold, groups=G, b_start=2 * d, c_start=2 * d + G * n)


def _proj(m: nn.Module) -> nn.Module:
    return m.x_proj if hasattr(m, "x_proj") else m.in_proj


def find_mixers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """S6 mixers in any model laid out like Mamba-1 (x_proj, dt_proj, A_log): mambadyn's and transformers'."""
    return [
        (name, m) for name, m in model.named_modules()
        if hasattr(m, "x_proj") and hasattr(m, "dt_proj") and hasattr(m, "A_log")
    ]


def constrain_eigenvalues(model: nn.Module, mode: str, threshold: float = 0.7, init: str = "project") -> nn.Module:
    """Register the eigenvalue-sign parametrization on every mixer's ``x_proj.weight`` (in place).

    mode: "positive" | "negative" | "mixed" | "free" ("free" removes any constraint, keeping the
    current effective weight). Before transformers' ``save_pretrained``, call ``bake(model)``: a parametrized
    weight is saved under ``parametrizations.weight.original``, a key ``from_pretrained`` does not read, so the
    loaded model would start that projection afresh. init: "project" maps the current weight onto the
    constrained family (exact for weights that are already in it, e.g. loaded from a constrained checkpoint);
    "keep" uses the current weight as the raw parameter, as the paper's code does at initialisation.
    Returns the model.
    """
    mode = EigenMode.parse(mode)
    if init not in ("project", "keep"):
        raise ValueError(f"init must be 'project' or 'keep', got {init!r}")
    mixers = find_mixers(model) + find_mamba2_mixers(model)
    if not mixers:
        raise ValueError("no Mamba mixer (a module with x_proj, dt_proj and A_log, or a Mamba-2 in_proj with "
                         "n_groups and A_log) found in the model")
    for _, m in mixers:
        proj = _proj(m)
        if parametrize.is_parametrized(proj, "weight"):
            parametrize.remove_parametrizations(proj, "weight", leave_parametrized=True)
        if not mode.constrained:
            continue
        if hasattr(m, "x_proj"):
            dt_rank, n = m.dt_proj.in_features, m.A_log.shape[1]
            if n > m.x_proj.in_features:
                raise ValueError(f"d_state {n} exceeds the mixer width {m.x_proj.in_features}: U cannot have rank N")
            sign = EigenSign(dt_rank, n, mode, threshold)
        else:  # Mamba-2: per group, W_C^(g)T W_B^(g) = U^T diag(δ) U
            sign = _mamba2_sign(m, mode, threshold)
        raw = proj.weight.detach().clone()
        parametrize.register_parametrization(proj, "weight", sign)
        if init == "keep":
            with torch.no_grad():
                proj.parametrizations.weight.original.copy_(raw)
    return model


def bake(model: nn.Module) -> nn.Module:
    """Replace every eigen-sign parametrization by the weight it gives (in place), so that the model saves
    and loads as a plain checkpoint of its family (transformers' save_pretrained / from_pretrained); the
    constraint holds for the saved weights, and ``constrain_eigenvalues(model, mode)`` after loading
    restores it for training (exactly: the weights are in the family). Returns the model."""
    for _, m in find_mixers(model) + find_mamba2_mixers(model):
        proj = _proj(m)
        if parametrize.is_parametrized(proj, "weight"):
            parametrize.remove_parametrizations(proj, "weight", leave_parametrized=True)
    return model


def eigen_mode_of(model: nn.Module) -> str:
    """The constraint on the model's mixers ("free" if none); raises if layers disagree."""
    modes = set()
    for _, m in find_mixers(model) + find_mamba2_mixers(model):
        if parametrize.is_parametrized(_proj(m), "weight"):
            modes.update(p.mode.value for p in _proj(m).parametrizations.weight if isinstance(p, EigenSign))
        else:
            modes.add(EigenMode.FREE.value)
    if len(modes) > 1:
        raise ValueError(f"mixers carry different eigen modes: {sorted(modes)}")
    return modes.pop() if modes else EigenMode.FREE.value
