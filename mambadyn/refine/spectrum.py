"""The spectrum of S_C^T S_B, layer by layer.

S_C^T S_B is D x D of rank <= N; its nonzero eigenvalues are those of the N x N matrix S_B S_C^T
(AB and BA share their nonzero spectrum), which is what we compute: cheap and free of the D - N
numerically-zero eigenvalues whose signs are noise.

Its symmetric part is sym = (S_C^T S_B + S_B^T S_C) / 2 = U^T K U with U = [S_B; S_C] (2N x D) and
K = [[0, I/2], [I/2, 0]], which has N eigenvalues +1/2 and N eigenvalues -1/2. By Sylvester's law of
inertia, whenever U has full row rank 2N <= D, sym has exactly N positive and N negative nonzero
eigenvalues, whatever the weights: for an unconstrained layer that is linear algebra, not a finding.
The constrained eigen modes are the exception: S_B = diag(δ) S_C makes U rank N, and sym = S_C^T diag(δ) S_C
has the signs of δ. Its nonzero eigenvalues are computed in an orthonormal basis Q of U's row span
(D x rank), as those of Q^T sym Q.
"""

from __future__ import annotations

import torch
from torch import nn

from .eigen import find_mixers


def mixer_matrices(mixer: nn.Module) -> dict[str, torch.Tensor]:
    """One Mamba-1 mixer's continuous-time parameters, float64: S_B, S_C (N, D); S_Δ = dt_proj.weight @
    x_proj.weight[:r] (D, D); A = -exp(A_log) (D, N); dt_bias = dt_proj.bias (D,)."""
    W = mixer.x_proj.weight.detach().double()
    r, n = mixer.dt_proj.in_features, mixer.A_log.shape[1]
    bias = mixer.dt_proj.bias
    return {
        "S_B": W[r : r + n],
        "S_C": W[r + n :],
        "S_delta": mixer.dt_proj.weight.detach().double() @ W[:r],
        "A": -torch.exp(mixer.A_log.detach().double()),
        "dt_bias": (torch.zeros(W.shape[1], dtype=torch.float64) if bias is None else bias.detach().double()),
    }


def selective_params(mixer: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What one Mamba-1 mixer computes from its scan inputs u (L, d_inner), in u's dtype: S_Δ u (L, D)
    through dt_proj's low rank (before the bias), the bias b (D,) (zeros where there is none), B and C (L, N)."""
    W = mixer.x_proj.weight.detach().to(u.dtype)
    r, n = mixer.dt_proj.in_features, mixer.A_log.shape[1]
    p = u @ W.T
    raw = p[:, :r] @ mixer.dt_proj.weight.detach().to(u.dtype).T
    bias = mixer.dt_proj.bias
    b = torch.zeros(raw.shape[1], dtype=u.dtype, device=u.device) if bias is None else bias.detach().to(u.dtype)
    return raw, b, p[:, r: r + n], p[:, r + n:]


def rank_rtol(weight: torch.Tensor) -> float:
    """The relative size below which a singular value of a weight's rows counts as 0: 100 epsilons of the
    dtype the weight was computed in (a constrained float32 layer's [S_B; S_C] has rank N only to ~1e-8)."""
    return 100 * torch.finfo(weight.dtype).eps


def layer_spectrum(S_B: torch.Tensor, S_C: torch.Tensor, rtol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(eigenvalues, symmetric eigenvalues, rank of U): the N nonzero eigenvalues of S_C^T S_B (complex128,
    sorted by real part); the nonzero eigenvalues of its symmetric part restricted to U = [S_B; S_C]'s row
    span (float64, sorted); U's numerical rank (singular values above ``rtol`` of the largest; pass
    ``rank_rtol(weight)`` for weights computed in a lower precision). S_B, S_C (N, D)."""
    SB, SC = S_B.double(), S_C.double()
    ev = torch.linalg.eigvals(SB @ SC.T)
    ev = ev[torch.argsort(ev.real)]
    U = torch.cat([SB, SC])
    Qf, sv, _ = torch.linalg.svd(U.T, full_matrices=False)  # (D, 2N): left singular vectors span the rows
    rank = int((sv > rtol * sv.max().clamp_min(1e-300)).sum())
    Q = Qf[:, :rank]
    M = Q.T @ SC.T @ SB @ Q
    sym = torch.linalg.eigvalsh((M + M.T) / 2)
    return ev, sym, rank


def spectrum(model: nn.Module, symmetric: bool = False) -> list[torch.Tensor]:
    """Per mixer, the N nonzero eigenvalues of S_C^T S_B (complex128, sorted by real part), or with
    ``symmetric=True`` those of its symmetric part (``layer_spectrum``)."""
    out = []
    for _, m in find_mixers(model):
        mats = mixer_matrices(m)
        ev, sym, _ = layer_spectrum(mats["S_B"], mats["S_C"], rank_rtol(m.x_proj.weight))
        out.append(sym if symmetric else ev)
    return out
