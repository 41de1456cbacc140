"""What can be proved about the normalised token system, where the update reads n(x) = w x / r(x),
r(x) = sqrt(|x|^2 / D + eps), instead of x (``TokenSystem.with_norm``; Mamba blocks put an RMSNorm there).

Notation: M = S_C^T S_B, rho = max|w| sqrt(D), Δ^d_max = softplus(b_d + |S_Δ[d]| rho),
Δ^d_min = softplus(b_d - |S_Δ[d]| rho), a_d = min_n |A_dn|, ‖.‖ the spectral norm.

1. **Bounded speed: no blow-up, at most linear growth** (every token, every system; eps > 0).
   |n(x)^e| <= |w^e| |x^e| / r(x) <= |w^e| sqrt(D) and |n(x)| <= rho, so |B_j| <= ‖S_B‖ rho, |C_l| <= ‖S_C‖ rho
   and Δ^d_min <= Δ_j^d <= Δ^d_max. Token l's channel d is a sum over j <= l of
   (Σ_n C_ln e^(A_dn Σ_{k=j+1..l} Δ_k^d) B_jn) Δ_j^d n_j^d, whose j-th term is at most
   |C_l| |B_j| e^(-a_d (l - j) Δ^d_min) Δ^d_max |w^d| sqrt(D). Summing the geometric factors,
       |x_l^d'| <= ‖S_B‖ ‖S_C‖ rho^2 Δ^d_max |w^d| sqrt(D) min(l, 1 / (1 - e^(-a_d Δ^d_min))),
   and K_l, the Euclidean norm of that vector over d, bounds |x_l'|. The right-hand side is smooth (eps > 0),
   so the solution exists for all t and |x_l(t) - x_l(0)| <= K_l t: the paper's fast divergence cannot
   happen once the norm is there. (Dropping the norm, the speed is unbounded; see ``classify``.)
2. **A zero token stays at 0** (any l): token l's velocity is C_l . h_l with C_l = S_C n(x_l), which vanishes
   with x_l; the equation is Lipschitz in x_l, so x_l = 0 is its unique solution.
3. **Token 1 when every w^d > 0.** Its velocity is x_1^d' = Δ_1^d n^d q(n), q(n) = n^T sym(M) n, so
   d(x^d)^2/dt = 2 Δ^d w^d (x^d)^2 q / r: every coordinate's magnitude moves the same way, the way of q.
   With Σ_d Δ^d w^d (x^d)^2 >= Δ_min w_min |x|^2 and |n|^2 >= w_min^2 |x|^2 / r^2:
   - sym(M) negative definite (q <= -λ|n|^2, λ > 0): d|x|^2/dt <= -2 λ w_min^3 Δ_min |x|^4 / r^3, and r <= r_0
     since |x| never grows, so |x_1(t)| <= (|x_1(0)|^-2 + c t)^(-1/2) with c = 2 λ w_min^3 Δ_min / r_0^3:
     token 1 converges to 0, at least as fast as t^(-1/2), every coordinate monotonically.
   - sym(M) positive definite (q >= λ|n|^2): |x| never falls, r <= β |x| with β = sqrt(1/D + eps / |x_1(0)|^2),
     and d|x|/dt >= κ = λ w_min^3 Δ_min / β^3, so |x_1(0)| + κ t <= |x_1(t)| <= |x_1(0)| + K_1 t: token 1
     diverges, linearly (not in finite time, not logarithmically).
   - otherwise, or where some w^d <= 0: undetermined.
4. **Tokens after the first**: nothing here decides them beyond 1 and 2. The follow-up ("Token Dynamics on
   Spheres in Mamba Models", ICLR 2026 submission, OpenReview 466gVY2sBQ) states, for its model of tokens on
   the unit sphere, that every token has a limit point reached at an exponential rate and that the first
   token's limit point attracts the others. Its model is not this one (here the tokens are not
   normalised, only what the update reads), and its proof is not reproduced in this code, so mambadyn
   reports that statement as a conjecture and measures it (``clustering``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .outcome import NONE, THEOREM, Outcome

FOLLOW_UP = ("the follow-up (Token Dynamics on Spheres in Mamba Models, OpenReview 466gVY2sBQ) states that the "
             "first token's limit point attracts the others; a conjecture here, not proved in this code")


def delta_range(system) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rho (batch,), Δ_min (batch, D), Δ_max (batch, D)) of the normalised ``system``: |n(x)| <= rho and
    Δ_min <= Δ <= Δ_max for every x (the notation above)."""
    rho = system.norm_weight.abs().amax(-1) * math.sqrt(system.D)
    reach = system.S_delta.norm(dim=-1) * rho[:, None]  # (b, D): |S_Δ[d]| rho
    return rho, F.softplus(system.dt_bias - reach), F.softplus(system.dt_bias + reach)


def speed_bounds(system, L: int) -> torch.Tensor:
    """K_l (batch, L): |x_l'| <= K_l at every t, for every trajectory of the normalised ``system``
    (statement 1 of this module)."""
    if not system.normalised:
        raise ValueError("speed_bounds: the system has no norm (its speed is unbounded); use with_norm()")
    D = system.D
    w = system.norm_weight
    rho, d_min, d_max = delta_range(system)
    sB = torch.linalg.matrix_norm(system.S_B, ord=2)
    sC = torch.linalg.matrix_norm(system.S_C, ord=2)
    a = (-system.A).amin(-1)  # (b, D)
    memory = 1.0 / -torch.expm1(-a * d_min)  # (b, D): Σ_m e^(-a m Δ_min)
    ls = torch.arange(1, L + 1, dtype=w.dtype, device=w.device)
    per = (sB * sC * rho**2)[:, None] * d_max * w.abs() * math.sqrt(D)  # (b, D)
    factor = torch.minimum(ls[None, :, None], memory[:, None, :])  # (b, L, D)
    return (per[:, None, :] * factor).norm(dim=-1)


def first_token(system, X: torch.Tensor, i: int, K1: float, tol: float, sym_ev: torch.Tensor,
                d_min: float) -> tuple[Outcome, str, str]:
    """(Outcome, reason, basis) for token 1 of system i (statement 3); ``d_min``: min over d of its Δ^d_min."""
    x = X[i, 0]
    w = system.norm_weight[i]
    if bool((w <= 0).any()):
        return (Outcome.UNDETERMINED, f"some RMSNorm weights are <= 0 (min {float(w.min()):.3g}): coordinates of "
                f"token 1 need not move together; its speed is at most {K1:.4g}", NONE)
    D, eps = system.D, system.norm_eps
    w_min = float(w.min())
    top, low = float(sym_ev[i].max()), float(sym_ev[i].min())
    x0 = float(x.norm())
    if top < -tol:
        lam = -top
        r0 = math.sqrt(x0**2 / D + eps)
        c = 2 * lam * w_min**3 * d_min / r0**3
        return (Outcome.CONVERGES, f"every RMSNorm weight > 0 and the symmetric part of S_C^T S_B is negative "
                f"definite: every coordinate of token 1 shrinks, |x_1(t)| <= (|x_1(0)|^-2 + {c:.3g} t)^(-1/2)", THEOREM)
    if low > tol:
        beta = math.sqrt(1 / D + eps / x0**2)
        kappa = low * w_min**3 * d_min / beta**3
        return (Outcome.DIVERGES_SLOWLY, f"every RMSNorm weight > 0 and the symmetric part of S_C^T S_B is positive "
                f"definite: token 1 diverges linearly, {x0:.4g} + {kappa:.3g} t <= |x_1(t)| <= {x0:.4g} + "
                f"{K1:.4g} t, and never in finite time", THEOREM)
    return (Outcome.UNDETERMINED, f"the symmetric part of S_C^T S_B is indefinite or semi-definite: token 1's "
            f"speed is at most {K1:.4g} (no blow-up), its fate is not decided", NONE)
