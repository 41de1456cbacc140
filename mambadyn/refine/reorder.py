"""Refinement 2: reorder tokens by a learned importance score before the scan (SoftSort).

Score s_l = K^T Δ_l with Δ_l = dt_proj(x_proj(x_l)[:r]) before softplus (paper.md A5). With v = -s
and v_sorted its descending sort, SoftSort (Prillo & Eisenschlos, 2020) gives

    P[k, l] = softmax_l( -|v_sorted_k - v_l|^p / tau )

row k picking the token of rank k, so tokens come in increasing importance: the most important
last, nearest the end of the causal scan. ``hard`` takes the row argmax with a straight-through
gradient (an exact permutation forward, SoftSort's gradient backward).

Reordering lets a later token influence an earlier one, so it is for bidirectional / classification
models only; a causal language model must not use it (MambaLM refuses it).
"""

from __future__ import annotations

import torch
from torch import nn


def soft_sort(scores: torch.Tensor, tau: float = 1.0, p: float = 1.0, hard: bool = False) -> torch.Tensor:
    """scores (batch, L) -> P (batch, L, L) sorting tokens by increasing score (rows sum to 1)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    v = -scores
    v_sorted = v.sort(dim=-1, descending=True).values
    P = torch.softmax(-(v_sorted[..., :, None] - v[..., None, :]).abs().pow(p) / tau, dim=-1)
    if hard:
        H = torch.zeros_like(P).scatter_(-1, P.argmax(-1, keepdim=True), 1.0)
        P = H + (P - P.detach())  # straight-through; the brackets keep the forward exactly H
    return P


class TokenReorder(nn.Module):
    """Attach to a mixer as ``mixer.reorder``. ``restore=True`` maps the scan's output back to the
    original token order with P^T (exact for hard sorting) before the gate; ``restore=False`` is the
    paper's code: the gate branch z stays in the original order and y is not mapped back."""

    def __init__(self, d_inner: int, tau: float = 1.0, hard: bool = False, restore: bool = True, p: float = 1.0):
        super().__init__()
        self.K = nn.Linear(d_inner, 1, bias=False)
        self.tau, self.hard, self.restore_order, self.p = tau, hard, restore, p

    def scores(self, dt: torch.Tensor) -> torch.Tensor:
        """dt (batch, d_inner, L) -> importance (batch, L)."""
        return self.K(dt.transpose(1, 2))[..., 0]

    def permutation(self, dt: torch.Tensor) -> torch.Tensor:
        return soft_sort(self.scores(dt), self.tau, self.p, self.hard)

    @staticmethod
    def apply(P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x (batch, d, L) -> reordered (batch, d, L): x'_k = Σ_l P[k, l] x_l."""
        return torch.einsum("bkl,bdl->bdk", P.to(x.dtype), x)

    def restore(self, P: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.restore_order:
            return y
        return torch.einsum("bkl,bdk->bdl", P.to(y.dtype), y)


def add_token_reorder(model: nn.Module, layers: list[int] | None = None, **kwargs) -> list[TokenReorder]:
    """Attach a TokenReorder to the mixers of ``layers`` (indices into the model's mixers; all if None)."""
    from .eigen import find_mixers

    mixers = [m for _, m in find_mixers(model)]
    chosen = range(len(mixers)) if layers is None else layers
    added = []
    for i in chosen:
        if not 0 <= i < len(mixers):
            raise ValueError(f"layer {i} out of range: the model has {len(mixers)} mixers")
        if getattr(getattr(mixers[i], "config", None), "is_decoder", False) or type(model).__name__.endswith("LM"):
            raise ValueError("token reordering breaks causality (a later token would influence an earlier "
                             "one); it cannot be used in a causal language model")
        mixers[i].reorder = TokenReorder(mixers[i].x_proj.in_features, **kwargs)
        added.append(mixers[i].reorder)
    return added
