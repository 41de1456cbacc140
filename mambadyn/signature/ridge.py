"""Ridge regression of states on features, scored by held-out R^2."""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPLIT = (0.6, 0.2)  # train, validation; the rest is the test split


@dataclass(frozen=True)
class RidgeFit:
    r2: float  # on the test split: 1 - SSE / SST summed over target dimensions
    alpha: float  # chosen on the validation split
    r2_val: float


def _solve(X, Y, alpha):
    # features are standardized, so one alpha suits every column
    G = X.T @ X
    G.diagonal().add_(alpha * X.shape[0])
    return torch.linalg.solve(G, X.T @ Y)


def _r2(Y, P):
    sst = ((Y - Y.mean(0)) ** 2).sum()
    return float(1.0 - ((Y - P) ** 2).sum() / sst.clamp_min(1e-300))


def ridge_r2(X: torch.Tensor, Y: torch.Tensor, split: tuple[float, float] = SPLIT,
             alphas: torch.Tensor | None = None, bounds: tuple[int, int] | None = None) -> RidgeFit:
    """Fit Y (n, k) ~ X (n, f) by ridge regression. Rows are split train / validation / test in
    proportions ``split`` (the rest is the test split), or at the row indices ``bounds`` (end of train, end
    of validation) where the rows come in that order. alpha is chosen on the validation split; the
    model is refitted on train + validation and scored on the test split, which it never saw. Returns
    the held-out R^2 (variance-weighted over the k targets)."""
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X must be (n, features) and Y (n, targets) with the same n, got {tuple(X.shape)} "
                         f"and {tuple(Y.shape)}")
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("features or targets contain NaN or inf")
    n = X.shape[0]
    a, b = bounds if bounds is not None else (int(n * split[0]), int(n * (split[0] + split[1])))
    if a < 2 or b - a < 2 or n - b < 2:
        raise ValueError(f"{n} rows are too few for a train / validation / test split of {split}")
    X, Y = X.double(), Y.double()

    def prep(rows):
        mx, sx = X[rows].mean(0), X[rows].std(0)
        # a constant column (the time channel's total increment) carries no information; scaling its rounding
        # noise up to unit variance would invent some
        sx = torch.where(sx > 1e-9 * mx.abs().clamp_min(1.0), sx, torch.inf)
        my = Y[rows].mean(0)
        return (lambda Z: (Z - mx) / sx), my

    alphas = torch.logspace(-9, 2, 23, dtype=torch.float64) if alphas is None else alphas
    norm, my = prep(slice(0, a))
    Xt, Xv = norm(X[:a]), norm(X[a:b])
    scores = [_r2(Y[a:b], Xv @ _solve(Xt, Y[:a] - my, float(al)) + my) for al in alphas]
    best = max(range(len(alphas)), key=lambda i: scores[i])
    norm, my = prep(slice(0, b))
    W = _solve(norm(X[:b]), Y[:b] - my, float(alphas[best]))
    return RidgeFit(r2=_r2(Y[b:], norm(X[b:]) @ W + my), alpha=float(alphas[best]), r2_val=scores[best])
