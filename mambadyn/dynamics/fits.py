"""Least-squares slopes over the tail of a log-spaced time grid: the measured side of the rates.

A slope fitted over a window is a fit, not a rate; the asymptotic constants are in ``rates``."""

from __future__ import annotations

import math

import torch


def fit_slope(xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of yv against xv along dim 0, ignoring NaN: (T, ...) -> (...); NaN where
    fewer than 3 points are finite."""
    ok = torch.isfinite(yv)
    n = ok.sum(0).clamp_min(1)
    xb = xv.expand_as(yv)
    xm = torch.where(ok, xb, 0).sum(0) / n
    ym = torch.where(ok, yv, 0).sum(0) / n
    cov = torch.where(ok, (xb - xm) * (yv - ym), 0).sum(0)
    var = torch.where(ok, (xb - xm) ** 2, 0).sum(0)
    return torch.where(ok.sum(0) >= 3, cov / var.clamp_min(1e-300), torch.nan)


def tail_mask(t: torch.Tensor, frac: float) -> torch.Tensor:
    """(T,) bool: output times in the last ``frac`` of the grid's decades (t[1] to t[-1])."""
    return t >= t[-1] * 10 ** (-frac * math.log10(t[-1] / t[1]))


def loglog_slopes(t: torch.Tensor, norms: torch.Tensor, frac: float = 0.2) -> torch.Tensor:
    """Slope of log norm against log t over the tail, per column; where the tail holds fewer than 3
    finite points, the slope between the last two finite points after t = 0. t (T,), norms (T, ...)
    -> (...)."""
    m = tail_mask(t, frac)
    shape = (-1,) + (1,) * (norms.dim() - 1)
    slopes = fit_slope(t[m].log().view(shape), norms[m].log())
    # the two-point fallback, for coarse grids
    ok = torch.isfinite(norms) & (norms > 0) & (t > 0).view(shape)
    idx = torch.arange(len(t), device=t.device).view(shape).expand_as(norms)
    last = torch.where(ok, idx, -1).amax(0)
    prev = torch.where(ok & (idx < last.unsqueeze(0)), idx, -1).amax(0)
    have = prev >= 0
    li, pi = last.clamp_min(0), prev.clamp_min(0)
    n_last, n_prev = norms.gather(0, li.unsqueeze(0))[0], norms.gather(0, pi.unsqueeze(0))[0]
    two = (n_last / n_prev).log() / (t[li] / t[pi]).log()
    return torch.where(torch.isnan(slopes) & have, two, slopes)
