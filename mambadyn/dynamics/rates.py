"""Rates measured from trajectories: convergence exponents, growth laws, blow-up times, token order."""

from __future__ import annotations

import math

import torch
from scipy.integrate import quad

from .simulation import Trajectory


def _fit_slope(xv: torch.Tensor, yv: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of yv against xv along dim 0, ignoring NaN: (T, ...) -> (...)."""
    ok = torch.isfinite(yv)
    n = ok.sum(0).clamp_min(1)
    xb = xv.expand_as(yv)
    xm = torch.where(ok, xb, 0).sum(0) / n
    ym = torch.where(ok, yv, 0).sum(0) / n
    cov = torch.where(ok, (xb - xm) * (yv - ym), 0).sum(0)
    var = torch.where(ok, (xb - xm) ** 2, 0).sum(0)
    return torch.where(ok.sum(0) >= 3, cov / var.clamp_min(1e-300), torch.nan)


def _tail(traj: Trajectory, frac: float):
    """Output times in the last ``frac`` decade-fraction of the log grid: (indices)."""
    t = traj.t
    return t >= t[-1] * 10 ** (-frac * math.log10(t[-1] / t[1]))


def convergence_exponent(traj: Trajectory, tail: float = 0.2) -> torch.Tensor:
    """Per token, the slope of log|x_l| against log t over the tail: the paper predicts -1/2. (batch, L)."""
    m = _tail(traj, tail)
    return _fit_slope(traj.t[m].log().view(-1, 1, 1), traj.norms()[m].log())


def tail_slope(traj: Trajectory, tail: float = 0.2) -> torch.Tensor:
    """Per system, the log-log slope of its largest token norm over the tail. (batch,)."""
    m = _tail(traj, tail)
    return _fit_slope(traj.t[m].log().view(-1, 1), traj.norms()[m].amax(-1).log())


def log_growth_exponent(traj: Trajectory, tail: float = 0.2) -> torch.Tensor:
    """Per token, the slope of log|x_l| against log(ln t) over the tail (t > e): if x_l ~ (ln t)^k
    this is k; the paper bounds slow divergence by O((ln t)^l). (batch, L)."""
    m = _tail(traj, tail) & (traj.t > math.e)
    return _fit_slope(traj.t[m].log().log().view(-1, 1, 1), traj.norms()[m].log())


def divergence_order(traj: Trajectory) -> torch.Tensor:
    """Tokens ranked from fastest to slowest divergence, per system (batch, L): by blow-up time,
    then, among those that did not blow up, by final norm."""
    t_end = traj.t[-1]
    # blown-up tokens sort by blow-up time (<= t_end); the rest after them, larger final norm first
    key = torch.where(traj.blew_up, traj.blowup_time, t_end + 1.0 / (1.0 + traj.x[-1].norm(dim=-1)))
    return torch.argsort(key, dim=-1, stable=True)


def slow_growth_invariant(traj: Trajectory, mu: float, s: float) -> torch.Tensor:
    """For 1-D slow divergence, token 1 obeys x' ~ mu x^3 exp(-|s| x), so
    |s| x - 3 ln x - ln t tends to a constant (x ~ (ln t + 3 ln ln t) / |s|). Returns that quantity
    for token 1 over time (T, batch); its flattening is the measured growth law."""
    x = traj.norms()[:, :, 0]
    del mu  # mu only shifts the constant the invariant tends to
    return abs(s) * x - 3 * torch.log(x) - torch.log(traj.t)[:, None]


def first_token_blowup_time(mu: float, s: float, x0: float) -> float:
    """Exact T* of token 1 in 1-D (it obeys x' = mu x^3 softplus(s x) on its own):
    T* = ∫_{x0}^{∞} dx / (mu x^3 softplus(s x)), finite when mu > 0 and s x0 > 0 (and s = 0)."""
    sign = math.copysign(1.0, x0)

    def integrand(y):  # y = |x|
        x = sign * y
        sp = math.log1p(math.exp(-abs(s * x))) + max(s * x, 0.0)
        return 1.0 / (mu * y**3 * sp)

    val, _ = quad(integrand, abs(x0), math.inf, limit=200)
    return val
