"""Rates: the asymptotic constants the 1-D theory gives, and what is measured from trajectories.

Derived here (and tested against simulations to t = 1e12, ``tests/test_dynamics.py``):

* **Convergence (mu < 0).** Near 0, softplus(s x) -> ln 2 and the kernel weight of token j in token
  l's equation tends to 2^(-a (l - j)) (a token at 0 still counts in the decay: softplus(0) = ln 2).
  Suppose x_l ~ c_l / sqrt(t). Matching powers of t in
  dx_l/dt = mu x_l Σ_{j<=l} x_j^2 softplus(s x_j) exp(-a Σ_{k=j+1..l} softplus(s x_k)) gives
  Σ_{j<=l} c_j^2 2^(-a (l - j)) = K, with K = 1 / (2 |mu| ln 2), for every nonzero token l. Tokens at 0
  stay there and add nothing, so with m_l the gap from token l back to the previous nonzero token,
  c_l^2 + 2^(-a m_l) K = K: c_l = sqrt(K (1 - 2^(-a m_l))), and c_l = sqrt(K) for the first nonzero
  token (no earlier one). With no zeros, m_l = 1 for every l >= 2. For the first nonzero token, which
  obeys a scalar ODE, this is exact. For the others it rests on the power-law ansatz, so it is a
  derivation checked by simulation (to 1e-6 at t = 1e12 for a >= 1), not a theorem.
  How fast the limit is reached is measured, not derived: the relative gap |sqrt(t) x_l| / c_l - 1 of the
  tokens after the first nonzero one falls like t^-min(1/2, 1 - 2^-a) (fitted slopes between t = 1e10 and
  1e12, mu = -1, s = 1: -0.078 at a = 0.1, -0.29 at a = 0.5, -0.45 at a = 1, -0.49 at a = 2). At a = 0.1
  token 2 is still 9% off at t = 1e12, so a small decay makes the constants a statement about t -> inf
  only.
* **Slow divergence (mu > 0, s x_l(0) < 0 for all l).** For large |x|, softplus(s x) ~ exp(-|s||x|).
  Each token's relative rate is then dominated by the smallest |x_j| with j <= l, so token l grows at
  the same relative rate as that token and the ratio x_l / x_m(l) freezes. Every token grows like
  ln t / |s| times a frozen ratio, and x_1 obeys |s| x_1 - 3 ln x_1 - ln t -> const
  (``slow_growth_invariant``). The paper's O((ln t)^l) is an upper bound, not the rate.
* **Blow-up (mu > 0).** A token with s x_l(0) > 0 has x_l' >= mu x_l^3 softplus(s x_l) in magnitude
  (the j = l term of its sum). It therefore blows up no later than a lone token started at x_l(0)
  (``own_blowup_bound``); that bound is exact for token 1. A simulated end time carries the solver's
  relative error (about its rtol, 1e-7 by default), so it may pass an exact bound by that much.

Everything fitted over a window of t (``fitted_*``) is a fit, labelled as one; the asymptotic claims
are the constants above.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from scipy.integrate import quad

from .fits import fit_slope, loglog_slopes, tail_mask

if TYPE_CHECKING:
    from .simulation import Trajectory


def convergence_constants(mu: float, a: float, L: int, nonzero=None) -> torch.Tensor:
    """lim sqrt(t) |x_l(t)| for a 1-D convergent system (mu < 0, decay a > 0): (L,) float64.
    ``nonzero`` (L bools, default all True) marks the tokens that start away from 0; a token at 0 has
    limit 0. The first nonzero token's limit is (2|mu| ln 2)^(-1/2); token l's is
    sqrt((1 - 2^(-a m_l)) / (2|mu| ln 2)) with m_l the gap back to the previous nonzero token (see the
    module docstring)."""
    if not mu < 0:
        raise ValueError(f"convergence constants need mu < 0, got mu = {mu}")
    if not a > 0:
        raise ValueError(f"the decay a must be > 0, got {a}")
    nonzero = [True] * L if nonzero is None else [bool(v) for v in nonzero]
    if len(nonzero) != L:
        raise ValueError(f"nonzero has {len(nonzero)} entries for L = {L} tokens")
    K = 1.0 / (2.0 * abs(mu) * math.log(2.0))
    c = torch.zeros(L, dtype=torch.float64)
    prev = None
    for l, nz in enumerate(nonzero):
        if nz:
            c[l] = math.sqrt(K if prev is None else K * (1.0 - 2.0 ** (-a * (l - prev))))
            prev = l
    return c


def fitted_convergence_exponent(traj: Trajectory, tail: float = 0.2) -> torch.Tensor:
    """A fit: per token, the slope of log|x_l| against log t over the last ``tail`` of the decades.
    The rate is -1/2, but fits up to t ~ 1e4 can sit far from it (``convergence_constants`` says
    what sqrt(t)|x_l| tends to). (batch, L)."""
    return loglog_slopes(traj.t, traj.norms(), tail)


def fitted_log_growth_exponent(traj: Trajectory, tail: float = 0.2) -> torch.Tensor:
    """A fit: per token, the slope of log|x_l| against log(ln t) over the tail (t > e). Slow divergence
    gives slopes that approach 1 (ln t growth) slowly from above, because of the 3 ln ln t term.
    (batch, L)."""
    m = tail_mask(traj.t, tail) & (traj.t > math.e)
    return fit_slope(traj.t[m].log().log().view(-1, 1, 1), traj.norms()[m].log())


def slow_divergence_ratios(traj: Trajectory) -> torch.Tensor:
    """Measured: |x_l| / min_{j<=l} |x_j| at the last valid time, per token (batch, L). In slow
    divergence these ratios freeze (module docstring); token 1's is 1."""
    n = traj.norms()
    last = n[-1]
    return last / last.cummin(dim=-1).values


def slow_growth_invariant(traj: Trajectory, s: float) -> torch.Tensor:
    """For 1-D slow divergence, token 1 obeys x' ~ mu x^3 exp(-|s| x), so |s| x - 3 ln x - ln t tends
    to a constant (x ~ (ln t + 3 ln ln t) / |s|). Returns that quantity for token 1 over time
    (T, batch); its flattening is the measured growth law."""
    x = traj.norms()[:, :, 0]
    return abs(s) * x - 3 * torch.log(x) - torch.log(traj.t)[:, None]


def end_order(traj: Trajectory) -> torch.Tensor:
    """Tokens ranked from the earliest end (blow-up) to the latest, per system (batch, L); tokens that
    did not blow up follow, the larger final norm first."""
    t_end = traj.t[-1]
    key = torch.where(traj.blew_up, traj.blowup_time, t_end + 1.0 / (1.0 + traj.x[-1].norm(dim=-1)))
    return torch.argsort(key, dim=-1, stable=True)


def own_blowup_bound(mu: float, s: float, x0: float, b: float = 0.0) -> float:
    """T = ∫_{|x0|}^∞ dy / (mu y^3 softplus(s sign(x0) y + b)): a lone token's blow-up time (exact for
    token 1, an upper bound for any token l with s x_l(0) > 0); b is Δ's bias. Finite when mu > 0 and
    s x0 >= 0, x0 != 0; inf otherwise (the integrand decays too slowly: no blow-up)."""
    if not (mu > 0 and x0 != 0 and s * x0 >= 0):
        return math.inf
    sign, y0 = math.copysign(1.0, x0), abs(x0)

    def integrand(u):  # y = |x0| e^u: a smooth integrand that decays like e^(-2u) at least
        x = sign * y0 * math.exp(u)
        sp = math.log1p(math.exp(-abs(s * x + b))) + max(s * x + b, 0.0)
        return 1.0 / (mu * (y0 * math.exp(u)) ** 2 * sp)

    val, _ = quad(integrand, 0.0, 40.0, epsabs=0.0, epsrel=1e-13, limit=500)  # the rest is below e^-80
    return val
