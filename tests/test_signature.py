"""The signature lens: the theory's exact cases are linear in the signature, the controls are not,
signature values match a hand computation, and bad input gets a clear error."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mambadyn.cli import app, run
from mambadyn.data import CharTokenizer
from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.probe import sample_text
from mambadyn.signature import SignatureConfig, ridge_r2, run_lens, signature, time_path
from mambadyn.signature.features import level_prefix, pca, shuffled
from mambadyn.signature.subjects import linear_cde, random_cde, random_paths


def test_exact_cases_reach_r2_099_at_depth_5_and_the_controls_stay_below():
    res = run_lens(SignatureConfig(paths=1500, seed=11, progress=False))
    for name in ("dense linear CDE (exact case)", "diagonal selective recurrence (exact case)"):
        r2, shuf, rf = (res.r2(name, k) for k in ("r2", "r2_shuffled", "r2_random_features"))
        assert r2[-1] >= 0.99, (name, r2)
        assert shuf[-1] < r2[-1] - 0.05 and rf[-1] < r2[-1] - 0.02, (name, r2[-1], shuf[-1], rf[-1])
        assert r2[-1] > r2[0]  # deeper signatures explain more
    # level 1 of a shuffled path equals the path's own, so the control only differs from depth 2 on
    name = res.subjects[0]
    assert abs(res.r2(name, "r2_shuffled")[0] - res.r2(name)[0]) < 1e-3  # up to rounding in the sums


def test_signature_matches_a_hand_computed_depth_2_signature():
    p = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, 1.0], [2.0, 5.0]]], dtype=torch.float64)
    d = p[0].diff(dim=0)
    level2 = sum(torch.outer(d[k], d[k]) / 2 + sum((torch.outer(d[j], d[k]) for j in range(k)), torch.zeros(2, 2))
                 for k in range(len(d)))
    torch.testing.assert_close(signature(p, 2)[0], torch.cat([d.sum(0), level2.flatten()]))
    # closed form for the first terms: level 1 = end - start, level 2 antisymmetric part = Lévy area
    torch.testing.assert_close(signature(p, 2)[0, :2], torch.tensor([2.0, 5.0], dtype=torch.float64))
    assert level_prefix(signature(p, 3), 2, 2).shape == (1, 6)


def test_linear_cde_is_exact_on_a_single_segment():
    """One linear piece of dh = (A h + b) dw from 0 is h = (exp(A Δ) - 1) A^-1 b Δ... in 1-D: (e^{aΔ} - 1) b / a."""
    path = torch.tensor([[[0.0], [0.7]]], dtype=torch.float64)
    h = linear_cde(path, torch.tensor([[[0.5]]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64))
    expect = (torch.exp(torch.tensor(0.35, dtype=torch.float64)) - 1) * 2.0 / 0.5
    torch.testing.assert_close(h[0, -1, 0], expect)


def test_basepoint_lets_the_signature_see_where_the_path_starts():
    g = torch.Generator().manual_seed(5)
    u = random_paths(600, 12, 1, g) + torch.randn(600, 1, 1, generator=g, dtype=torch.float64)  # random start
    Y = u[:, -1] * 3.0  # where the path is: a linear state, but only relative to a known start
    with_bp = ridge_r2(signature(time_path(u), 2), Y).r2
    without = ridge_r2(signature(time_path(u, basepoint=False), 2), Y).r2
    assert with_bp > 0.99 and without < 0.5, (with_bp, without)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 points"):
        signature(torch.zeros(1, 1, 2), 2)
    with pytest.raises(ValueError, match="NaN"):
        signature(torch.tensor([[[0.0, 0.0], [float("nan"), 1.0]]]), 2)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        signature(torch.zeros(1, 3, 2), 0)
    with pytest.raises(ValueError, match="NaN"):
        time_path(torch.full((1, 3, 1), float("nan")))
    with pytest.raises(ValueError, match="too few"):
        ridge_r2(torch.randn(5, 2), torch.randn(5, 1))
    with pytest.raises(ValueError, match="PCA channels"):
        pca(torch.randn(2, 3, 4), 9)
    with pytest.raises(ValueError, match="depth must be in 1..6"):
        SignatureConfig(depth=7)


def test_command_on_the_default_and_on_a_checkpoint(tmp_path, capsys):
    runner = CliRunner()
    r = runner.invoke(app, ["signature", "--paths", "200", "--depth", "3", "--out", str(tmp_path / "default")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "default" / "signature.json").read_text())
    assert {row["depth"] for row in data["rows"]} == {1, 2, 3} and (tmp_path / "default" / "signature.png").is_file()
    assert "R^2" in (tmp_path / "default" / "report.md").read_text()
    tok = CharTokenizer.from_text(sample_text())
    torch.manual_seed(0)
    MambaLM(MambaConfig(vocab_size=tok.vocab_size, d_model=16, n_layer=2, d_state=4)).save_pretrained(tmp_path / "m")
    tok.save(tmp_path / "m" / "tokenizer.json")
    r = runner.invoke(app, ["signature", "--checkpoint", str(tmp_path / "m"), "--paths", "300", "--depth", "2",
                            "--length", "12", "--out", str(tmp_path / "ckpt")])
    assert r.exit_code == 0, r.output
    subjects = {row["subject"] for row in json.loads((tmp_path / "ckpt" / "signature.json").read_text())["rows"]}
    assert subjects == {"layer 0: bare recurrence", "layer 0: full mixer", "residual stream after 2 layers"}
    assert run(["signature", "--checkpoint", str(tmp_path / "m"), "--layer", "7", "--out", str(tmp_path / "x")]) == 2
    assert "layer must be in 0..1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_shuffled_paths_keep_their_ends():
    g = torch.Generator().manual_seed(0)
    p = time_path(random_paths(4, 10, 2, g))
    s = shuffled(p, g)
    torch.testing.assert_close(s[:, -1], p[:, -1])
    torch.testing.assert_close(s[:, 0], p[:, 0])
    assert not torch.allclose(s, p)
    assert random_cde(p, 3, g).shape == (4, 3)


def test_the_committed_trained_checkpoint_runs():
    from pathlib import Path

    from mambadyn.signature.lens import run_on_checkpoint

    ckpt = Path(__file__).resolve().parents[1] / "results" / "signature" / "checkpoint"
    res = run_on_checkpoint(ckpt, SignatureConfig(paths=400, depth=2, length=16, channels=3, progress=False))
    assert len(res.subjects) == 3
    assert all(-1.0 < r["r2"] <= 1.0 for r in res.rows)


def test_controls_strong_enough_to_fail_and_honest_about_what_cannot_be_fitted():
    """A linear ridge on the raw path sits beside every depth; the shuffled control equals the signature at
    depth 1 by construction; a depth with more terms than rows is not fitted; an oversized run is refused
    before anything is allocated (issue 29.10, 34.9)."""
    from mambadyn.signature.lens import SignatureConfig, run_lens

    res = run_lens(SignatureConfig(depth=3, paths=60, channels=3, progress=False))
    assert {r["depth"] for r in res.rows} == {1, 2}  # depth 3: 84 terms for 48 rows
    assert res.skipped and all("under-determined" in s for s in res.skipped)
    for r in res.rows:
        assert "r2_linear_path" in r and r["rows_fitted"] == 48
        if r["depth"] == 1:
            assert abs(r["r2_shuffled"] - r["r2"]) < 1e-9
    with pytest.raises(ValueError, match="GiB"):
        run_lens(SignatureConfig(depth=5, paths=60, channels=30, progress=False))


def test_checkpoint_windows_of_different_splits_share_no_token():
    from mambadyn.signature.lens import split_windows

    ids = torch.arange(5000)
    w, (a, b) = split_windows(ids, 400, 24)
    assert w[:a].max() < w[a:b].min() and w[a:b].max() < w[b:].min()
    assert abs(a - 0.6 * len(w)) <= 2 and abs(b - 0.8 * len(w)) <= 2
