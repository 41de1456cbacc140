"""Rates: the asymptotic constants the 1-D theory gives, and what is measured from trajectories.

Derived here (and tested against simulations to t = 1e12, ``tests/test_dynamics.py``):

* **Convergence (mu < 0).** Near 0, softplus(s x) -> ln 2 and the kernel weight of token j in token
  l's equation tends to 2^(-a (l - j)). Suppose x_l ~ c_l / sqrt(t). Matching powers of t in
  dx_l/dt = mu x_l Σ_{j<=l} x_j^2 softplus(s x_j) exp(-a Σ_{k=j+1..l} softplus(s x_k)) gives
  Σ_{j<=l} c_j^2 2^(-a (l - j)) = K, with K = 1 / (2 |mu| ln 2), for every l. Hence
  c_1 = sqrt(K) and c_l = sqrt(K (1 - 2^(-a))) for all l >= 2 (with the sign of x_l(0)).
  For token 1, which obeys a scalar ODE, this is exact. For l >= 2 it rests on the power-law
  ansatz, so it is a derivation checked by simulation, not a theorem.
  A token that starts at 0 stays there; token l's constant assumes every earlier token is nonzero.
* **Slow divergence (mu > 0, s x_l(0) < 0 for all l).** For large |x|, softplus(s x) ~ exp(-|s||x|).
  Each token's relative rate is then dominated by the smallest |x_j| with j <= l, so token l grows at
  the same relative rate as that token and the ratio x_l / x_m(l) freezes. Every token grows like
  ln t / |s| times a frozen ratio, and x_1 obeys |s| x_1 - 3 ln x_1 - ln t -> const
  (``slow_growth_invariant``). The paper's O((ln t)^l) is an upper bound, not the rate.
* **Blow-up (mu > 0).** A token with s x_l(0) > 0 has x_l' >= mu x_l^3 softplus(s x_l) in magnitude
  (the j = l term of its sum). It therefore blows up no later than a lone token started at x_l(0)
  (``own_blowup_bound``); that bound is exact for token 1.

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


def convergence_constants(mu: float, a: float, L: int) -> torch.Tensor:
    """lim sqrt(t) |x_l(t)| for a 1-D convergent system (mu < 0, decay a > 0) with no zero token:
    (L,) float64, [c_1, c_2, ..., c_L] with c_1 = (2|mu| ln 2)^(-1/2) and
    c_l = sqrt((1 - 2^(-a)) / (2|mu| ln 2)) for l >= 2 (see the module docstring)."""
    if not mu < 0:
        raise ValueError(f"convergence constants need mu < 0, got mu = {mu}")
    if not a > 0:
        raise ValueError(f"the decay a must be > 0, got {a}")
    K = 1.0 / (2.0 * abs(mu) * math.log(2.0))
    c = torch.full((L,), math.sqrt(K * (1.0 - 2.0 ** (-a))), dtype=torch.float64)
    c[0] = math.sqrt(K)
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


def own_blowup_bound(mu: float, s: float, x0: float) -> float:
    """T = ∫_{|x0|}^∞ dy / (mu y^3 softplus(s sign(x0) y)): a lone token's blow-up time (exact for
    token 1, an upper bound for any token l with s x_l(0) > 0). Finite when mu > 0 and s x0 >= 0,
    x0 != 0; inf otherwise (the integrand decays too slowly: no blow-up)."""
    if not (mu > 0 and x0 != 0 and s * x0 >= 0):
        return math.inf
    sign = math.copysign(1.0, x0)

    def integrand(y):
        x = sign * y
        sp = math.log1p(math.exp(-abs(s * x))) + max(s * x, 0.0)
        return 1.0 / (mu * y**3 * sp)

    val, _ = quad(integrand, abs(x0), math.inf, limit=200)
    return val
