"""mambadyn's hidden attention against TransformerLens's ``compute_effective_attention`` on the same tiny
transformers models (Mamba-1 per channel, Mamba-2 per head). TransformerLens is not a dependency (it pulls
wandb, datasets, accelerate); the test runs where it is installed (``pip install transformer-lens``) and
skips otherwise. TransformerLens's default form leaves out Δ_j; its ``include_dt_scaling=True`` form is the
reconstruction form y_l = Σ_j M_lj u_j + D u_l, which is what mambadyn returns."""

import copy

import pytest
import torch

tl = pytest.importorskip("transformer_lens", reason="TransformerLens is not installed: pip install transformer-lens "
                         "to compare with its compute_effective_attention")
transformers = pytest.importorskip("transformers")

from mambadyn.probe.attention import hidden_attention  # noqa: E402

VOCAB = 64


def _folder(tmp_path, model):
    from tokenizers import Tokenizer, models, pre_tokenizers

    model.save_pretrained(tmp_path)
    tk = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="t0", pad_token="t1", eos_token="t2",
                                         bos_token="t3").save_pretrained(tmp_path)
    return str(tmp_path)


def _tl_attention(tmp_path, model, ids, layer):
    from transformer_lens.model_bridge import TransformerBridge

    # the bridge wraps the model's modules in place: give it a copy
    bridge = TransformerBridge.boot_transformers(_folder(tmp_path, model), hf_model=copy.deepcopy(model), device="cpu")
    for block in bridge.blocks:
        block.mixer.eager_scan = True  # the scan's own hooks (dt among them) fire on this path only
    _, cache = bridge.run_with_cache(ids[None])
    return bridge.blocks[layer].mixer.compute_effective_attention(cache, layer, include_dt_scaling=True)[0]


def _model(kind):
    torch.manual_seed(0)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                                       conv_kernel=4, time_step_rank=4)
        return transformers.MambaForCausalLM(cfg).eval()
    cfg = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                                    conv_kernel=4, num_heads=8, head_dim=8, n_groups=2, chunk_size=8)
    return transformers.Mamba2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_hidden_attention_equals_transformerlens(tmp_path, kind):
    model = _model(kind)
    ids = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(1))
    for layer in (0, 1):
        units = 32 if kind == "mamba" else 8
        arg = {"channels": list(range(units))} if kind == "mamba" else {"heads": list(range(units))}
        ours = hidden_attention(model, ids, layers=[layer], block=5, **arg)[0].M
        theirs = _tl_attention(tmp_path / f"{kind}{layer}", model, ids, layer).double()
        assert theirs.shape == ours.shape
        # TransformerLens works in float32; mambadyn in float64
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6 * float(ours.abs().max()))
