"""The normalised token system (the update reads RMSNorm(x)): its right-hand side against the definition,
its simulation against scipy, and every statement ``classify`` makes about it checked by simulation."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from mambadyn.dynamics import Outcome, TokenSystem, classify, simulate
from mambadyn.dynamics.normalised import speed_bounds
from mambadyn.dynamics.stiff import rhs_numpy

f64 = torch.float64


def direct_rhs(system: TokenSystem, X: torch.Tensor) -> torch.Tensor:
    """dx_l^d/dt = Σ_{j<=l} Σ_n C_ln exp(A_dn Σ_{k=j+1..l} Δ_k^d) B_jn Δ_j^d n_j^d, n = w x / sqrt(|x|^2/D + eps),
    evaluated term by term in float64 from the definition."""
    out = torch.zeros_like(X)
    for i in range(system.batch):
        w, eps = system.norm_weight[i], system.norm_eps
        n = X[i] * w / torch.sqrt(X[i].square().mean(-1, keepdim=True) + eps)
        B, C = n @ system.S_B[i].T, n @ system.S_C[i].T
        delta = torch.log1p(torch.exp(n @ system.S_delta[i].T + system.dt_bias[i]))
        L, D = n.shape
        for l in range(L):
            for d in range(D):
                acc = 0.0
                for j in range(l + 1):
                    s = delta[j + 1:l + 1, d].sum()
                    acc += (C[l] * torch.exp(system.A[i, d] * s) * B[j]).sum() * delta[j, d] * n[j, d]
                out[i, l, d] = acc
    return out


def systems(seed, batch=3, D=3, N=2, scale=1.0, bias=0.0):
    g = torch.Generator().manual_seed(seed)
    s = TokenSystem.random(batch, D, N, a=0.7, scale=scale, generator=g)
    w = 0.5 + torch.rand(batch, D, generator=g, dtype=f64)
    s = TokenSystem(s.S_B, s.S_C, s.S_delta, s.A, torch.full((batch, D), bias, dtype=f64)).with_norm(w, 1e-5)
    return s, g


@pytest.mark.parametrize("seed", range(3))
def test_rhs_matches_definition(seed):
    s, g = systems(seed, bias=-1.0)
    X = torch.randn(s.batch, 5, s.D, generator=g, dtype=f64) * 3
    X[0, 2] = 0  # a zero token: n(0) = 0 with eps > 0
    torch.testing.assert_close(s.rhs(X), direct_rhs(s, X), rtol=1e-12, atol=1e-12)


def test_numpy_rhs_matches_torch():
    s, g = systems(3)
    X = torch.randn(s.batch, 4, s.D, generator=g, dtype=f64)
    for i in range(s.batch):
        F = rhs_numpy(*(p[i].numpy() for p in s.params), norm_weight=s.norm_weight[i].numpy(), norm_eps=s.norm_eps)
        np.testing.assert_allclose(F(X[i].numpy()), s.rhs(X)[i].numpy(), rtol=1e-12, atol=1e-14)


def test_simulation_matches_scipy():
    s, g = systems(4, batch=2, D=2, N=2)
    X = torch.randn(s.batch, 3, s.D, generator=g, dtype=f64)
    t = torch.tensor([0.0, 0.5, 2.0, 8.0, 30.0], dtype=f64)
    tr = simulate(s, X, t_out=t, rtol=1e-10, atol=1e-12)
    for i in range(s.batch):
        F = rhs_numpy(*(p[i].numpy() for p in s.params), norm_weight=s.norm_weight[i].numpy(), norm_eps=s.norm_eps)
        ref = solve_ivp(lambda _, y: F(y.reshape(3, 2)).ravel(), (0, 30), X[i].numpy().ravel(), method="DOP853",
                        t_eval=t.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tr.x[:, i].reshape(len(t), -1).numpy(), ref.y.T, rtol=1e-6, atol=1e-8)


def definite(sign, seed, batch=4, D=3, tokens_scale=1.0):
    """Systems whose S_C^T S_B is symmetric and ``sign``-definite (S_C = I), positive RMSNorm weights."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(batch, D, D, generator=g, dtype=f64)
    M = sign * (G @ G.transpose(1, 2) / D + 0.3 * torch.eye(D, dtype=f64))
    S_delta = torch.randn(batch, D, D, generator=g, dtype=f64) / D**0.5
    w = 0.5 + torch.rand(batch, D, generator=g, dtype=f64)
    s = TokenSystem.from_matrices(M, torch.eye(D, dtype=f64).expand(batch, D, D), S_delta, a=1.0,
                                  dt_bias=torch.full((batch, D), -1.0, dtype=f64)).with_norm(w)
    return s, torch.randn(batch, 4, D, generator=g, dtype=f64) * tokens_scale


def parse(reason, pattern):
    import re
    m = re.search(pattern, reason)
    assert m, reason
    return [float(v) for v in m.groups()]


@pytest.mark.parametrize("tokens_scale", [1e-3, 1.0, 1e3])
def test_negative_definite_first_token_converges_within_its_bound(tokens_scale):
    s, X = definite(-1.0, 10, tokens_scale=tokens_scale)
    # tokens of norm 1e3 reach the scale sqrt(eps) after t ~ 500, where the field turns stiff (LSODA, ~30 s)
    t = torch.logspace(-2, 2.5 if tokens_scale > 1 else 3, 30, dtype=f64)
    tr = simulate(s, X, t_out=t)
    for i, c in enumerate(classify(s, X)):
        fate = c.tokens[0]
        assert fate.outcome == Outcome.CONVERGES, fate.reason
        (coef,) = parse(fate.reason, r"\+ ([0-9.e+-]+) t\)\^\(-1/2\)")
        bound = (X[i, 0].norm() ** -2 + coef * tr.t) ** -0.5
        assert (tr.x[:, i, 0].norm(dim=-1) <= bound * (1 + 1e-6)).all()
        # every coordinate's magnitude never grows
        mags = tr.x[:, i, 0].abs()
        assert (mags[1:] <= mags[:-1] * (1 + 1e-9) + 1e-10).all()  # the solver's atol: rounding below it


@pytest.mark.parametrize("tokens_scale", [1e-3, 1.0, 1e3])
def test_positive_definite_first_token_diverges_linearly_within_its_bounds(tokens_scale):
    s, X = definite(1.0, 11, tokens_scale=tokens_scale)
    t = torch.logspace(-2, 3, 30, dtype=f64)
    tr = simulate(s, X, t_out=t)
    assert not tr.blew_up.any()
    for i, c in enumerate(classify(s, X)):
        fate = c.tokens[0]
        assert fate.outcome == Outcome.DIVERGES_SLOWLY, fate.reason
        x0, kappa, x0b, K = parse(fate.reason, r"([0-9.e+-]+) \+ ([0-9.e+-]+) t <= \|x_1\(t\)\| <= ([0-9.e+-]+) \+ "
                                  r"([0-9.e+-]+) t")
        n = tr.x[:, i, 0].norm(dim=-1)
        n0 = float(X[i, 0].norm())
        # the printed bounds are rounded to 3-4 digits: compare with the unrounded start and a matching slack
        assert (n >= (n0 + kappa * tr.t) * (1 - 2e-3)).all()
        assert (n <= (n0 + K * tr.t) * (1 + 2e-3)).all()


@pytest.mark.parametrize("seed,param_scale,tokens_scale", [(20, 1.0, 1.0), (21, 1e-2, 1e2), (22, 5.0, 1e-2),
                                                           (23, 3.0, 1e3)])
def test_speed_bound_holds_for_every_token(seed, param_scale, tokens_scale):
    s, g = systems(seed, batch=4, D=4, N=3, scale=param_scale, bias=-2.0)
    X = torch.randn(s.batch, 6, s.D, generator=g, dtype=f64) * tokens_scale
    X[1, 3] = 0
    X[2, 0] = torch.tensor([0, 0, 1, 0], dtype=f64) * tokens_scale  # a pole of the sphere
    X[3, 2] = -torch.tensor([1, 0, 0, 0], dtype=f64) * tokens_scale
    K = speed_bounds(s, X.shape[1])
    # the bound on the velocity, at the start and along the trajectory
    assert (s.rhs(X).norm(dim=-1) <= K * (1 + 1e-9)).all()
    tr = simulate(s, X, t_out=torch.linspace(0, 10, 11, dtype=f64))
    assert not tr.blew_up.any()
    assert tr.reached.all()
    moved = (tr.x - X[None]).norm(dim=-1)  # (T, b, L)
    assert (moved <= K[None] * tr.t[:, None, None] * (1 + 1e-6) + 1e-12).all()
    for T in range(len(tr.t)):
        assert (s.rhs(tr.x[T]).norm(dim=-1) <= K * (1 + 1e-9)).all()
    fates = classify(s, X)
    assert fates[1].tokens[3].outcome == Outcome.STAYS
    assert tr.x[:, 1, 3].abs().max() < 1e-12  # LSODA's Newton steps (stiff systems) leave rounding far below atol
    for c in fates:
        assert c.scenario != Outcome.BLOWS_UP
        assert "attracts the others" in c.reason and "conjecture" in c.reason


def test_poles_and_zero_first_token():
    s, X = definite(1.0, 30)
    X[0, 0] = torch.tensor([0.0, 0.0, 2.0], dtype=f64)  # a pole: only that coordinate is nonzero
    X[1, 0] = 0
    tr = simulate(s, X, t_out=torch.linspace(0, 20, 11, dtype=f64))
    c = classify(s, X)
    assert c[1].tokens[0].outcome == Outcome.STAYS and (tr.x[:, 1, 0] == 0).all()
    assert c[0].tokens[0].outcome == Outcome.DIVERGES_SLOWLY
    # with w > 0 the zero coordinates of token 1 stay zero and its sign pattern is kept
    assert (tr.x[:, 0, 0, :2] == 0).all() and (tr.x[:, 0, 0, 2] >= 2.0).all()


def test_nonpositive_weight_is_undetermined():
    s, X = definite(-1.0, 31, batch=1)
    w = s.norm_weight.clone()
    w[0, 0] = -0.5
    s2 = TokenSystem(s.S_B, s.S_C, s.S_delta, s.A, s.dt_bias, w)
    c = classify(s2, X)[0]
    assert c.tokens[0].outcome == Outcome.UNDETERMINED and "<= 0" in c.tokens[0].reason


def test_bad_norm_arguments():
    s, _ = systems(0)
    with pytest.raises(ValueError, match="norm_eps"):
        s.with_norm(1.0, eps=0.0)
    with pytest.raises(ValueError, match="norm_weight must have shape"):
        TokenSystem(s.S_B, s.S_C, s.S_delta, s.A, s.dt_bias, torch.ones(s.batch, s.D + 1, dtype=f64))
    with pytest.raises(ValueError, match="non-finite"):
        s.with_norm(torch.tensor([1.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="speed is unbounded"):
        speed_bounds(TokenSystem.random(1, 2), 3)


def test_one_dim_normalised_signs():
    """1-D: n(x) = w x / sqrt(x^2 + eps) is about sign(x), so mu < 0 shrinks |x_1| at a near-constant speed first,
    and mu > 0 grows it linearly."""
    for mu, want in ((-1.0, Outcome.CONVERGES), (1.0, Outcome.DIVERGES_SLOWLY)):
        s = TokenSystem.one_dim(mu, 0.5, 1.0).with_norm(1.0)
        x0 = torch.tensor([[3.0, -1.0, 2.0]], dtype=f64)
        c = classify(s, x0)[0]
        assert c.tokens[0].outcome == want
        tr = simulate(s, x0, t_out=torch.linspace(0, 2, 5, dtype=f64))
        n = tr.x[:, 0, 0, 0].abs()
        assert (n[1:] < n[:-1]).all() if mu < 0 else (n[1:] > n[:-1]).all()


@pytest.mark.parametrize("norm", [False, True])
def test_low_rank_s_delta_gives_the_dense_systems_right_hand_side_and_trajectory(norm):
    """S_Δ = U V kept as factors (a real layer's dt_proj @ x_proj[:r]) computes Δ through the low rank: the same
    right-hand side and trajectory as the dense S_Δ, also for a sub-batch and the normalised system."""
    g = torch.Generator().manual_seed(40)
    b, D, N, r = 3, 6, 2, 2
    U, V = torch.randn(b, D, r, generator=g, dtype=f64), torch.randn(b, r, D, generator=g, dtype=f64) / D
    S_B, S_C = torch.randn(b, N, D, generator=g, dtype=f64) / D, torch.randn(b, N, D, generator=g, dtype=f64) / D
    dense = TokenSystem.from_matrices(S_B, S_C, U @ V, a=0.5, dt_bias=torch.full((b, D), -1.0, dtype=f64))
    low = TokenSystem(dense.S_B, dense.S_C, dense.S_delta, dense.A, dense.dt_bias, S_delta_factors=(U, V))
    if norm:
        dense, low = dense.with_norm(1.3), low.with_norm(1.3)
    X = torch.randn(b, 5, D, generator=g, dtype=f64)
    torch.testing.assert_close(low.rhs(X), dense.rhs(X), rtol=1e-12, atol=1e-14)
    t = torch.tensor([0.0, 0.3, 1.0, 3.0], dtype=f64)
    torch.testing.assert_close(simulate(low, X, t_out=t).x, simulate(dense, X, t_out=t).x, rtol=1e-9, atol=1e-12)
    sub = low.select(torch.tensor([2, 0]))
    torch.testing.assert_close(sub.rhs(X[[2, 0]]), dense.rhs(X)[[2, 0]], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="differs from S_delta"):
        TokenSystem(dense.S_B, dense.S_C, dense.S_delta, dense.A, dense.dt_bias, S_delta_factors=(U, V + 1))
    with pytest.raises(ValueError, match="S_delta_factors must be"):
        TokenSystem(dense.S_B, dense.S_C, dense.S_delta, dense.A, dense.dt_bias, S_delta_factors=(U[0], V))
