"""MambaClassifier: shapes, bad input, training, and save/load with both refinements on."""

import pytest
import torch

from mambadyn import ClassifierConfig, MambaClassifier
from mambadyn.nn import CheckpointError
from mambadyn.refine import eigen_mode_of, spectrum

SMALL = dict(image_size=8, patch_size=2, d_model=16, n_layer=2, d_state=4)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_forward_shape_and_mixer_count(bidirectional):
    torch.manual_seed(0)
    m = MambaClassifier(ClassifierConfig(**SMALL, bidirectional=bidirectional, num_classes=5))
    assert m(torch.randn(3, 1, 8, 8)).shape == (3, 5)
    assert len(spectrum(m)) == 2 * (2 if bidirectional else 1)


def test_bad_images_are_named():
    m = MambaClassifier(ClassifierConfig(**SMALL))
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\)"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        ClassifierConfig(**SMALL, reorder_layers=[5])


def test_save_load_roundtrip_keeps_reorder_and_constraint(tmp_path):
    torch.manual_seed(0)
    cfg = ClassifierConfig(**SMALL, eigen_mode="positive", reorder_layers=[0], reorder_hard=True)
    m = MambaClassifier(cfg)
    with torch.no_grad():  # move weights off their initial values so a fresh model would differ
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.eval()
    m.save_pretrained(tmp_path)
    m2 = MambaClassifier.from_pretrained(tmp_path).eval()
    assert eigen_mode_of(m2) == "positive" and m2.config.reorder_layers == [0]
    assert m2.layers[0].mixer.reorder is not None and m2.layers[1].mixer.reorder is None
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))
    (tmp_path / "config.json").write_text('{"architectures": ["MambaForCausalLM"]}')
    with pytest.raises(CheckpointError, match="MambaClassifier"):
        MambaClassifier.from_pretrained(tmp_path)


def test_learns_a_separable_task_with_reordering():
    torch.manual_seed(0)
    m = MambaClassifier(ClassifierConfig(**SMALL, num_classes=2, reorder_layers=[0]))
    x = torch.randn(64, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()  # top half brighter than bottom
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (m(x).argmax(-1) == y).float().mean() > 0.9
    assert m.layers[0].mixer.reorder.K.weight.grad.abs().sum() > 0


def test_random_order_permutes_in_training_only():
    """The follow-up's random reordering: a causal stack read at its last token sees a fresh order per training
    batch (so two training passes differ), and its own order at evaluation (the same as without the option)."""
    torch.manual_seed(0)
    cfg = dict(SMALL, bidirectional=False, pool="last")
    plain = MambaClassifier(ClassifierConfig(**cfg))
    rand = MambaClassifier(ClassifierConfig(**cfg, random_order=True))
    rand.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 8, 8)
    plain.eval(), rand.eval()
    torch.testing.assert_close(rand(x), plain(x), rtol=0, atol=0)
    rand.train()
    torch.manual_seed(1)
    a = rand(x)
    torch.manual_seed(2)
    b = rand(x)
    assert not torch.allclose(a, b)
    # the permutation is the generator's: the same seed gives the same order, as a resumed run needs
    torch.manual_seed(1)
    torch.testing.assert_close(rand(x), a, rtol=0, atol=0)
