"""The decoding step of a MambaLM as a CUDA graph.

One step is a few hundred small kernels (per layer: the norm, four matrix products, the conv and SSM state
updates); at batch 1 their launches, not their work, set the pace. Captured once for a batch size, the
step replays with one launch. The graph reads and writes fixed tensors: the token buffer, the per-layer
states (updated in place) and the logits. Its weights are read where they lie, so in-place updates
(an optimizer step) are seen; a model moved or re-allocated is captured again.
"""

from __future__ import annotations

import weakref

import torch

from ..cuda_graph import capture

# model -> {(batch, conv dtype, device): (the parameters' addresses at capture, GraphedStep)}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class GraphedStep:
    """``step(token (batch,), states) -> logits (batch, vocab)`` for one batch size, replayed from a CUDA graph.
    ``states`` is copied into the graph's own states before the first replay of a sequence (``load``)."""

    def __init__(self, model, batch: int, conv_dtype: torch.dtype, device: torch.device):
        self.states = model.empty_states(batch, device=device, dtype=conv_dtype)
        self.token = torch.zeros(batch, dtype=torch.long, device=device)
        self.bound = None
        self.graph, self.logits = capture(lambda: model.step(self.token, self.states), device, warmup=2)

    def load(self, states) -> None:
        for (conv, ssm), (conv_src, ssm_src) in zip(self.states, states):
            conv.copy_(conv_src)
            ssm.copy_(ssm_src)
        self.bound = states

    def __call__(self, token: torch.Tensor, states) -> torch.Tensor:
        if states is not self.bound:
            self.load(states)
        self.token.copy_(token)
        self.graph.replay()
        return self.logits


def _signature(model) -> tuple:
    return tuple(p.data_ptr() for p in model.parameters())


def graphed_step(model, states) -> GraphedStep:
    """The model's graphed step for the batch size and dtypes of ``states`` (from ``prefill``), captured on
    first use and kept on the model; ``states`` is loaded into it."""
    conv = states[0][0]
    key = (conv.shape[0], conv.dtype, conv.device)
    cache = _CACHE.setdefault(model, {})
    sig = _signature(model)
    entry = cache.get(key)
    if entry is None or entry[0] != sig:
        entry = cache[key] = (sig, GraphedStep(model, conv.shape[0], conv.dtype, conv.device))
    step = entry[1]
    step.load(states)
    return step
