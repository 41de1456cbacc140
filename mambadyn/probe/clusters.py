"""Do the tokens cluster across depth? Measures of the residual stream's directions at one layer boundary,
the quantities the follow-up work ("Token Dynamics on Spheres in Mamba Models") speaks of:

    x̂_p = h_p / ||h_p||                                   (a token's direction; zero tokens are left out)
    mean pairwise cosine = (||Σ_p x̂_p||^2 - L) / (L (L - 1))   (1: all directions equal; about 0: spread)
    cosine to the first token = mean over p >= 1 of x̂_p · x̂_0
    clusters at threshold τ = the connected components of the graph joining p and q where x̂_p · x̂_q >= τ
                              (single linkage; reported for several τ, since the count depends on it;
                              counted from one maximum spanning tree)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

THRESHOLDS = (0.5, 0.9, 0.99)


def _tree_cosines(cos: np.ndarray) -> np.ndarray:
    """The L - 1 edge weights of a maximum spanning tree of the complete graph weighted by cosine (Prim's
    algorithm, O(L^2)). The graph joining tokens whose cosine reaches τ has 1 + #{tree edges below τ}
    connected components: single linkage cut at τ, for every τ from one tree."""
    L = cos.shape[0]
    in_tree = np.zeros(L, dtype=bool)
    in_tree[0] = True
    best = cos[0].copy()
    links = np.empty(L - 1)
    for i in range(L - 1):
        best[in_tree] = -np.inf
        k = int(best.argmax())
        links[i] = best[k]
        in_tree[k] = True
        np.maximum(best, cos[k], out=best)
    return links


def cosine_to_first(h: torch.Tensor) -> torch.Tensor:
    """Each token's cosine to token 0: h (L, D) -> (L,) float64 (0 where a token is 0)."""
    x = h.detach().double()
    return (x @ x[0]) / (x.norm(dim=-1) * x[0].norm()).clamp_min(1e-300)


@dataclass
class Clustering:
    mean_cosine: float
    cosine_to_first: float
    clusters: dict[str, int]  # "0.9" -> the number of clusters at that threshold
    tokens: int  # nonzero tokens measured


def clustering(h: torch.Tensor, thresholds: tuple[float, ...] = THRESHOLDS) -> Clustering:
    """The measures above for the tokens h (L, D) of one layer boundary, computed on h's device (the Gram
    matrix is the cost: L^2 D in float64, 21 GFLOP at a 2.8B model's L = 2048, D = 2560); the spanning tree
    runs on the CPU."""
    h = h.detach().double()
    norms = h.norm(dim=-1)
    keep = norms > 0
    x = h[keep] / norms[keep, None]
    L = x.shape[0]
    if L < 2:
        return Clustering(float("nan"), float("nan"), {str(t): L for t in thresholds}, L)
    s = x.sum(0)
    mean_cos = float((s @ s - L) / (L * (L - 1)))
    first = float((x[1:] @ x[0]).mean())
    links = _tree_cosines((x @ x.T).cpu().numpy())
    counts = {str(t): 1 + int((links < t).sum()) for t in thresholds}
    return Clustering(mean_cos, first, counts, L)


def stream_directions(streams: list[torch.Tensor], cluster: bool = True) -> tuple[list[Clustering], list[list[float]]]:
    """For the residual stream at each layer boundary (each (batch, L, D); batch row 0 is measured): the
    clustering measures (none when ``cluster`` is False) and each position's cosine to position 0, measured
    where the streams are."""
    rows = [s.detach()[0] for s in streams]
    return [clustering(h) for h in rows] if cluster else [], [cosine_to_first(h).tolist() for h in rows]
