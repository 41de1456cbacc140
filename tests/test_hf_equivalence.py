"""mambadyn's MambaLM and transformers' MambaForCausalLM: identical weights give identical logits,
in both directions, through the Hugging Face checkpoint format."""

import json

import pytest
import torch

from mambadyn import MambaLM
from mambadyn.nn import CheckpointError, MambaConfig

transformers = pytest.importorskip("transformers")

SHAPES = [
    dict(hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4, time_step_rank="auto"),
    dict(hidden_size=37, state_size=8, num_hidden_layers=3, expand=3, conv_kernel=3, time_step_rank=5,
         use_bias=True, use_conv_bias=False),
    dict(hidden_size=24, state_size=16, num_hidden_layers=1, expand=1, conv_kernel=2, time_step_rank=7,
         tie_word_embeddings=False),
]


def randomize_(model, seed):
    """Move every weight away from its structured initial value, so equal outputs mean equal maths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if "A_log" in name or "norm" in name else 0.1))


def hf_model(shape, seed=0):
    cfg = transformers.MambaConfig(vocab_size=97, **shape)
    torch.manual_seed(seed)
    m = transformers.MambaForCausalLM(cfg).eval()
    randomize_(m, seed)
    return m


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("shape", SHAPES)
def test_transformers_to_mambadyn(tmp_path, shape):
    hf = hf_model(shape)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path).eval()
    assert ours.config.time_step_rank == hf.config.time_step_rank
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert got.shape == (2, 19, 97)
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("shape", SHAPES)
def test_mambadyn_to_transformers(tmp_path, shape):
    hf_cfg = transformers.MambaConfig(vocab_size=97, **shape)
    cfg = MambaConfig.from_hf_dict(hf_cfg.to_dict())
    torch.manual_seed(1)
    ours = MambaLM(cfg).eval()
    randomize_(ours, 1)
    ours.save_pretrained(tmp_path)
    hf = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 97, (3, 23))
    with torch.no_grad():
        assert rel_err(ours(ids), hf(ids).logits) <= 1e-4


def test_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=50, d_model=20, n_layer=2, d_state=4))
    m.save_pretrained(tmp_path)
    m2 = MambaLM.from_pretrained(tmp_path)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_recurrent_step_equals_full_forward():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=40, d_model=24, n_layer=3, d_state=8, d_conv=4)).eval()
    randomize_(m, 2)
    ids = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        full = m(ids)
        # prefill on the first 5 tokens, then step through the rest
        logits, states = m.prefill(ids[:, :5])
        steps = [logits]
        for t in range(5, 12):
            steps.append(m.step(ids[:, t], states))
        torch.testing.assert_close(torch.stack(steps[:-1], 1), full[:, 4:11], rtol=1e-4, atol=1e-4)
        # pure stepping from empty states also matches (prompt shorter than the conv kernel included)
        states = m.empty_states(2)
        out = torch.stack([m.step(ids[:, t], states) for t in range(12)], 1)
        torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-4)


def test_generate_greedy_is_consistent_with_forward():
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=30, d_model=16, n_layer=2, d_state=4)).eval()
    ids = torch.randint(0, 30, (1, 6))
    out = m.generate(ids, max_new_tokens=5, temperature=0)
    assert out.shape == (1, 11) and torch.equal(out[:, :6], ids)
    with torch.no_grad():
        for t in range(6, 11):
            assert out[0, t] == m(out[:, :t])[0, -1].argmax()


def _hf_greedy(hf, ids, new):
    hf.generation_config.eos_token_id = None  # a random model may emit token 0, the default eos
    hf.generation_config.pad_token_id = 0
    return hf.generate(ids, max_new_tokens=new, do_sample=False)


def _greedy_against_transformers(tmp_path, device: str):
    shape = SHAPES[0]
    hf = hf_model(shape).to(device)
    hf.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path).to(device).eval()
    ids = torch.randint(0, 97, (3, 16), device=device)
    with torch.no_grad():
        assert rel_err(ours(ids), hf(ids).logits) <= 1e-4
    want = _hf_greedy(hf, ids, 20)
    assert torch.equal(ours.generate(ids, max_new_tokens=20, temperature=0), want)
    return ours, ids, want


def test_greedy_tokens_equal_transformers_generate(tmp_path):
    _greedy_against_transformers(tmp_path, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_logits_and_greedy_tokens_equal_transformers_on_cuda(tmp_path):
    """On the GPU: the fused kernels' logits, and greedy decoding through the CUDA graph, with and without it,
    and again from the kept graph."""
    ours, ids, want = _greedy_against_transformers(tmp_path, "cuda")
    assert ours.backbone.layers[0].mixer.uses_fused_kernels(ids.float())
    assert torch.equal(ours.generate(ids, max_new_tokens=20, temperature=0, cuda_graph=False), want)
    assert torch.equal(ours.generate(ids, max_new_tokens=20, temperature=0), want)


def test_cuda_graph_needs_cuda():
    m = MambaLM(MambaConfig(vocab_size=30, d_model=16, n_layer=1, d_state=4))
    with pytest.raises(ValueError, match="cuda_graph=True needs"):
        m.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, cuda_graph=True)


def _saved(tmp_path):
    torch.manual_seed(0)
    m = MambaLM(MambaConfig(vocab_size=30, d_model=16, n_layer=2, d_state=4))
    m.save_pretrained(tmp_path)
    return m


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        MambaLM.from_pretrained(tmp_path / "nope")
    _saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        MambaLM.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        MambaLM.from_pretrained(tmp_path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run code on unpickling
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _saved(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "model.safetensors").unlink()
    torch.save({"x": _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="never fully unpickles"):
        MambaLM.from_pretrained(tmp_path)
    assert not marker.exists()


def test_weights_only_bin_loads_like_safetensors(tmp_path):
    from safetensors.torch import load_file

    model = _saved(tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    again = MambaLM.from_pretrained(tmp_path)
    ids = torch.randint(0, model.config.vocab_size, (1, 7))
    assert torch.equal(model(ids), again(ids))


def test_config_that_does_not_match_weights(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["hidden_size"] = 20
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches.*embeddings.weight"):
        MambaLM.from_pretrained(tmp_path)
    cfg["hidden_size"], cfg["num_hidden_layers"] = 16, 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing tensors.*layers.2"):
        MambaLM.from_pretrained(tmp_path)


def test_bad_ids_and_configs():
    m = MambaLM(MambaConfig(vocab_size=10, d_model=8, n_layer=1, d_state=2))
    with pytest.raises(ValueError, match="out of range"):
        m(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match=r"\(batch, L\)"):
        m(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="int64"):
        m(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="eigen_mode"):
        MambaConfig(eigen_mode="sideways")
    with pytest.raises(ValueError, match="d_model must be > 0"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="model_type 'llama'"):
        MambaConfig.from_hf_dict({"model_type": "llama", "vocab_size": 3, "hidden_size": 4, "num_hidden_layers": 1})
