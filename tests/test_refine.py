"""Refinements: eigenvalue-sign parametrization and token reordering."""

import pytest
import torch

from mambadyn import MambaConfig, MambaLM
from mambadyn.refine import (
    EigenSign,
    add_token_reorder,
    constrain_eigenvalues,
    eigen_mode_of,
    mixer_matrices,
    soft_sort,
    spectrum,
)

CFG = dict(vocab_size=40, d_model=16, n_layer=2, d_state=4)


def check_sign(model, mode, thr):
    for ev, (_, m) in zip(spectrum(model), [(None, b.mixer) for b in model.backbone.layers]):
        assert ev.imag.abs().max() < 1e-8  # U^T diag(δ) U is symmetric: real spectrum
        re = ev.real
        M = mixer_matrices(m)
        sv = torch.linalg.svdvals(M["S_C"])  # U = S_C
        if mode == "positive":
            assert (re > 0).all() and re.min() >= thr * sv.min() ** 2 * (1 - 1e-9)
        elif mode == "negative":
            assert (re < 0).all() and re.max() <= -thr * sv.min() ** 2 * (1 - 1e-9)
        else:
            assert (re > 0).sum() == 2 and (re < 0).sum() == 2


@pytest.mark.parametrize("mode", ["positive", "negative", "mixed"])
def test_sign_holds_at_init_and_after_100_steps(mode):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**CFG, eigen_mode=mode))
    check_sign(m, mode, 0.7)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-2)
    for _ in range(100):
        ids = torch.randint(0, 40, (4, 12))
        loss = torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    check_sign(m, mode, 0.7)
    assert eigen_mode_of(m) == mode


def test_right_inverse_is_exact_on_the_family():
    p = EigenSign(3, 4, "positive", 0.7)
    W = torch.randn(3 + 8, 10, dtype=torch.float64)
    eff = p(W)
    torch.testing.assert_close(p(p.right_inverse(eff)), eff)


def test_constraint_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(**CFG, eigen_mode="negative"))
    m.save_pretrained(tmp_path)
    m2 = MambaLM.from_pretrained(tmp_path)
    assert eigen_mode_of(m2) == "negative"
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(m2(ids), m(ids))


def test_transformers_mamba_trains_with_the_constraint():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(transformers.MambaConfig(vocab_size=40, hidden_size=16, state_size=4,
                                                                num_hidden_layers=2))
    constrain_eigenvalues(hf, "positive")
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-2)
    for _ in range(5):
        ids = torch.randint(0, 40, (2, 10))
        loss = hf(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all((ev.real > 0).all() for ev in spectrum(hf))


def test_hard_soft_sort_is_an_exact_sorting_permutation():
    s = torch.randn(3, 9)
    P = soft_sort(s, hard=True)
    assert torch.equal(P.sum(-1), torch.ones(3, 9)) and set(P.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close((P @ s[..., None])[..., 0], s.sort(-1).values)


def test_soft_rows_sum_to_one_and_approach_hard_as_tau_shrinks():
    s = torch.stack([torch.randperm(7), torch.randperm(7)]).float() * 0.3  # scores at least 0.3 apart
    H = soft_sort(s, hard=True)
    errs = []
    for tau in (1.0, 0.1, 0.01):
        P = soft_sort(s, tau=tau)
        torch.testing.assert_close(P.sum(-1), torch.ones(2, 7))
        errs.append((P - H).abs().max().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def test_gradients_reach_K_and_reordering_is_refused_in_a_causal_lm():
    from mambadyn.nn import MambaMixer

    torch.manual_seed(0)
    mixer = MambaMixer(MambaConfig(**CFG))
    wrapper = torch.nn.Module()
    wrapper.mixer = mixer
    (reorder,) = add_token_reorder(wrapper, hard=True)
    mixer(torch.randn(2, 11, 16)).pow(2).sum().backward()
    assert reorder.K.weight.grad is not None and reorder.K.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="breaks causality"):
        add_token_reorder(MambaLM(MambaConfig(**CFG)))
