"""The spectrum of S_C^T S_B, layer by layer.

S_C^T S_B is D x D of rank <= N; its nonzero eigenvalues are those of the N x N matrix S_B S_C^T
(AB and BA share their nonzero spectrum), which is what we compute: cheap and free of the D - N
numerically-zero eigenvalues whose signs are noise.
"""

from __future__ import annotations

import torch
from torch import nn

from .eigen import find_mixers


def mixer_matrices(mixer: nn.Module) -> dict[str, torch.Tensor]:
    """S_B, S_C (N, D) and S_Δ = dt_proj.weight @ x_proj.weight[:r] (D, D) of one mixer, float64."""
    W = mixer.x_proj.weight.detach().double()
    r, n = mixer.dt_proj.in_features, mixer.A_log.shape[1]
    return {
        "S_B": W[r : r + n],
        "S_C": W[r + n :],
        "S_delta": mixer.dt_proj.weight.detach().double() @ W[:r],
    }


def spectrum(model: nn.Module, symmetric: bool = False) -> list[torch.Tensor]:
    """Per mixer, the N nonzero eigenvalues of S_C^T S_B (complex128, sorted by real part).

    With ``symmetric=True``, the eigenvalues of its symmetric part (S_C^T S_B + S_B^T S_C)/2 instead,
    restricted to the 2N-dimensional span of S_B's and S_C's rows (real, sorted)."""
    out = []
    for _, m in find_mixers(model):
        mats = mixer_matrices(m)
        SB, SC = mats["S_B"], mats["S_C"]
        if symmetric:
            Q, _ = torch.linalg.qr(torch.cat([SB, SC]).T)  # orthonormal basis of the row span (D, <=2N)
            M = Q.T @ SC.T @ SB @ Q
            ev = torch.linalg.eigvalsh((M + M.T) / 2)
        else:
            ev = torch.linalg.eigvals(SB @ SC.T)
            ev = ev[torch.argsort(ev.real)]
        out.append(ev)
    return out
