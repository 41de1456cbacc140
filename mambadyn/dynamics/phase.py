"""Phase diagram beyond the paper: how often random D-dim systems converge, by the number of positive
eigenvalues of S_C^T S_B and of its symmetric part.

The paper proves its criterion in 1-D only. For D > 1 its 2-D experiments suggest that one positive
eigenvalue is enough for divergence; this tests that. Each cell (D, k) holds ``systems`` random
systems whose S_C^T S_B = P diag(λ) P^-1 has exactly k positive eigenvalues: P is Gaussian, |λ| is
uniform on [0.2, 1.5], S_C = I (N = D), S_Δ is Gaussian with variance 1/D, and the L tokens are
Gaussian. Each system runs to ``t_end``. It counts as converged when every token is observed to
converge (or stays at 0). The symmetric part's eigenvalues are counted for the same systems, so both
criteria are tabulated from one sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..typed import check_fields, positive
from .classify import positive_eigenvalue_count
from .outcome import Outcome
from .simulation import SimConfig, simulate
from .system import TokenSystem


@dataclass
class PhaseConfig:
    dims: tuple[int, ...] = (2, 3, 4, 5, 6)
    systems: int = 100  # per cell (D, k positive eigenvalues of S_C^T S_B)
    L: int = 4
    t_end: float = 1000.0
    a: float = 1.0
    seed: int = 0
    max_steps: int = 4000  # explicit steps per system, then LSODA takes over
    stiff_max_steps: int = 5000  # LSODA steps per system; still running then: unfinished, not counted

    def __post_init__(self):
        check_fields(self)
        positive(self, "systems", "L", "t_end", "a", "max_steps", "stiff_max_steps")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"PhaseConfig.dims must be dimensions >= 1, got {self.dims}")


def systems_with_k_positive(n: int, D: int, k: int, a: float = 1.0, generator=None) -> TokenSystem:
    """n random D-dim systems whose S_C^T S_B has exactly k positive (real) eigenvalues and D - k negative."""
    mag = 0.2 + 1.3 * torch.rand(n, D, generator=generator, dtype=torch.float64)
    lam = torch.cat([mag[:, :k], -mag[:, k:]], dim=1)
    P = torch.randn(n, D, D, generator=generator, dtype=torch.float64)
    M = P @ torch.diag_embed(lam) @ torch.linalg.inv(P)
    S_delta = torch.randn(n, D, D, generator=generator, dtype=torch.float64) / D**0.5
    eye = torch.eye(D, dtype=torch.float64).expand(n, D, D)
    return TokenSystem.from_matrices(M, eye, S_delta, a=a)  # S_C = I, so S_C^T S_B = S_B = M


def _tally(outcomes: list[list[Outcome]]) -> dict[str, torch.Tensor]:
    # a blow-up decides a system even where the solver then stopped; otherwise it must reach t_end
    done = torch.tensor([Outcome.BLOWS_UP in row or Outcome.UNFINISHED not in row for row in outcomes])
    conv = torch.tensor([all(o in (Outcome.CONVERGES, Outcome.STAYS) for o in row) for row in outcomes])
    blow = torch.tensor([Outcome.BLOWS_UP in row for row in outcomes])
    grow = torch.tensor([Outcome.GROWS in row and Outcome.BLOWS_UP not in row for row in outcomes])
    bounded = ~conv & ~blow & ~grow  # every token bounded, converging or at 0, and not all of them converge
    return {"done": done, "converged": conv & done, "blew_up": blow & done, "grew": grow & done,
            "bounded": bounded & done}


def phase_diagram(cfg: PhaseConfig, progress: bool = True) -> list[dict]:
    """One row per (D, criterion, k): systems finished, converged, blew up, grew without blowing up,
    stayed bounded without all converging (the four add up to the systems finished), fraction converged,
    unfinished (left out). The matrix criterion's cells hold ``cfg.systems`` each;
    the symmetric criterion regroups the same systems."""
    g = torch.Generator().manual_seed(cfg.seed)
    rows = []
    sim = SimConfig(t_end=cfg.t_end, n_points=60, max_steps=cfg.max_steps, stiff_max_steps=cfg.stiff_max_steps)
    cells = [(D, k) for D in cfg.dims for k in range(D + 1)]
    per_D: dict[int, list] = {}
    for D, k in tqdm(cells, desc="phase diagram (D, k)", disable=not progress):
        system = systems_with_k_positive(cfg.systems, D, k, a=cfg.a, generator=g)
        x0 = torch.randn(cfg.systems, cfg.L, D, generator=g, dtype=torch.float64)
        per_D.setdefault(D, []).append((system, _tally(simulate(system, x0, config=sim).token_outcomes())))
    for D, parts in per_D.items():
        tallies = {key: torch.cat([t[key] for _, t in parts]) for key in parts[0][1]}
        for criterion, sym in (("matrix", False), ("symmetric", True)):
            k = torch.cat([positive_eigenvalue_count(s, symmetric=sym) for s, _ in parts])
            for kk in range(D + 1):
                m = (k == kk) & tallies["done"]
                if not m.any():
                    continue
                rows.append({"D": D, "criterion": criterion, "positive": kk, "systems": int(m.sum()),
                             "converged": int(tallies["converged"][m].sum()),
                             "blew_up": int(tallies["blew_up"][m].sum()), "grew": int(tallies["grew"][m].sum()),
                             "bounded": int(tallies["bounded"][m].sum()),
                             "fraction": float(tallies["converged"][m].double().mean()),
                             "unfinished": int(((k == kk) & ~tallies["done"]).sum()),
                             "L": cfg.L, "t_end": cfg.t_end})
    return rows
