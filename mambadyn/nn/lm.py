"""MambaLM: embedding -> Mamba blocks -> final RMSNorm -> tied LM head.

Parameter names match transformers' ``MambaForCausalLM`` (``backbone.embeddings``,
``backbone.layers.{i}.mixer.*``, ``backbone.norm_f``, ``lm_head``), so state dicts move between
the two unchanged.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..refine.modes import EigenMode
from .block import MambaBlock, RMSNorm
from .config import MambaConfig


class MambaBackbone(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList([MambaBlock(config, i) for i in range(config.n_layer)])
        self.norm_f = RMSNorm(config.d_model, eps=config.rms_eps)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False, return_state: bool = False):
        """input_ids (batch, L) -> hidden (batch, L, d_model) [, per-layer residual streams] [, states]."""
        h = self.embeddings(input_ids)
        if not (output_hidden_states or return_state) and self.layers[0].mixer.uses_fused_kernels(h):
            return self._fused_stack(h, lambda i, layer, y: layer.drop(layer.mixer(y)))
        streams, states = [h], []
        for layer in self.layers:
            if return_state:
                h, s = layer(h, return_state=True)
                states.append(s)
            else:
                h = layer(h)
            if output_hidden_states:
                streams.append(h)
        out = self.norm_f(h.to(self.norm_f.weight.dtype))
        extras = ([streams] if output_hidden_states else []) + ([states] if return_state else [])
        return (out, *extras) if extras else out

    def _fused_stack(self, h: torch.Tensor, mix) -> torch.Tensor:
        # the stack with each block's residual add fused into the next block's RMSNorm (one Triton kernel
        # reads the mixer's output and the residual once, and writes the sum and its norm); mix(i, layer, y)
        # is layer i's mixer on its normed input
        from ..fused.norm import rms_norm_add

        x, residual = h, None
        for i, layer in enumerate(self.layers):
            y, residual = rms_norm_add(x, residual, layer.norm.weight, layer.norm.eps, layer.residual_in_fp32)
            x = mix(i, layer, y)
        return rms_norm_add(x, residual, self.norm_f.weight, self.norm_f.eps, self.layers[-1].residual_in_fp32)[0]

    def step(self, h: torch.Tensor, states) -> torch.Tensor:
        """One token's embedding h (batch, d_model) -> the final norm's output (batch, d_model); ``states``
        is updated in place."""
        if self.layers[0].mixer.uses_fused_kernels(h):
            return self._fused_stack(h, lambda i, layer, y: layer.mixer.step(y, states[i]))
        for layer, s in zip(self.layers, states):
            h = layer.step(h, s)
        return self.norm_f(h.to(self.norm_f.weight.dtype))


class MambaLM(nn.Module):
    """A Mamba language model. ``forward(input_ids (batch, L)) -> logits (batch, L, vocab)``."""

    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        if EigenMode.parse(config.eigen_mode).constrained:
            from ..refine import constrain_eigenvalues

            constrain_eigenvalues(self, config.eigen_mode, threshold=config.eigen_threshold, init="keep")

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        for layer in self.backbone.layers:
            for lin in (layer.mixer.in_proj, layer.mixer.out_proj):
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            if self.config.rescale_prenorm_residual:
                layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layer)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (batch, L) int64 -> logits (batch, L, vocab_size)."""
        _check_ids(input_ids, self.config.vocab_size)
        return self.lm_head(self.backbone(input_ids).to(self.lm_head.weight.dtype))

    def hidden_states(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after each block: n_layer + 1 tensors (batch, L, d_model)."""
        _check_ids(input_ids, self.config.vocab_size)
        return self.backbone(input_ids, output_hidden_states=True)[1]

    # --- recurrent inference -------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor):
        """Run the prompt (batch, L); return the last logits (batch, vocab) and the per-layer states."""
        _check_ids(input_ids, self.config.vocab_size)
        h, states = self.backbone(input_ids, return_state=True)
        return self.lm_head(h[:, -1].to(self.lm_head.weight.dtype)), states

    @torch.no_grad()
    def step(self, token: torch.Tensor, states) -> torch.Tensor:
        """One token (batch,) -> logits (batch, vocab); ``states`` (from ``prefill`` or ``empty_states``) is updated."""
        h = self.backbone.step(self.backbone.embeddings(token), states)
        return self.lm_head(h.to(self.lm_head.weight.dtype))

    def empty_states(self, batch: int, device=None, dtype=torch.float32):
        """Zero conv and SSM states for ``step``-only decoding."""
        c = self.config
        return [
            (torch.zeros(batch, c.d_inner, c.d_conv, device=device, dtype=dtype),
             torch.zeros(batch, c.d_inner, c.d_state, device=device, dtype=torch.float32))
            for _ in range(c.n_layer)
        ]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 cuda_graph: bool | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` after the prompt (batch, L); temperature 0 is greedy. Returns (batch, L + new).

        On CUDA the decoding step runs as a captured CUDA graph (``cuda_graph``: None = wherever CUDA is;
        False = launch its kernels one by one). The graph is captured once per batch size and kept."""
        logits, states = self.prefill(input_ids)
        step = self.step
        if cuda_graph is None:
            cuda_graph = input_ids.is_cuda
        if cuda_graph and not input_ids.is_cuda:
            raise ValueError(f"cuda_graph=True needs the model and input_ids on CUDA, not {input_ids.device}")
        if cuda_graph and max_new_tokens > 1:
            from .decode import graphed_step

            step = graphed_step(self, states)
        out = [input_ids]
        for i in range(max_new_tokens):
            if temperature == 0:
                tok = logits.argmax(-1)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
            out.append(tok[:, None])
            if i + 1 < max_new_tokens:  # the last token needs no logits after it
                logits = step(tok, states)
        return torch.cat(out, dim=1)

    # --- checkpoints ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "MambaLM":
        """Load a Hugging Face Mamba checkpoint folder (config.json + *.safetensors) or, online, a hub id."""
        from .hf_io import load_pretrained

        return load_pretrained(cls, path, **overrides)

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + model.safetensors in transformers' MambaForCausalLM format."""
        from .hf_io import save_pretrained

        save_pretrained(self, path)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


def _check_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a (batch, L) tensor, got {getattr(input_ids, 'shape', input_ids)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be int64 or int32, got {input_ids.dtype}")
    # the range check reads values: a compiled graph would break on it, and a CUDA graph cannot capture it
    # (the embedding still fails loudly)
    if torch.compiler.is_compiling() or (input_ids.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(
            f"input_ids out of range [0, {vocab_size}): min {int(input_ids.min())}, max {int(input_ids.max())}"
        )
