"""Tiny random models of every family in ``mambadyn.nn.families``, built by transformers' own classes (no
network): what the family tests and the hidden-attention tests run on."""

import torch
import transformers


def tiny_config(model_type: str):
    T = transformers
    common = dict(vocab_size=40, hidden_size=16)
    if model_type == "mamba":
        return T.MambaConfig(num_hidden_layers=2, state_size=4, **common)
    if model_type == "falcon_mamba":
        return T.FalconMambaConfig(num_hidden_layers=2, state_size=4, **common)
    if model_type == "jamba":
        return T.JambaConfig(num_hidden_layers=2, mamba_d_state=4, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=32, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                             expert_layer_offset=1, num_experts=2, **common)
    if model_type == "mamba2":  # two groups of two heads
        return T.Mamba2Config(num_hidden_layers=2, state_size=4, num_heads=4, head_dim=8, n_groups=2, expand=2,
                              chunk_size=8, **common)
    if model_type == "zamba2":
        return T.Zamba2Config(num_hidden_layers=3, mamba_d_state=4, mamba_headdim=8, mamba_ngroups=1,
                              num_attention_heads=2, num_key_value_heads=2, n_mamba_heads=4,
                              layers_block_type=["mamba", "hybrid", "mamba"], intermediate_size=32,
                              attention_head_dim=8, use_mem_rope=False, **common)
    if model_type == "bamba":
        return T.BambaConfig(num_hidden_layers=2, mamba_d_state=4, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1,
                             num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, attn_layer_indices=[1],
                             mamba_chunk_size=8, **common)
    if model_type == "nemotron_h":
        return T.NemotronHConfig(num_hidden_layers=3, ssm_state_size=4, mamba_num_heads=4, mamba_head_dim=8,
                                 n_groups=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                                 hybrid_override_pattern="M*-", chunk_size=8, **common)
    if model_type == "granitemoehybrid":
        return T.GraniteMoeHybridConfig(num_hidden_layers=2, mamba_d_state=4, mamba_n_heads=4, mamba_d_head=8,
                                        mamba_n_groups=1, num_attention_heads=2, num_key_value_heads=1,
                                        intermediate_size=32, layer_types=["mamba", "attention"], num_local_experts=2,
                                        num_experts_per_tok=1, shared_intermediate_size=32, mamba_chunk_size=8,
                                        **common)
    if model_type == "falcon_h1":  # with non-trivial muP multipliers, which the interaction matrix must carry
        return T.FalconH1Config(num_hidden_layers=2, mamba_d_state=4, mamba_n_heads=4, mamba_d_head=8,
                                mamba_n_groups=1, mamba_d_ssm=32, num_attention_heads=2, num_key_value_heads=1,
                                intermediate_size=32, mamba_chunk_size=8, head_dim=8, ssm_in_multiplier=0.7,
                                ssm_multipliers=[1.0, 1.0, 1.3, 0.6, 1.0], **common)
    raise KeyError(model_type)


def tiny_model(model_type: str, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type)).eval()
    with torch.no_grad():  # trained-looking norm weights, so a learned g_B * g_C is not all ones
        for name, p in model.named_parameters():
            if name.endswith(("b_layernorm.weight", "c_layernorm.weight", "dt_layernorm.weight")):
                p.uniform_(0.5, 1.5)
    return model
