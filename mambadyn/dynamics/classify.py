"""The paper's scenarios, decided from the parameters and the initial tokens (no simulation).

1-D (proved in the paper): mu = S_C^T S_B < 0 -> all tokens converge to 0; mu > 0 and s x_l(0) < 0
for every l -> all diverge slowly; mu > 0 and s x_l(0) > 0 for some l -> finite-time blow-up.
D > 1 (conjectural, from the paper's 2-D experiments): convergent when every eigenvalue of S_C^T S_B
has negative real part, divergent when at least one is positive; which matrix decides (S_C^T S_B
itself or its symmetric part) is not settled, so both are offered.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from .system import TokenSystem


class Scenario(str, Enum):
    CONVERGENT = "convergent"
    SLOW_DIVERGENT = "slow_divergent"
    FAST_DIVERGENT = "fast_divergent"
    DEGENERATE = "degenerate"  # mu = 0 or all tokens 0: nothing moves


@dataclass(frozen=True)
class Classification:
    scenario: Scenario
    reason: str
    conjectural: bool


def positive_eigenvalue_count(system: TokenSystem, symmetric: bool = False, tol: float = 1e-10) -> torch.Tensor:
    """Number of eigenvalues of S_C^T S_B (real part) or of its symmetric part that are > tol. (batch,)."""
    M = system.io_matrix()
    if symmetric:
        ev = torch.linalg.eigvalsh((M + M.transpose(1, 2)) / 2)
    else:
        ev = torch.linalg.eigvals(M).real
    return (ev > tol).sum(-1)


def classify(system: TokenSystem, x0: torch.Tensor, criterion: str = "matrix") -> list[Classification]:
    """Scenario per system, with the reason. x0: (batch, L, D) (or (batch, L) in 1-D).
    criterion ("matrix" | "symmetric") picks the matrix whose eigenvalues decide when D > 1."""
    if criterion not in ("matrix", "symmetric"):
        raise ValueError(f"criterion must be 'matrix' or 'symmetric', got {criterion!r}")
    X = system.check_state(x0)
    out = []
    if system.D == 1:
        mu = system.io_matrix()[:, 0, 0]
        sx = system.S_delta[:, 0, 0][:, None] * X[..., 0]
        nonzero = X[..., 0] != 0
        for i in range(system.batch):
            m = float(mu[i])
            if m == 0 or not nonzero[i].any():
                out.append(Classification(Scenario.DEGENERATE, "mu = 0 or every token is 0: tokens stay put", False))
            elif m < 0:
                out.append(Classification(Scenario.CONVERGENT, f"mu = {m:.3g} < 0", False))
            elif (sx[i][nonzero[i]] >= 0).any():
                ls = (torch.nonzero((sx[i] >= 0) & nonzero[i]).flatten() + 1).tolist()
                why = "s = 0 makes softplus constant (cubic growth)" if sx[i][nonzero[i]].eq(0).all() else \
                      f"s x_l(0) > 0 for tokens l = {ls[:6]}{'...' if len(ls) > 6 else ''}"
                out.append(Classification(Scenario.FAST_DIVERGENT, f"mu = {m:.3g} > 0 and {why}", False))
            else:
                out.append(Classification(Scenario.SLOW_DIVERGENT, f"mu = {m:.3g} > 0 and s x_l(0) < 0 for all l",
                                          False))
        return out
    npos = positive_eigenvalue_count(system, symmetric=criterion == "symmetric")
    which = "symmetric part of S_C^T S_B" if criterion == "symmetric" else "S_C^T S_B"
    sdx = torch.einsum("bed,bld->ble", system.S_delta, X)
    for i in range(system.batch):
        k = int(npos[i])
        if k == 0:
            out.append(Classification(Scenario.CONVERGENT, f"no eigenvalue of {which} is positive", True))
        elif (sdx[i] > 0).any():
            out.append(Classification(Scenario.FAST_DIVERGENT,
                                      f"{k} positive eigenvalue(s) of {which}; S_Δ x_l(0) has positive entries", True))
        else:
            out.append(Classification(Scenario.SLOW_DIVERGENT,
                                      f"{k} positive eigenvalue(s) of {which}; S_Δ x_l(0) < 0 everywhere", True))
    return out
