"""Per-layer recomputation for a backward pass that would not fit: each layer keeps only its inputs, and runs
again, layer by layer, while the gradient passes through it (torch.utils.checkpoint, non-reentrant).

The probe needs the loss gradient at every layer boundary, so it runs one backward pass through the whole
model. Without mamba-ssm, transformers' Mamba-2 reference scan saves over 1 GB a layer for it at L = 2048
(a 2.7B-shaped model, 64 layers, ran out of an H100's 80 GB); with recomputation the model keeps one residual
stream a layer and one layer's activations at a time, for the price of a second forward pass (that model's
probe then took 11.5-14.9 s; in one run under cProfile, 21.8 s against 116.7 s with the activations
offloaded to CPU memory).

Forward hooks inside a recomputed layer fire a second time during the backward pass. Hooks that record
something ask ``recomputing()`` and skip that run: the first pass already recorded the same values (the
recomputation reruns the same inputs, with the random state restored)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_depth = 0


def recomputing() -> bool:
    """True while a layer inside ``recompute_layers`` runs again for the backward pass."""
    return _depth > 0


@contextlib.contextmanager
def _rerun() -> Iterator[None]:
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def _contexts():  # checkpoint's context_fn: (the first run's context, the recomputation's context)
    return contextlib.nullcontext(), _rerun()


@contextlib.contextmanager
def recompute_layers(layers: Iterable[nn.Module], enabled: bool = True) -> Iterator[None]:
    """Within the block, each module of ``layers`` that runs with grad enabled saves only its inputs for the
    backward pass and is recomputed there; the modules' own hooks stay outside the recomputed part (they wrap
    ``forward``, which is what is replaced, and are restored after)."""
    if not enabled:
        yield
        return
    layers = list(layers)
    missing = object()
    before = [vars(layer).get("forward", missing) for layer in layers]
    for layer in layers:
        layer.forward = _checkpointed(layer.forward)
    try:
        yield
    finally:
        for layer, fwd in zip(layers, before):
            if fwd is missing:
                del layer.forward
            else:
                layer.forward = fwd


def _checkpointed(forward):
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, context_fn=_contexts, **kwargs)

    return run
