"""Every label the probe prints is informative for a real layer (issue 29, items 1-3; issue 34, item 4)."""

import json

import pytest
import torch
import torch.nn.functional as F

from mambadyn.dynamics.outcome import Outcome
from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import ProbeConfig, probe, write_outputs
from mambadyn.probe.layer import delta_statistics, layer_params
from mambadyn.probe.ode import layer_system, ode_check
from mambadyn.scan.reference import selective_scan_ref

FAST = ProbeConfig(max_tokens=48, ode_positions=4, progress=False)


def _lm(**kw):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(**{"vocab_size": 30, "d_model": 16, "n_layer": 2, "d_state": 4, **kw}))


def test_the_layers_ode_is_what_the_layer_computes_bias_included():
    """dX/dt of the layer's system equals the layer's own selective scan on X, Δ = softplus(S_Δ X + dt_bias)."""
    mixer = _lm().backbone.layers[0].mixer
    system = layer_system(mixer)
    torch.testing.assert_close(system.dt_bias[0], mixer.dt_proj.bias.detach().double())
    assert (system.dt_bias < -2).all()  # Mamba's initialisation: softplus(b) in [1e-3, 1e-1]
    X = torch.randn(1, 7, mixer.x_proj.in_features, dtype=torch.float64)
    u = X.transpose(1, 2)
    dt, B, C = mixer.x_proj.weight.double().split([mixer.dt_proj.in_features, 4, 4])
    y = selective_scan_ref(u, (mixer.dt_proj.weight.double() @ dt @ u[0])[None], -torch.exp(mixer.A_log.double()),
                           (B @ u[0])[None], (C @ u[0])[None], delta_bias=mixer.dt_proj.bias.double(),
                           delta_softplus=True)
    torch.testing.assert_close(system.rhs(X), y.transpose(1, 2).detach(), rtol=1e-10, atol=1e-12)


def test_delta_statistics_are_the_layers_effective_step_on_every_position():
    m = _lm()
    mixer = m.backbone.layers[0].mixer
    u = torch.randn(40, mixer.x_proj.in_features)
    st = delta_statistics(mixer, u)
    W = mixer.x_proj.weight.detach()
    raw = u @ (mixer.dt_proj.weight.detach() @ W[: mixer.dt_proj.in_features]).T
    delta = F.softplus(raw + mixer.dt_proj.bias.detach())
    assert st.entries == delta.numel()
    assert abs(st.quantiles["q50"] - float(delta.median())) < 1e-3 * float(delta.median()) + 1e-6
    assert abs(st.frac_sdx_positive - float((raw > 0).float().mean())) < 1e-6
    assert abs(st.frac_active_positive - float((raw + mixer.dt_proj.bias > 0).float().mean())) < 1e-6
    # the label the old probe printed ("fast": S_Δ x > 0 somewhere) holds for about half the entries, while
    # the bias keeps every entry on softplus's exponential side
    assert 0.2 < st.frac_sdx_positive < 0.8 and st.frac_active_positive == 0.0


def test_a_divergence_label_carries_its_time_against_the_depth():
    res = probe(_lm(eigen_mode="positive"), torch.arange(30), FAST)
    for k, lp in enumerate(res.layers):
        assert lp.delta is not None and lp.layers_remaining == 2 - k and lp.depth_note
        assert lp.ode_horizon is not None and (lp.first_blowup is None or lp.first_blowup > 0)
        o = res.ode[k]
        assert o.t_end == lp.layers_remaining  # the ODE is compared at the depth that remains
        if lp.first_blowup is not None:
            where = "within" if lp.first_blowup <= lp.layers_remaining else "beyond"
            assert where in lp.depth_note and f"{lp.layers_remaining} that remain" in lp.depth_note


def test_the_symmetric_parts_signs_are_reported_as_forced_where_linear_algebra_forces_them(tmp_path):
    free = probe(_lm(d_state=4), torch.arange(30), FAST)
    for lp in free.layers:
        assert lp.symmetric_forced and lp.sym_positive == lp.sym_negative == 4
        assert "Sylvester" in lp.symmetric_note
    neg = probe(_lm(d_state=4, eigen_mode="negative"), torch.arange(30), FAST)
    for lp in neg.layers:
        assert not lp.symmetric_forced and (lp.sym_positive, lp.sym_negative) == (0, 4)
    write_outputs(free, tmp_path / "p")
    d = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert "scenario_symmetric" not in d["layers"][0] and d["layers"][0]["symmetric_forced"] is True
    assert "Sylvester" in (tmp_path / "p" / "report.md").read_text()


def test_every_label_is_one_word_of_the_shared_vocabulary():
    res = probe(_lm(eigen_mode="positive"), torch.arange(30), FAST)
    d = res.to_dict()
    words = [lp["scenario"] for lp in d["layers"]] + [w for o in d["ode"] for w in o["predicted"] + o["observed"]]
    assert all(Outcome(w) for w in words)
    lp = layer_params("l0", _lm().backbone.layers[0].mixer)  # parameters only: fast or slow is not known
    assert lp.scenario in (Outcome.UNDETERMINED.value, Outcome.CONVERGES.value)


def test_an_ode_the_solver_cannot_finish_reports_no_fate_and_no_nan(monkeypatch):
    import mambadyn.probe.ode as ode

    real = ode.simulate
    monkeypatch.setattr(ode, "simulate", lambda *a, **kw: real(*a, **{**kw, "max_steps": 3}))
    m = _lm()
    mixer = m.backbone.layers[0].mixer
    u = torch.randn(5, mixer.x_proj.in_features, dtype=torch.float64)
    o = ode_check(0, mixer, u, [[1.0] * 5, [2.0] * 5, [3.0] * 5], t_end=100.0)
    assert o.predicted == ["unfinished"] * 5 and o.decided == 0
    assert o.agreement is None and o.spearman is None and "gave up" in o.solver
    assert all(r is None for r in o.predicted_ratio)


def test_ode_layers_out_of_range_are_refused_before_any_work(monkeypatch):
    import mambadyn.probe.api as api

    monkeypatch.setattr(api, "trace_tokens", lambda *a, **kw: pytest.fail("traced before checking ode_layers"))
    with pytest.raises(ValueError, match=r"ode_layers \[9\] out of range for 2 layers"):
        probe(_lm(), torch.arange(10), ProbeConfig(ode_layers=[9], progress=False))


def test_both_models_are_set_beside_the_stream_norms_and_cosines():
    """The paper's and the normalised model each get a norm and a cosine verdict; the agreements are counted
    against a stream whose changes are constructed here (positions 1, 3 move towards token 1, 2, 4 away)."""
    from mambadyn.dynamics import simulate
    from mambadyn.probe.clusters import cosine_to_first
    from mambadyn.probe.ode import layer_system

    m = _lm()
    mixer = m.backbone.layers[0].mixer
    g = torch.Generator().manual_seed(3)
    u = torch.randn(5, mixer.x_proj.in_features, generator=g, dtype=torch.float64)
    norms = [[1.0] * 5, [2.0] * 5, [1.0, 3.0, 0.5, 3.0, 0.5]]
    cos = [[1.0, 0.2, 0.2, 0.2, 0.2], [1.0] * 5, [1.0, 0.5, 0.1, 0.5, 0.1]]
    o = ode_check(1, mixer, u, norms, t_end=2.0, first_cosines=cos)
    assert o.observed_cosine_change[0] is None
    assert o.observed_cosine_change[1:] == pytest.approx([0.5 - 1.0, 0.1 - 1.0, -0.5, -0.9])
    assert o.normalised is not None and o.normalised.model == "normalised"
    # recompute the normalised model's verdicts from its own definition
    s = float(u.square().mean(-1).sqrt().median())
    system = layer_system(mixer).with_norm(s, 1e-5 * s**2)
    tr = simulate(system, u[None], t_out=torch.linspace(0, 2.0, 5, dtype=torch.float64))
    ratio = (tr.x[-1, 0].norm(dim=-1) / u.norm(dim=-1)).tolist()
    assert o.normalised.predicted_ratio == pytest.approx(ratio, rel=1e-4)
    obs_up = [r > 1 for r in (torch.tensor(norms[2]) / torch.tensor(norms[1])).tolist()]
    assert o.normalised.agreement == pytest.approx(sum((r > 1) == up for r, up in zip(ratio, obs_up)) / 5)
    dcos = (cosine_to_first(tr.x[-1, 0]) - cosine_to_first(u)).tolist()
    want = sum((dcos[p] > 0) == (o.observed_cosine_change[p] > 0) for p in range(1, 5)) / 4
    assert o.normalised.cosine_agreement == pytest.approx(want)
    assert o.normalised.cosine_decided == 4
    # the normalised model never blows up
    assert "blows_up" not in o.normalised.predicted


def test_a_layer_whose_only_growing_modes_are_complex_says_so_without_contradicting_its_sign_counts():
    """K = S_C^T S_B with eigenvalues 1 ± 2i and -1: the + column counts real eigenvalues (0 here), so the
    scenario's reason must name what it counted, the two with a positive real part, not 'positive eigenvalues'."""
    from mambadyn.probe.layer import matrix_params

    K = torch.tensor([[1.0, -2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
    SB, SC = K, torch.eye(3, dtype=torch.float64)  # S_C^T S_B = K
    lp = matrix_params("k", SB, SC, rtol=1e-12, sdx_positive=True)
    assert (lp.positive, lp.negative, lp.complex_pairs) == (0, 1, 1)
    assert lp.scenario == "blows_up" and "2 eigenvalue(s) of S_C^T S_B with a positive real part" in lp.reason
    assert "positive eigenvalue" not in lp.reason
    stable = matrix_params("k", K - 2 * torch.eye(3, dtype=torch.float64), SC, rtol=1e-12, sdx_positive=True)
    assert stable.scenario == "converges" and "no eigenvalue of S_C^T S_B has a positive real part" in stable.reason


@pytest.mark.parametrize("sort", [False, True])
def test_delta_quantiles_are_numpys_by_selection_and_by_sort(sort):
    """The GPU's path (a sort, two order statistics per quantile) and the CPU's (numpy's partition) give
    numpy's linear quantiles, ties, an odd count and the extremes included."""
    import numpy as np

    from mambadyn.probe.layer import QUANTILES, quantiles

    g = torch.Generator().manual_seed(3)
    for x in (torch.rand(1001, generator=g), torch.randint(0, 4, (37,), generator=g).float(), torch.tensor([2.5])):
        want = np.quantile(x.numpy(), QUANTILES + (0.0, 1.0))
        got = quantiles(x, QUANTILES + (0.0, 1.0), sort=sort)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
