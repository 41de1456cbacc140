"""The blow-up rule and the blow-up-time estimate, shared by the batched solver and the LSODA path.

Both work on NumPy arrays and torch tensors alike, so the two paths cannot drift apart.

A token's relative rate r = |dx/dt| / |x| is, for a power-law blow-up x' = c x^p, exactly
1 / ((p - 1)(T* - t)). A large r therefore means T* is near, and T* ~ t + 1/((p - 1) r). The 1-D fast
regime has p = 4 (x' ~ mu s x^4), which gives the estimate t + 1/(3 r). Slow divergence keeps
r ~ 1/(t ln t), far below any threshold.
"""

from __future__ import annotations

import numpy as np
import torch

POWER = 4  # x' ~ x^POWER near a blow-up: the 1-D fast regime (mu s x^4)


def blowing_up(X, F, rate, prev_rate, threshold: float):
    """(..., L) bool: the relative rate is past ``threshold``, the norm grows (x . x' > 0; an overflowed
    product counts as growing) and the rate rose since the previous accepted step. A large token that
    shrinks, as in a converging system started far out, is a transient, not a blow-up.
    X, F (..., L, D); rate, prev_rate (..., L)."""
    growing = ~((X * F).sum(-1) <= 0)
    return (rate >= threshold) & growing & (rate > prev_rate)


def blowup_end_times(t, rate, hit):
    """When tokens ``hit`` (..., L) pass the threshold at time t (scalar or (..., 1)) with relative rate
    ``rate`` (..., L): the estimated blow-up times t + 1/((POWER - 1) r). Token l's trajectory ends with
    the first blow-up among tokens 1..l, since its equation contains them. Returns (ends (..., L),
    own (..., L) bool: token l's own blow-up sets its end); ends is inf where nothing ends."""
    if isinstance(rate, torch.Tensor):
        est = torch.where(hit, t + 1.0 / ((POWER - 1) * rate), torch.inf)
        ends = est.cummin(dim=-1).values
    else:
        with np.errstate(over="ignore", divide="ignore"):  # a rate at the float limit: the blow-up is now
            est = np.where(hit, t + 1.0 / ((POWER - 1) * rate), np.inf)
        ends = np.minimum.accumulate(est, axis=-1)
    return ends, hit & (est == ends)
