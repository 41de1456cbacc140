"""What the simulation reports agrees with what the theory proves, at every scale (issue 29, items 5-8;
issue 34, items 4 and 10)."""

import math
import warnings

import pytest
import torch

from mambadyn.dynamics import TokenSystem, classify, simulate
from mambadyn.dynamics.outcome import Outcome
from mambadyn.dynamics.rates import convergence_constants, own_blowup_bound

# what a simulation to a finite horizon may show for each fate classify proves
ALLOWED = {Outcome.CONVERGES: {Outcome.CONVERGES, Outcome.BOUNDED, Outcome.STAYS},
           Outcome.DIVERGES_SLOWLY: {Outcome.GROWS, Outcome.BOUNDED, Outcome.STAYS},
           Outcome.BLOWS_UP: {Outcome.BLOWS_UP}, Outcome.STAYS: {Outcome.STAYS}}


def _log_uniform(g, lo, hi, *shape):
    return 10 ** (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64))


def _signs(g, *shape):
    return torch.where(torch.rand(*shape, generator=g) < 0.5, -1.0, 1.0).double()


def test_blow_up_verdicts_are_scale_free_and_agree_with_every_theorem_over_decades():
    """mu in ±[1e-2, 1e2], s in ±[1e-2, 10], a in [0.1, 3], x0 in ±[1e-2, 10], log-uniform; Δ's bias 0 for
    half of them, in ±[0.1, 7] for the rest (a real layer's is about -7 to -2). The same systems
    with time stretched 1000x and with x shrunk 100x ((mu, s) -> (mu c^2, s c)) give the same verdicts and
    end times, and nothing contradicts classify's theorems."""
    g = torch.Generator().manual_seed(7)
    n, L = 240, 3
    mu, s = _log_uniform(g, -2, 2, n) * _signs(g, n), _log_uniform(g, -2, 1, n) * _signs(g, n)
    a, x0 = _log_uniform(g, -1, 0.5, n), _log_uniform(g, -2, 1, n, L) * _signs(g, n, L)
    bias = torch.where(torch.arange(n) % 2 == 0, 0.0, _log_uniform(g, -1, 0.85, n) * _signs(g, n))
    seen = []
    for k, c in ((1.0, 1.0), (1e3, 1.0), (1.0, 1e-2)):  # t = k tau, x = c y (b is unchanged by both)
        system = TokenSystem.one_dim(mu * c**2 / k, s * c, a, bias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            tr = simulate(system, x0 / c, 1e10 * k)
        observed = tr.token_outcomes()
        for i, cls in enumerate(classify(system, x0 / c)):
            for l, fate in enumerate(cls.tokens):
                assert observed[i][l] in ALLOWED[fate.outcome], (mu[i], s[i], a[i], bias[i], x0[i], l, fate,
                                                                 observed[i][l])
                if fate.outcome == Outcome.BLOWS_UP:  # the bound is exact for a lone token: solver error only
                    assert tr.blowup_time[i, l] <= fate.bound * (1 + 1e-6)
        seen.append((observed, tr.blowup_time / k))
    assert seen[0][0] == seen[1][0] == seen[2][0]
    for _, ends in seen[1:]:
        torch.testing.assert_close(ends, seen[0][1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("mu,s,x0", [(1.0, -0.02, [1.0, 0.5, 2.0]), (100.0, -0.1, [5.0, 6.0, 7.0, 8.0])])
def test_slow_divergence_with_large_mu_over_s_squared_is_not_a_blow_up(mu, s, x0):
    """Both once gave finite blow-up times, though the solutions exist for all t."""
    system = TokenSystem.one_dim(mu, s, 1.0)
    x = torch.tensor([x0], dtype=torch.float64)
    assert all(f.outcome == Outcome.DIVERGES_SLOWLY for f in classify(system, x)[0].tokens)
    tr = simulate(system, x, 1e6)
    assert not tr.blew_up.any() and set(tr.token_outcomes()[0]) == {Outcome.GROWS}


def test_convergence_constants_hold_with_zero_tokens_between():
    """x0 = [0, 0.5, 0.4, 0, 0, 0.3]: the first nonzero token has c = sqrt(K); a token m places after the
    previous nonzero one has c = sqrt(K (1 - 2^(-a m))). (Token 2 of [0, 0.5, 0.4] tends to 0.849, not 0.601.)"""
    x0 = torch.tensor([[0.0, 0.5, 0.4, 0.0, 0.0, 0.3]], dtype=torch.float64)
    tr = simulate(TokenSystem.one_dim(-1.0, 1.0, 1.0), x0, t_out=torch.tensor([1e11, 1e12]), rtol=1e-10, atol=1e-14)
    c = convergence_constants(-1.0, 1.0, 6, nonzero=(x0[0] != 0).tolist())
    K = 1 / (2 * math.log(2))
    assert c[1] == pytest.approx(math.sqrt(K)) and c[2] == pytest.approx(math.sqrt(K / 2))
    assert c[5] == pytest.approx(math.sqrt(K * (1 - 2**-3))) and c[0] == c[3] == 0
    torch.testing.assert_close(tr.x[-1, 0, :, 0].abs() * 1e6, c, rtol=1e-5, atol=1e-12)
    assert abs(float(tr.x[-1, 0, 1, 0]) * 1e6 - 0.8493) < 1e-3


def test_a_semi_definite_symmetric_part_does_not_prove_convergence():
    """The negative eigen mode with N < D makes sym(S_C^T S_B) negative semi-definite; token 1 in its kernel
    is an exact equilibrium, so 'converges (theorem)' would be false."""
    g = torch.Generator().manual_seed(0)
    S_C = torch.randn(2, 4, generator=g, dtype=torch.float64)
    S_B = -torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64)) @ S_C
    system = TokenSystem.from_matrices(S_B, S_C, -torch.eye(4, dtype=torch.float64))
    kernel = torch.linalg.svd(S_C).Vh[-1]
    for x1, word in ((torch.randn(4, generator=g, dtype=torch.float64), "semi-definite"), (kernel, "kernel")):
        fate = classify(system, torch.stack([x1, torch.ones(4, dtype=torch.float64)])[None])[0].tokens[0]
        assert fate.outcome == Outcome.UNDETERMINED and fate.basis == "none" and word in fate.reason
    definite = TokenSystem.from_matrices(-torch.eye(4), torch.eye(4), torch.eye(4))
    fate = classify(definite, torch.ones(1, 2, 4, dtype=torch.float64))[0].tokens[0]
    assert fate.outcome == Outcome.CONVERGES and fate.basis == "theorem"


@pytest.mark.parametrize("s", [0.0, 1e-9, 1e-4, 1.0])
def test_the_blow_up_time_of_token_one_matches_quadrature_cubic_or_quartic(s):
    """s = 0 (or tiny s) blows up like a cubic, not x^4: the end-time estimate must not assume the power."""
    x0 = torch.tensor([[0.7]], dtype=torch.float64)
    tr = simulate(TokenSystem.one_dim(1.0, s, 1.0), x0, 1e3, rtol=1e-10, atol=1e-14)
    T = own_blowup_bound(1.0, s, 0.7)
    assert tr.blew_up.all() and abs(float(tr.blowup_time[0, 0]) - T) <= 1e-8 * T


def test_a_solver_that_gives_up_reports_no_fate():
    system = TokenSystem.one_dim(-1.0, 1.0, 1.0)
    with pytest.warns(RuntimeWarning, match="gave up"):
        tr = simulate(system, torch.tensor([[0.5, 0.4]], dtype=torch.float64), 1e300, max_steps=50,
                      stiff_fallback=False)
    assert tr.token_outcomes() == [[Outcome.UNFINISHED, Outcome.UNFINISHED]]
    assert "gave up" in tr.stop_reasons()[0]


def test_logarithmic_growth_reads_as_growth_at_any_horizon_and_mu_zero_stays():
    x0 = torch.tensor([[0.5, 0.4, 0.7]], dtype=torch.float64)
    for t_end in (1e4, 1e30, 1e100):
        tr = simulate(TokenSystem.one_dim(1.0, -1.0, 1.0), x0, t_end)
        assert tr.token_outcomes() == [[Outcome.GROWS] * 3], t_end
    still = TokenSystem.one_dim(0.0, 1.0, 1.0)
    assert simulate(still, x0, 10.0).token_outcomes() == [[Outcome.STAYS] * 3]
    assert [f.outcome for f in classify(still, x0)[0].tokens] == [Outcome.STAYS] * 3


def test_phase_diagram_rows_add_up_and_one_seed_claims_no_interval():
    from mambadyn.dynamics.phase import PhaseConfig, phase_diagram
    from mambadyn.stats import fmt_summary, summarize

    rows = phase_diagram(PhaseConfig(dims=(2,), systems=6, L=3, t_end=50.0), progress=False)
    for r in rows:
        assert r["converged"] + r["blew_up"] + r["grew"] + r["bounded"] == r["systems"], r
    text = fmt_summary(summarize([0.5]).__dict__)
    assert "nan" not in text and "n = 1" in text
