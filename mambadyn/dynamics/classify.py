"""What the theory says each token does, decided from the parameters and the initial tokens (no
simulation). Every fate carries its reason and how it is known.

1-D (D = 1, mu = S_C^T S_B, s = S_Δ, Δ's bias b; the paper has b = 0):
* mu < 0: every nonzero token converges to 0 [the paper's theorem; for any b, this argument]: every
  term of token l's sum is >= 0, so |x_l| never increases, and the j = l term alone gives
  |x_l|' <= -|mu| δ |x_l|^3 with δ = softplus(b - |s| |x_l(0)|) > 0, so |x_l| <= (x_l(0)^-2 + 2|mu| δ t)^-1/2.
* mu > 0. Let l0 be the first token with s x_l0(0) > 0 (every nonzero token counts when s = 0,
  since then softplus is the constant softplus(b) and growth is cubic).
  - Tokens l < l0 form a slow-divergence system of their own: token l's equation contains only
    tokens j <= l. They diverge and exist for all t [the paper's theorem, applied to that prefix; for
    any b, this argument]: |x_l| never decreases, so s x_j only moves further below 0 and
    x_j^2 softplus(s x_j + b) <= e^b x_j^2 e^(-|s||x_j|) <= e^b (2 / (e |s|))^2; hence |x_l|' <= c |x_l| and
    no token ends in finite time. A token bounded for all t would have |x_l|' >= mu |x_l|^3 softplus(s x_l + b)
    bounded below by a positive constant (the j = l term), a contradiction, so every nonzero token -> inf.
  - Tokens l >= l0 end in finite time. Token l's solution ends at the first blow-up among tokens
    l0..l. A token with s x_l(0) > 0 blows up no later than a lone token from x_l(0): by
    comparison with the j = l term of its own sum, x_l' >= mu x_l^3 softplus(s x_l + b) in magnitude, and
    s x_l only grows (``rates.own_blowup_bound``, with b). A token with s x_l(0) < 0 after l0 ends with
    the earlier blow-up.
  - End times therefore never increase with l. The predicted order in which solutions end is
    L, L-1, ..., l0 (nonzero tokens), with ties possible.
  - b sets the time scale, not the fate: while s x + b << 0, softplus(s x + b) ~ e^b e^(s x), so a
    token reaches the regime s x ~ -b, where growth becomes polynomial, only after a time that scales
    like e^(-b). For a real layer (b about -7 to -2) the blow-up bound can lie far beyond the depth
    of the model: compare ``bound`` with the number of layers before reading "blows up" as something a
    trained stack does.
* A token that is 0 stays 0 while the solution exists (x_l' is proportional to x_l); mu = 0 moves
  nothing.

D > 1: the paper proves nothing. One case follows from a short Lyapunov argument: token 1 obeys
dx_1^d/dt = q(x_1) Δ_1^d x_1^d with q(x) = x^T M x = x^T sym(M) x, so d|x_1|^2/dt = 2 q(x_1) Σ_d Δ_1^d (x_1^d)^2.
If sym(M) is negative definite, q(x) <= -λ |x|^2 with λ > 0 and Δ_1^d >= softplus(b_d - |S_Δ| |x_1(0)|) > 0 on the
ball |x| <= |x_1(0)|, so d|x_1|^2/dt <= -c |x_1|^4 and token 1 converges. "Negative definite" is decided
with a tolerance relative to the matrix's scale (``definite_tol``): the negative eigen mode makes sym(M)
semi-definite whenever N < D, and there rounding must not decide. In the semi-definite case |x_1| never
increases, but token 1 may settle at a nonzero point of the kernel (an x_1(0) in the kernel is an exact
equilibrium), so it is ``undetermined``. Every other token, and every other D > 1 system, is ``undetermined``. The
system-level scenario the paper's experiments suggest (at least one positive eigenvalue -> divergence)
is reported separately as ``conjecture`` and is never stated as a result. A token that starts at 0
stays there in every D (its velocity C_l . h_l vanishes with C_l = S_C x_l, and the equation is Lipschitz in
x_l), while the solution exists.

The normalised system (the update reads RMSNorm(x)) has its own statements, proved in
``mambadyn.dynamics.normalised``: bounded speed for every token, hence no blow-up; token 1's fate when the
norm's weights are positive and sym(M) is definite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import normalised
from .outcome import NONE, THEOREM, Outcome, system_outcome
from .rates import own_blowup_bound
from .system import TokenSystem


@dataclass(frozen=True)
class TokenFate:
    """One token's predicted outcome, why, and on what it rests (``THEOREM`` or ``NONE``).
    ``bound``: for a 1-D blow-up, an upper bound on the time its solution ends (inf otherwise)."""

    outcome: Outcome
    reason: str
    basis: str
    bound: float = float("inf")


@dataclass(frozen=True)
class Classification:
    """A system's predicted outcome (its most severe token fate) with the reason, per-token ``tokens``,
    ``end_order`` (1-D with blow-ups: token indices, 0-based, in the order their solutions end; tied
    tokens are listed in descending index), and for D > 1 the paper's ``conjecture`` (an Outcome or
    None), which is a conjecture and nothing more."""

    scenario: Outcome
    reason: str
    conjectural: bool
    tokens: list[TokenFate] = field(default_factory=list)
    end_order: list[int] | None = None
    conjecture: Outcome | None = None


def positive_eigenvalue_count(system: TokenSystem, symmetric: bool = False, tol: float = 1e-10) -> torch.Tensor:
    """Number of eigenvalues of S_C^T S_B (real part) or of its symmetric part that are > tol. (batch,)."""
    M = system.io_matrix()
    if symmetric:
        ev = torch.linalg.eigvalsh((M + M.transpose(1, 2)) / 2)
    else:
        ev = torch.linalg.eigvals(M).real
    return (ev > tol).sum(-1)


def definite_tol(eigenvalues: torch.Tensor) -> torch.Tensor:
    """The tolerance below which an eigenvalue of a symmetric D x D matrix counts as 0: 64 D float64
    epsilons of its largest |eigenvalue| (eigvalsh's backward error is a few epsilons of that scale).
    eigenvalues (batch, D) -> (batch,)."""
    D = eigenvalues.shape[-1]
    return 64 * D * torch.finfo(torch.float64).eps * eigenvalues.abs().amax(-1).clamp_min(1e-300)


def conjecture(positive: int, which: str, sdx_positive: bool | None) -> tuple[Outcome, str]:
    """The paper's D-dim scenario, which its 2-D experiments suggest and nothing proves: ``positive``
    eigenvalues of ``which`` with a positive real part (complex pairs count, each member once; the paper's
    examples are real) -> none: converges; some: fast divergence where S_Δ x_l(0) has a positive entry,
    slow where it has none (``sdx_positive``; None: no tokens, so undetermined which). Returns
    (Outcome, reason); every caller must label the result a conjecture."""
    # "positive eigenvalue(s)" alone would contradict a report whose + column counts the real ones only
    counted = f"{positive} eigenvalue(s) of {which} with a positive real part"
    if positive == 0:
        return Outcome.CONVERGES, f"no eigenvalue of {which} has a positive real part"
    if sdx_positive is None:
        return Outcome.UNDETERMINED, f"{counted}; no tokens to split fast from slow"
    if sdx_positive:
        return Outcome.BLOWS_UP, f"{counted}; S_Δ x_l(0) has positive entries"
    return Outcome.DIVERGES_SLOWLY, f"{counted}; S_Δ x_l(0) < 0 everywhere"


def _one_dim(mu: float, s: float, b: float, x: list[float]) -> tuple[list[TokenFate], list[int] | None]:
    L = len(x)
    if mu == 0:
        return [TokenFate(Outcome.STAYS, "mu = 0: the right-hand side vanishes", THEOREM)] * L, None
    zero = TokenFate(Outcome.STAYS, "x_l(0) = 0 and x_l' is proportional to x_l", THEOREM)
    who = "paper, 1-D theorem" if b == 0 else f"with bias b = {b:.3g}: the argument in mambadyn.dynamics.classify"
    if mu < 0:
        conv = TokenFate(Outcome.CONVERGES, f"mu = {mu:.3g} < 0 ({who})", THEOREM)
        return [zero if v == 0 else conv for v in x], None
    fast = [v != 0 and s * v >= 0 for v in x]
    if not any(fast):
        slow = TokenFate(Outcome.DIVERGES_SLOWLY, f"mu = {mu:.3g} > 0 and s x_j(0) < 0 for every nonzero token "
                         f"({who})", THEOREM)
        return [zero if v == 0 else slow for v in x], None
    l0 = fast.index(True)
    fates, bound, last_fast = [], float("inf"), l0
    for l, v in enumerate(x):
        if l < l0:
            fates.append(zero if v == 0 else TokenFate(
                Outcome.DIVERGES_SLOWLY, f"tokens 1..{l0} have s x_j(0) < 0 (or are 0) and evolve on their own: "
                f"slow divergence ({who}, on that prefix)", THEOREM))
            continue
        if v == 0:
            fates.append(zero)
            continue
        if fast[l]:
            last_fast = l
            bound = min(bound, own_blowup_bound(mu, s, v, b))
            why = (f"s = 0: softplus is softplus(b) and x_l' >= mu softplus({b:.3g}) x_l^3, so it blows up by "
                   f"T <= {bound:.4g}" if s == 0 else
                   f"s x_{l + 1}(0) > 0: x_l' >= mu x_l^3 softplus(s x_l + b), so it blows up by T <= {bound:.4g}")
        else:
            why = (f"s x_{l + 1}(0) < 0, but its equation contains token {last_fast + 1}, which blows up: the "
                   f"solution ends by T <= {bound:.4g}")
        fates.append(TokenFate(Outcome.BLOWS_UP, why, THEOREM, bound))
    order = [l for l in range(L - 1, l0 - 1, -1) if x[l] != 0]  # end times never increase with l
    return fates, order


def classify(system: TokenSystem, x0: torch.Tensor, criterion: str = "matrix") -> list[Classification]:
    """Per system, the predicted outcome of every token and of the system, with reasons.
    x0: (batch, L, D) (or (batch, L) in 1-D). ``criterion`` ("matrix" | "symmetric") picks the matrix
    whose eigenvalues drive the D > 1 ``conjecture``."""
    if criterion not in ("matrix", "symmetric"):
        raise ValueError(f"criterion must be 'matrix' or 'symmetric', got {criterion!r}")
    X = system.check_state(x0)
    if system.normalised:
        return _normalised(system, X)
    out = []
    if system.D == 1:
        mu = system.io_matrix()[:, 0, 0]
        s, b = system.S_delta[:, 0, 0], system.dt_bias[:, 0]
        for i in range(system.batch):
            fates, order = _one_dim(float(mu[i]), float(s[i]), float(b[i]), X[i, :, 0].tolist())
            scenario = system_outcome(f.outcome for f in fates)
            reason = next(f.reason for f in fates if f.outcome == scenario)
            out.append(Classification(scenario, reason, False, fates, order))
        return out
    M = system.io_matrix()
    sym = (M + M.transpose(1, 2)) / 2
    sym_ev = torch.linalg.eigvalsh(sym)
    tol = definite_tol(sym_ev)
    q1 = torch.einsum("bd,bde,be->b", X[:, 0], sym, X[:, 0])  # x_1^T sym x_1
    npos = positive_eigenvalue_count(system, symmetric=criterion == "symmetric")
    which = "symmetric part of S_C^T S_B" if criterion == "symmetric" else "S_C^T S_B"
    sdx = torch.einsum("bed,bld->ble", system.S_delta, X)
    undetermined = TokenFate(Outcome.UNDETERMINED, "D > 1: no theorem covers this token", NONE)
    for i in range(system.batch):
        k = int(npos[i])
        first = undetermined
        top = float(sym_ev[i].max())
        if X[i, 0].abs().sum() == 0:
            first = TokenFate(Outcome.STAYS, "x_1(0) = 0 and x_1' is proportional to x_1", THEOREM)
        elif top < -float(tol[i]):
            first = TokenFate(Outcome.CONVERGES, "the symmetric part of S_C^T S_B is negative definite: "
                              "|x_1|^2 decreases like a Lyapunov function", THEOREM)
        elif top <= float(tol[i]):
            in_kernel = abs(float(q1[i])) <= float(tol[i]) * float(X[i, 0].square().sum())
            first = TokenFate(Outcome.UNDETERMINED, (
                "the symmetric part of S_C^T S_B is negative semi-definite (to rounding) and x_1(0) lies in its "
                "kernel: an equilibrium if exactly so" if in_kernel else
                "the symmetric part of S_C^T S_B is only negative semi-definite: |x_1| never increases, but it "
                "may settle at a nonzero point of the kernel"), NONE)
        fates = [first] + [_ZERO if X[i, l].abs().sum() == 0 else undetermined for l in range(1, X.shape[1])]
        guess, why = conjecture(k, which, bool((sdx[i] > 0).any()))
        scenario = system_outcome(f.outcome for f in fates)
        out.append(Classification(scenario, f"D > 1: no theorem decides the system; the paper's 2-D experiments "
                                  f"suggest {guess.paper_name} ({why}), a conjecture", True, fates, None, guess))
    return out


_ZERO = TokenFate(Outcome.STAYS, "x_l(0) = 0 and x_l' = C_l . h_l with C_l = S_C x_l: it stays 0 while the "
                  "solution exists", THEOREM)


def _normalised(system: TokenSystem, X: torch.Tensor) -> list[Classification]:
    M = system.io_matrix()
    sym_ev = torch.linalg.eigvalsh((M + M.transpose(1, 2)) / 2)
    tol = definite_tol(sym_ev)
    K = normalised.speed_bounds(system, X.shape[1])
    d_min = normalised.delta_range(system)[1].amin(-1)  # (batch,)
    zero = TokenFate(Outcome.STAYS, "x_l(0) = 0: C_l = S_C n(x_l) vanishes with x_l, so it stays 0", THEOREM)
    out = []
    for i in range(system.batch):
        fates = []
        for l in range(X.shape[1]):
            if X[i, l].abs().sum() == 0:
                fates.append(zero)
            elif l == 0:
                fates.append(TokenFate(*normalised.first_token(system, X, i, float(K[i, 0]), float(tol[i]), sym_ev,
                                                               float(d_min[i]))))
            else:
                fates.append(TokenFate(Outcome.UNDETERMINED, f"the update reads RMSNorm(x), so |x_{l + 1}'| <= "
                                       f"{float(K[i, l]):.4g}: no blow-up, growth at most linear; its fate is not "
                                       "decided", NONE))
        scenario = system_outcome(f.outcome for f in fates)
        reason = next(f.reason for f in fates if f.outcome == scenario)
        out.append(Classification(scenario, f"normalised system: no token blows up (bounded speed); {reason}; "
                                  f"{normalised.FOLLOW_UP}", scenario == Outcome.UNDETERMINED, fates))
    return out
