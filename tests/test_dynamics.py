"""Token dynamics: the ODE right-hand side, the deep discrete stack's limit, simulation, classification, rates."""

import math

import numpy as np
import pytest
import torch

from mambadyn.dynamics import Outcome, SimConfig, TokenSystem, classify, simulate
from mambadyn.dynamics.outcome import describe_tokens, system_outcome
from mambadyn.dynamics.rates import (
    convergence_constants,
    end_order,
    fitted_convergence_exponent,
    fitted_log_growth_exponent,
    own_blowup_bound,
    slow_divergence_ratios,
    slow_growth_invariant,
)
from mambadyn.dynamics.simulation import simulate_until_decided
from mambadyn.dynamics.stiff import rhs_numpy, solve_one
from mambadyn.scan import selective_scan_ref


def one_dim_rhs_by_formula(mu, s, a, x, b=0.0):
    """paper.md's 1-D equation, token by token, in plain Python (softplus(s x + b): b = 0 is the paper's)."""
    sp = lambda v: math.log1p(math.exp(-abs(v))) + max(v, 0.0)  # noqa: E731
    out = []
    for l in range(len(x)):
        acc = 0.0
        for j in range(l + 1):
            acc += x[j] ** 2 * sp(s * x[j] + b) * math.exp(-a * sum(sp(s * x[k] + b) for k in range(j + 1, l + 1)))
        out.append(mu * x[l] * acc)
    return out


def test_one_dim_rhs_matches_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        mu, s, a = (torch.rand(3, generator=g).double() * torch.tensor([4.0, 4.0, 2.0]) - torch.tensor([2, 2, -0.1]))
        x = torch.randn(7, generator=g).double()
        for b in (0.0, -4.6):
            got = TokenSystem.one_dim(mu, s, a, bias=b).rhs(x.view(1, 7, 1))[0, :, 0]
            want = torch.tensor(one_dim_rhs_by_formula(mu.item(), s.item(), a.item(), x.tolist(), b), dtype=torch.float64)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_rhs_is_one_s6_layer(uniform):
    """F(X) equals the selective scan with u = X, Δ = softplus(S_Δ X + b), B = S_B X, C = S_C X."""
    g = torch.Generator().manual_seed(1)
    D, N, L = 3, 4, 9
    A = -torch.rand(D, N, generator=g).double() - 0.2
    if uniform:
        A = A[:, :1].expand(D, N).contiguous()
    sysm = TokenSystem.from_matrices(torch.randn(N, D, generator=g), torch.randn(N, D, generator=g),
                                     torch.randn(D, D, generator=g), a=A, dt_bias=torch.randn(D, generator=g) - 2)
    X = torch.randn(1, L, D, generator=g).double()
    u = X.transpose(1, 2)
    y = selective_scan_ref(u, (sysm.S_delta[0] @ u[0])[None], A, (sysm.S_B[0] @ u[0])[None],
                           (sysm.S_C[0] @ u[0])[None], delta_bias=sysm.dt_bias[0], delta_softplus=True)
    torch.testing.assert_close(sysm.rhs(X), y.transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_deep_residual_stack_converges_to_the_ode():
    """x <- x + h S6(x) with shared weights, depth T/h, approaches the ODE solution at t = T with error O(h)."""
    g = torch.Generator().manual_seed(2)
    sysm = TokenSystem.random(1, D=2, N=2, a=1.0, generator=g)
    X0 = torch.randn(1, 5, 2, generator=g).double() * 0.5
    T = 0.5
    exact = simulate(sysm, X0, T, rtol=1e-11, atol=1e-13, n_points=3).x[-1]
    errs = []
    for depth in (25, 50, 100, 200):
        X, h = X0.clone(), T / depth
        for _ in range(depth):
            u = X.transpose(1, 2)
            y = selective_scan_ref(u, (sysm.S_delta[0] @ u[0])[None], -torch.ones(2, 2, dtype=torch.float64),
                                   (sysm.S_B[0] @ u[0])[None], (sysm.S_C[0] @ u[0])[None], delta_softplus=True)
            X = X + h * y.transpose(1, 2)
        errs.append((X - exact).norm().item())
    assert errs[-1] < 1e-2 * X0.norm().item()
    for coarse, fine in zip(errs, errs[1:]):
        assert 1.6 < coarse / fine < 2.4  # first order in the step: halving h halves the error


def random_1d(n, L, seed, t_end=60.0):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    mu = u(0.5, 2, n) * torch.where(torch.rand(n, generator=g) < 0.4, -1.0, 1.0).double()
    s = u(0.5, 2, n) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).double()
    a = u(0.3, 2, n)
    # half the systems get every token of sign opposite to s (the slow scenario when mu > 0)
    sign = torch.where(torch.rand(n, L, generator=g) < 0.5, -1.0, 1.0).double()
    sign[: n // 2] = -torch.sign(s[: n // 2, None]).expand(-1, L)
    x0 = sign * u(0.5, 1.5, n, L)
    return TokenSystem.one_dim(mu, s, a), x0, t_end


def test_classify_agrees_with_simulation_on_hundreds_of_random_systems():
    sysm, x0, t_end = random_1d(300, 6, seed=3)
    labels = [c.scenario for c in classify(sysm, x0)]
    observed = simulate(sysm, x0, t_end, n_points=60).outcome()
    # a slowly diverging system is seen growing at the horizon; the rest must be seen as predicted
    seen_as = {Outcome.CONVERGES: Outcome.CONVERGES, Outcome.DIVERGES_SLOWLY: Outcome.GROWS,
               Outcome.BLOWS_UP: Outcome.BLOWS_UP}
    counts = {sc: labels.count(sc) for sc in seen_as}
    assert all(c >= 40 for c in counts.values()), counts
    wrong = [(i, lab, obs) for i, (lab, obs) in enumerate(zip(labels, observed)) if seen_as[lab] != obs]
    assert not wrong, wrong[:5]


def test_per_token_fates_in_fast_divergence_leave_early_tokens_slow():
    """mu > 0: tokens before the first s x_l(0) > 0 only diverge slowly; from there every solution ends
    in finite time, in the order L, L-1, ..., l0, never later than the stated bounds."""
    sysm = TokenSystem.one_dim(1.0, 1.0, 1.0)
    x0 = torch.tensor([[-0.8, -0.3, 0.6, -0.5, 0.9, 0.0, -1.0]], dtype=torch.float64)
    c = classify(sysm, x0)[0]
    fates = [f.outcome for f in c.tokens]
    assert fates == [Outcome.DIVERGES_SLOWLY] * 2 + [Outcome.BLOWS_UP] * 3 + [Outcome.STAYS, Outcome.BLOWS_UP]
    assert c.scenario == Outcome.BLOWS_UP and not c.conjectural
    assert all(f.basis == "theorem" for f in c.tokens)
    assert "token 3" in c.tokens[3].reason  # s x_4(0) < 0: it ends with token 3's blow-up
    assert c.end_order == [6, 4, 3, 2]  # 0-based: L, ..., l0, skipping the zero token
    traj = simulate(sysm, x0, 1e4, n_points=200)
    seen = traj.token_outcomes()[0]
    assert seen[:2] == [Outcome.GROWS, Outcome.GROWS] and not traj.blew_up[0, :2].any()
    assert all(o == Outcome.BLOWS_UP for o in seen[2:5]) and seen[5] == Outcome.STAYS
    T = traj.blowup_time[0]
    for l in (2, 3, 4, 6):
        assert T[l] <= c.tokens[l].bound * (1 + 1e-6), (l, T[l], c.tokens[l].bound)
    assert (T[3:5] <= T[2:4]).all() and T[6] <= T[4]  # end times never increase with l
    assert "tokens 1-2 grow" in describe_tokens(seen, T.tolist())


def test_convergence_constants_hold_to_t_1e12():
    """sqrt(t) |x_1| -> (2|mu| ln2)^(-1/2); sqrt(t) |x_l| -> sqrt((1 - 2^-a) / (2|mu| ln2)) for l >= 2."""
    for mu, s, a, rtol in ((-1.0, 1.0, 1.0, 1e-4), (-0.5, -1.0, 0.5, 1e-2), (-2.0, 0.5, 2.0, 1e-3)):
        x0 = torch.tensor([[0.8, -1.3, 0.5, 2.0, 0.7]], dtype=torch.float64)
        traj = simulate(TokenSystem.one_dim(mu, s, a), x0, 1e12, n_points=40, rtol=1e-10, atol=1e-300)
        got = traj.norms()[-1, 0] * traj.t[-1].sqrt()
        torch.testing.assert_close(got, convergence_constants(mu, a, 5), rtol=rtol, atol=0)
        assert all(o == Outcome.CONVERGES for o in traj.token_outcomes()[0])
    # the fitted exponent over a short window is a fit, not the rate: far from -1/2 at t <= 1e2 here
    short = simulate(TokenSystem.one_dim(-0.5, -1.0, 0.5), x0, 1e2, n_points=60)
    assert (fitted_convergence_exponent(short)[0] + 0.5).abs().max() > 0.05
    with pytest.raises(ValueError, match="mu < 0"):
        convergence_constants(1.0, 1.0, 3)


def test_slow_divergence_first_token_grows_like_log_t():
    """x_1' = mu x^3 softplus(s x) with s x < 0: e^{|s| x} x^-3 ~ t, i.e. |s| x - 3 ln x - ln t -> const,
    while x / ln t still drifts (the log-growth exponent creeps towards 1 only as ln ln t / ln t -> 0).
    Every later token keeps a frozen ratio to the smallest token before it."""
    sysm = TokenSystem.one_dim(1.0, -1.0, 1.0)
    traj = simulate(sysm, torch.tensor([[0.5, 0.7, 0.9]]).double(), 1e12, n_points=120)
    assert not traj.blew_up.any()
    inv = slow_growth_invariant(traj, -1.0)[:, 0]
    tail = traj.t > 1e6
    assert inv[tail].max() - inv[tail].min() < 0.15  # flat while ln t grows by 14
    ratio = traj.x[:, 0, 0, 0] / torch.log(traj.t)
    assert ratio[tail].max() - ratio[tail].min() > 0.1  # so x is not simply c ln t at these times
    k = fitted_log_growth_exponent(traj, tail=0.3)[0]
    assert 0.6 < k[0] < 1.0, k  # measured, with the theory's finite-t value ~0.77 at t ~ 1e12
    assert (traj.x[-1, 0, :, 0] > traj.x[0, 0, :, 0]).all()
    early = simulate(sysm, torch.tensor([[0.5, 0.7, 0.9]]).double(), 1e8, n_points=60)
    torch.testing.assert_close(slow_divergence_ratios(traj), slow_divergence_ratios(early), rtol=1e-2, atol=0)


def test_fast_divergence_blowup_time_matches_quadrature():
    mu = torch.tensor([1.0, 0.5, 2.0, 1.5])
    s = torch.tensor([1.0, 2.0, 0.5, -1.0])
    x0 = torch.tensor([[0.9, -0.2], [0.6, -0.2], [1.3, -0.2], [-0.8, 0.2]]).double()
    traj = simulate(TokenSystem.one_dim(mu, s, 1.0), x0, 50.0, n_points=50)
    for i in range(4):
        exact = own_blowup_bound(mu[i].item(), s[i].item(), x0[i, 0].item())
        assert traj.primary[i, 0]
        assert abs(traj.blowup_time[i, 0].item() - exact) < 1e-5 * exact
        # token 2's trajectory cannot outlive token 1's
        assert traj.blowup_time[i, 1] <= traj.blowup_time[i, 0]
    assert own_blowup_bound(1.0, -1.0, 0.5) == math.inf and own_blowup_bound(-1.0, 1.0, 0.5) == math.inf


def test_tokens_diverge_at_different_rates_later_ones_first():
    sysm = TokenSystem.one_dim(1.0, 1.0, 1.0)
    traj = simulate(sysm, torch.full((1, 8), 0.4, dtype=torch.float64), 100.0, n_points=80)
    T = traj.blowup_time[0]
    assert torch.isfinite(T).all()
    assert (T[1:] <= T[:-1]).all() and T[-1] < T[0]
    assert end_order(traj)[0, 0] == 7


def test_d_dim_fates_are_undetermined_and_the_counterexample_is_observed():
    """D > 1: no theorem, so token fates are undetermined and the paper's criterion is only a conjecture.
    The case the conjecture gets wrong (eigenvalues 1, -0.5): token 1 converges and tokens 3..6 blow
    up near t = 65, which a run to t = 50 does not see."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=torch.float64))
    x0 = 0.3 + torch.rand(1, 6, 2, generator=g, dtype=torch.float64)
    M = Q @ torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64)) @ Q.T
    system = TokenSystem.from_matrices(M, torch.eye(2), -torch.eye(2), a=1.0)
    c = classify(system, x0)[0]
    assert c.conjectural and c.scenario == Outcome.UNDETERMINED
    assert all(f.outcome == Outcome.UNDETERMINED and f.basis == "none" for f in c.tokens)
    assert c.conjecture == Outcome.DIVERGES_SLOWLY and "conjecture" in c.reason
    short = simulate(system, x0, 50.0, n_points=100)
    assert not short.blew_up.any()
    traj = simulate_until_decided(system, x0, 50.0, 1e5, n_points=200)
    seen = traj.token_outcomes()[0]
    assert seen[0] == Outcome.CONVERGES and all(o == Outcome.BLOWS_UP for o in seen[2:])
    assert 60 < traj.blowup_time[0, 2] < 70 and abs(traj.t[-1].item() - 500.0) < 1e-9
    # a negative definite symmetric part proves token 1 converges; the rest stays undetermined
    neg = classify(TokenSystem.from_matrices(-torch.eye(2), torch.eye(2), torch.eye(2)), torch.ones(1, 3, 2))[0]
    assert neg.tokens[0].outcome == Outcome.CONVERGES and neg.tokens[1].outcome == Outcome.UNDETERMINED
    assert neg.conjecture == Outcome.CONVERGES


def test_system_outcome_is_the_most_severe_token_outcome():
    assert system_outcome([Outcome.CONVERGES, Outcome.STAYS]) == Outcome.CONVERGES
    assert system_outcome([Outcome.DIVERGES_SLOWLY, Outcome.BLOWS_UP]) == Outcome.BLOWS_UP
    assert system_outcome([Outcome.STAYS]) == Outcome.STAYS
    assert Outcome.BLOWS_UP.paper_name == "fast divergence"


def test_simulate_on_a_given_time_grid():
    sysm = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    x0 = torch.tensor([[0.5, 0.4]], dtype=torch.float64)
    grid = torch.tensor([0.5, 1.0, 2.0, 7.0])
    tr = simulate(sysm, x0, t_out=grid)
    torch.testing.assert_close(tr.t, torch.tensor([0.0, 0.5, 1.0, 2.0, 7.0], dtype=torch.float64))
    ref = simulate(sysm, x0, 7.0, n_points=300)
    torch.testing.assert_close(tr.x[-1], ref.x[-1], rtol=1e-6, atol=1e-9)
    for bad, msg in (([1.0, 0.5], "increase strictly"), ([0.1, float("nan")], "finite"), ([1.0], "at least 2")):
        with pytest.raises(ValueError, match=msg):
            simulate(sysm, x0, t_out=bad)
    with pytest.raises(ValueError, match="not both"):
        simulate(sysm, x0, 3.0, t_out=grid)


def test_blowup_is_a_result_not_a_nan():
    traj = simulate(TokenSystem.one_dim(5.0, 3.0, 1.0), torch.tensor([[3.0, 2.0, 1.0]]), 10.0, n_points=20)
    assert traj.blew_up.all()
    assert torch.isfinite(traj.x).all()
    assert torch.isnan(traj.norms()[-1]).all()  # explicitly masked after the blow-up


def test_bad_input():
    with pytest.raises(ValueError, match="decay a must be > 0"):
        TokenSystem.one_dim(1.0, 1.0, 0.0)
    sysm = TokenSystem.one_dim([1.0, 2.0], 1.0, 1.0)
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch=2, L, D=1\)"):
        simulate(sysm, torch.ones(3, 4), 1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        simulate(sysm, torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), 1.0)
    with pytest.raises(ValueError, match="S_C must have shape"):
        TokenSystem.from_matrices(torch.ones(2, 3), torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="t_end must be > 0"):
        SimConfig(t_end=-1)
    with pytest.raises(ValueError, match="non-finite"):
        TokenSystem.one_dim(float("inf"), 1.0, 1.0)


def test_numpy_rhs_matches_torch():
    g = torch.Generator().manual_seed(7)
    D, N = 3, 5
    sysm = TokenSystem.from_matrices(torch.randn(N, D, generator=g), torch.randn(N, D, generator=g),
                                     torch.randn(D, D, generator=g), a=-torch.rand(D, N, generator=g) - 0.1,
                                     dt_bias=torch.randn(D, generator=g) - 3)
    X = torch.randn(1, 6, D, generator=g).double()
    F = rhs_numpy(*(p[0].numpy() for p in sysm.params))
    torch.testing.assert_close(torch.from_numpy(F(X[0].numpy())), sysm.rhs(X)[0], rtol=1e-12, atol=1e-12)


def test_lsoda_takes_over_where_the_explicit_budget_runs_out():
    """Handing every system to LSODA after 30 steps gives the same fates, blow-up times and end states
    as the batched solver left to finish by itself."""
    sysm, x0, t_end = random_1d(24, 5, seed=11, t_end=30.0)
    full = simulate(sysm, x0, t_end, n_points=30, stiff_fallback=False)
    assert full.reached.all()
    mixed = simulate(sysm, x0, t_end, n_points=30, max_steps=30)
    assert mixed.reached.all()
    assert torch.equal(mixed.blew_up, full.blew_up) and full.blew_up.any() and not full.blew_up.all()
    both = full.blew_up
    torch.testing.assert_close(mixed.blowup_time[both], full.blowup_time[both], rtol=2e-3, atol=0)
    fin = full.valid[-1] & mixed.valid[-1]
    assert fin.any()
    torch.testing.assert_close(mixed.x[-1][fin], full.x[-1][fin], rtol=1e-4, atol=1e-7)


def test_stiff_d_dim_system_finishes():
    """A 6-D system that pulls its tokens onto a slow manifold: the explicit solver stalls (t < 60 after
    2000 steps); LSODA carries it to t_end."""
    g = torch.Generator().manual_seed(0)
    sysm = TokenSystem.random(200, 6, 6, a=1.0, generator=g)
    x0 = torch.randn(200, 4, 6, generator=g, dtype=torch.float64)
    one, x = sysm.select(slice(23, 24)), x0[23:24]
    with pytest.warns(RuntimeWarning, match="stopped before t_end"):
        stalled = simulate(one, x, 200.0, n_points=20, max_steps=2000, stiff_fallback=False)
    assert not stalled.reached.any()
    done = simulate(one, x, 200.0, n_points=20, max_steps=2000)
    assert done.reached.all() and not done.blew_up.any()
    assert torch.isfinite(done.x).all()


def test_lsoda_overflow_inside_a_step_is_a_blow_up():
    """x' = x^4 from x(0) = 1 blows up at t = 1/3. With the rate threshold out of reach, the state
    overflows inside one LSODA step: that token (and the later one, whose equation holds it) ends there,
    and the integration still reaches t_end instead of failing."""
    F = lambda X: X ** 4  # noqa: E731
    t_out = np.array([0.0, 0.1, 0.2, 0.3, 1.0])
    one = solve_one(F, np.array([[1.0], [0.5]]), t_out, rtol=1e-7, atol=1e-10, blowup_threshold=1e300)
    assert one.reached
    np.testing.assert_allclose(one.blowup, [1 / 3, 1 / 3], rtol=1e-4)
    assert one.primary.tolist() == [True, False]
    np.testing.assert_allclose(one.x[1:4, 0, 0], 1 / (1 - 3 * t_out[1:4]) ** (1 / 3), rtol=1e-5)
