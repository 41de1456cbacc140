"""How unequal a set of shares is (the probe's gradient shares by position; the claims' token shares)."""

from __future__ import annotations

import torch


def top_share(shares: torch.Tensor, frac: float) -> torch.Tensor:
    """Share of the total carried by the top ``frac`` of positions, per row: (layers, L) -> (layers,)."""
    k = max(1, round(frac * shares.shape[-1]))
    return shares.sort(dim=-1, descending=True).values[..., :k].sum(-1)


def gini(shares: torch.Tensor) -> torch.Tensor:
    """Gini coefficient per row (0: every position carries the same share; near 1: one carries all)."""
    s = shares.double().sort(dim=-1).values
    n = s.shape[-1]
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return ((2 * i - n - 1) * s).sum(-1) / (n * s.sum(-1).clamp_min(1e-300))
