"""Clustering measures on constructed tokens whose answer is known."""

import math

import pytest
import torch

from mambadyn.probe.clusters import clustering


def test_identical_tokens_are_one_cluster_with_cosine_one():
    c = clustering(torch.ones(7, 4) * torch.tensor([1.0, 2.0, 0.5, -1.0]) * torch.arange(1, 8)[:, None])
    assert c.mean_cosine == pytest.approx(1.0) and c.cosine_to_first == pytest.approx(1.0)
    assert set(c.clusters.values()) == {1}


def test_orthogonal_tokens_are_separate_with_cosine_zero():
    c = clustering(torch.eye(6) * 3.0)
    assert c.mean_cosine == pytest.approx(0.0, abs=1e-12) and c.cosine_to_first == pytest.approx(0.0, abs=1e-12)
    assert set(c.clusters.values()) == {6}


def test_two_clusters_and_a_zero_token():
    g = torch.Generator().manual_seed(0)
    a, b = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0])
    h = torch.cat([a + 0.01 * torch.randn(5, 4, generator=g), b + 0.01 * torch.randn(4, 4, generator=g),
                   torch.zeros(1, 4)])
    c = clustering(h)
    assert c.tokens == 9 and c.clusters["0.9"] == 2 and c.clusters["0.5"] == 2
    # 5 of the 8 other tokens point like the first: mean cosine to it about 4/8
    assert c.cosine_to_first == pytest.approx(4 / 8, abs=0.02)
    assert c.mean_cosine == pytest.approx((5 * 4 + 4 * 3) / (9 * 8), abs=0.02)
    assert not math.isnan(c.mean_cosine)


def test_the_probe_reports_clustering_at_every_boundary():
    from mambadyn.nn import MambaConfig, MambaLM
    from mambadyn.probe import ProbeConfig, probe

    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=17, d_model=8, n_layer=3, d_state=3))
    ids = torch.randint(0, 17, (20,), generator=torch.Generator().manual_seed(2))
    d = probe(m, ids, ProbeConfig(progress=False, ode_positions=0)).to_dict()
    cl = d["tokens"]["clustering"]
    assert len(cl) == 4
    want = clustering(m.backbone.embeddings(ids))
    assert cl[0]["mean_cosine"] == pytest.approx(want.mean_cosine) and cl[0]["clusters"] == want.clusters


def test_cluster_counts_equal_scipys_connected_components_on_random_mixtures():
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import connected_components

    g = torch.Generator().manual_seed(3)
    for k, spread in ((3, 0.05), (6, 0.3), (1, 1.0)):
        centres = torch.randn(k, 16, generator=g, dtype=torch.float64)
        h = centres[torch.randint(0, k, (90,), generator=g)] + spread * torch.randn(90, 16, generator=g,
                                                                                     dtype=torch.float64)
        x = h / h.norm(dim=-1, keepdim=True)
        cos = (x @ x.T).numpy()
        taus = (0.2, 0.5, 0.8, 0.95)
        got = clustering(h, taus).clusters
        for t in taus:
            assert got[str(t)] == connected_components(csr_array(cos >= t), directed=False)[0], (k, spread, t)


def test_cosine_to_first_on_known_tokens():
    from mambadyn.probe.clusters import cosine_to_first

    h = torch.tensor([[2.0, 0.0], [5.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(cosine_to_first(h), torch.tensor([1.0, 1.0, 0.0, -1.0, 0.0, 0.5**0.5],
                                                                 dtype=torch.float64))
