"""Phase diagram beyond the paper: how often random D-dim systems converge, against the number of
positive eigenvalues of S_C^T S_B (and of its symmetric part)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..typed import check_fields, positive
from .classify import positive_eigenvalue_count
from .simulation import SimConfig, simulate
from .system import TokenSystem


@dataclass
class PhaseConfig:
    dims: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    systems: int = 200  # per dimension
    L: int = 4
    t_end: float = 200.0
    a: float = 1.0
    seed: int = 0
    max_steps: int = 2000  # explicit steps per system, then LSODA takes over
    stiff_max_steps: int = 5000  # LSODA steps per system; still running then: unfinished, not counted

    def __post_init__(self):
        check_fields(self)
        positive(self, "systems", "L", "t_end", "a", "max_steps", "stiff_max_steps")
        if not self.dims or min(self.dims) < 1:
            raise ValueError(f"PhaseConfig.dims must be dimensions >= 1, got {self.dims}")


def phase_diagram(cfg: PhaseConfig, progress: bool = True) -> list[dict]:
    """One row per (D, criterion, k positive eigenvalues): finished systems, converged, fraction, unfinished."""
    g = torch.Generator().manual_seed(cfg.seed)
    rows = []
    for D in tqdm(cfg.dims, desc="phase diagram (D)", disable=not progress):
        system = TokenSystem.random(cfg.systems, D, D, a=cfg.a, generator=g)
        x0 = torch.randn(cfg.systems, cfg.L, D, generator=g, dtype=torch.float64)
        sim = SimConfig(t_end=cfg.t_end, n_points=40, max_steps=cfg.max_steps, stiff_max_steps=cfg.stiff_max_steps)
        outcome = simulate(system, x0, config=sim).outcome()
        conv = torch.tensor([o == "converging" for o in outcome])
        done = torch.tensor([o != "unfinished" for o in outcome])
        for criterion, sym in (("matrix", False), ("symmetric", True)):
            k = positive_eigenvalue_count(system, symmetric=sym)
            for kk in range(D + 1):
                m = (k == kk) & done
                if m.any():
                    rows.append(dict(D=D, criterion=criterion, positive=kk, systems=int(m.sum()),
                                     converged=int(conv[m].sum()), fraction=float(conv[m].double().mean()),
                                     unfinished=int(((k == kk) & ~done).sum())))
    return rows
