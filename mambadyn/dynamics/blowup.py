"""The blow-up rule and the blow-up-time estimate, shared by the batched solver and the LSODA path.

Both work on NumPy arrays and torch tensors alike, so the two paths cannot drift apart.

A token's relative rate r = |dx/dt| / |x| is, for a power-law blow-up x' = c x^p, exactly
1 / ((p - 1)(T* - t)). The rule judges the dimensionless rate rho = t r, which is unchanged when time is
rescaled (t -> k t turns r into r / k) and when x is (x -> c x maps the 1-D system (mu, s) to (mu c^2, s c)
and leaves r on the trajectory as it was). Near a blow-up rho = t / ((p - 1)(T* - t)) -> inf; along a slow
divergence x ~ ln t / |s| it stays about 1 / ln t. A token counts as blowing up once rho passes the
threshold, its norm grows, and its rate rose since the previous step.

Why the threshold is high (1e10 by default): a slow-divergence token started at y = |s x(0)| << 1 first
grows like a cubic blow-up (softplus(s x) ~ ln 2 while |s x| < 1) and only turns at |s x| ~ 1. In that
phase rho = 1 / (2 (1 - t / T_cubic)) reaches about y^2 / (2 y0^2) by the turn, so a threshold theta mistakes
such tokens for blow-ups only when y0 < ~3 / sqrt(2 theta) (2e-5 at 1e10). The estimate of the end time,
t + 1 / ((p - 1) r) with p measured from the last step (d ln r / d ln |x| = p - 1 on a power law), is off
by at most a fraction ~1 / theta of t.
"""

from __future__ import annotations

import numpy as np
import torch

POWER = 4  # x' ~ x^POWER near a blow-up, the 1-D fast regime (mu s x^4): used before a second step measures p
THRESHOLD = 1e10  # rho = t |x'| / |x| past which a growing token counts as blowing up


def blowing_up(X, F, rate, prev_rate, t, threshold: float):
    """(..., L) bool: the dimensionless rate t * ``rate`` is past ``threshold``, the norm grows (x . x' > 0;
    an overflowed product counts as growing) and the rate rose since the previous accepted step. A large
    token that shrinks, as in a converging system started far out, is a transient, not a blow-up.
    X, F (..., L, D); rate, prev_rate (..., L); t a scalar or (..., 1)."""
    growing = ~((X * F).sum(-1) <= 0)
    return (rate * t >= threshold) & growing & (rate > prev_rate)


def local_power(rate, prev_rate, norm, prev_norm):
    """p - 1 = d ln r / d ln |x| between two steps (the exponent of x' ~ x^p), clipped to [1, 3]; POWER - 1
    where the step did not move the norm. All (..., L)."""
    if isinstance(rate, torch.Tensor):
        dn = torch.log(norm) - torch.log(prev_norm)
        q = (torch.log(rate) - torch.log(prev_rate)) / dn
        return torch.where(torch.isfinite(q) & (dn > 0), q.clamp(1.0, 3.0), float(POWER - 1))
    with np.errstate(all="ignore"):
        dn = np.log(norm) - np.log(prev_norm)
        q = (np.log(rate) - np.log(prev_rate)) / dn
    return np.where(np.isfinite(q) & (dn > 0), np.clip(q, 1.0, 3.0), float(POWER - 1))


def blowup_end_times(t, rate, hit, power=POWER - 1):
    """When tokens ``hit`` (..., L) pass the threshold at time t (scalar or (..., 1)) with relative rate
    ``rate`` (..., L) and local exponent ``power`` = p - 1 (``local_power``; scalar or (..., L)): the
    estimated blow-up times t + 1/((p - 1) r). Token l's trajectory ends with the first blow-up among tokens
    1..l, since its equation contains them. Returns (ends (..., L), own (..., L) bool: token l's own
    blow-up sets its end); ends is inf where nothing ends."""
    if isinstance(rate, torch.Tensor):
        est = torch.where(hit, t + 1.0 / (power * rate), torch.inf)
        ends = est.cummin(dim=-1).values
    else:
        with np.errstate(over="ignore", divide="ignore"):  # a rate at the float limit: the blow-up is now
            est = np.where(hit, t + 1.0 / (power * rate), np.inf)
        ends = np.minimum.accumulate(est, axis=-1)
    return ends, hit & (est == ends)
