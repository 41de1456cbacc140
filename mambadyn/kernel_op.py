"""One kernel's two autograd paths, built from one forward/backward pair.

Eager calls go through a ``torch.autograd.Function``: it costs less host time per call than a custom op's
dispatch, and the eager training step is host-bound. Under ``torch.compile`` the same forward and backward
run as ``torch.library`` custom ops with fake implementations, so the compiled graph holds one opaque node
per kernel instead of breaking at a Python Function. Writing both by hand for every kernel repeated the
same plumbing (op, fake, backward op, its fake, setup, formula) four times; ``KernelOp`` builds it once.

A kernel supplies:

- ``forward(*inputs) -> tuple[Tensor, ...]``, annotated (the op's schema is inferred from it): the first
  ``n_outputs`` are what callers get, the rest are kept for the backward only. Every output is a fresh
  tensor (a custom op's outputs may not alias its inputs); a forward that saves nothing returns an empty
  tensor in that place.
- ``save(inputs, outputs) -> (tensors, state)``: what the backward reads, tensors (None allowed) and a
  tuple of plain values.
- ``backward(*grads, *tensors, *state) -> list``, annotated: the gradients of the caller-visible outputs
  (None where unused) come first. It returns one gradient per forward input in order, in the input's
  dtype, None for an input that was None; the list may stop early (the rest are None).
- the two fakes, which give the outputs' shapes, dtypes and strides without running anything.

An optional ``prepare(*inputs) -> inputs`` runs before the kernel: inside the Function in eager mode (where
autograd records nothing of it) and before the op when compiling (where recording costs nothing).
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch


def _grad_needed(inputs) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)


def _op_outputs(grads: list) -> list[torch.Tensor]:
    # a custom op's list output holds no None and no two tensors sharing storage: the summed gradients are
    # views of one buffer, and an input's gradient may be handed out twice (x and the residual of a norm)
    out, seen = [], set()
    for g in grads:
        if g is None:
            g = torch.empty(0)
        elif g._base is not None or id(g) in seen:
            g = g.clone()
        seen.add(id(g))
        out.append(g)
    return out


class KernelOp:
    """``op(*inputs)`` runs the kernel with autograd: eagerly through a Function, under torch.compile as
    the custom op ``name`` (and ``name + "_backward"``), without autograd when no input needs a gradient.
    Returns the first ``n_outputs`` outputs (one tensor where ``n_outputs`` is 1)."""

    def __init__(self, name: str, *, forward: Callable, forward_fake: Callable, save: Callable,
                 backward: Callable, backward_fake: Callable, n_outputs: int, prepare: Callable | None = None):
        self.name, self.n_outputs = name, n_outputs
        self.forward, self.backward, self.save, self.prepare = forward, backward, save, prepare
        self.function = self._function()
        self.op = torch.library.custom_op(name, forward, mutates_args=())
        self.op.register_fake(forward_fake)

        @functools.wraps(backward)
        def backward_impl(*args):
            return _op_outputs(backward(*args))

        # the schema says Tensor[] out: None travels as an empty tensor
        backward_impl.__signature__ = inspect.signature(backward).replace(return_annotation=list[torch.Tensor])
        self.backward_op = torch.library.custom_op(name + "_backward", backward_impl, mutates_args=())
        self.backward_op.register_fake(backward_fake)
        self.op.register_autograd(self._op_backward, setup_context=self._op_setup)

    def _function(self) -> type:
        kernel = self

        def forward(ctx, *inputs):
            if kernel.prepare is not None:
                inputs = kernel.prepare(*inputs)
            outputs = kernel.forward(*inputs)
            if any(ctx.needs_input_grad):
                tensors, ctx.state = kernel.save(inputs, outputs)
                ctx.save_for_backward(*tensors)
                ctx.n_inputs = len(inputs)
            # an unused output's gradient arrives as None, not as a zero tensor made and filled for it
            ctx.set_materialize_grads(False)
            return outputs[0] if kernel.n_outputs == 1 else tuple(outputs[:kernel.n_outputs])

        def backward(ctx, *grads):
            g = kernel.backward(*grads, *ctx.saved_tensors, *ctx.state)
            return (*g, *[None] * (ctx.n_inputs - len(g)))

        # the class name shows in grad_fn (``<Name>Backward``): the op's name without its namespace
        title = "".join(p.title() for p in self.name.split("::")[-1].split("_"))
        return type(title, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                         "backward": staticmethod(backward)})

    def _op_setup(self, ctx, inputs, output):
        tensors, ctx.state = self.save(inputs, output)
        ctx.save_for_backward(*tensors)
        ctx.absent = [t is None for t in inputs]

    def _op_backward(self, ctx, *grads):
        g = self.backward_op(*grads[:self.n_outputs], *ctx.saved_tensors, *ctx.state)
        return tuple(None if i >= len(g) or ctx.absent[i] else g[i] for i in range(len(ctx.absent)))

    def __call__(self, *inputs):
        if torch.compiler.is_compiling():
            if self.prepare is not None:
                inputs = self.prepare(*inputs)
            outputs = self.op(*inputs)
        elif _grad_needed(inputs):
            return self.function.apply(*inputs)
        else:  # inference skips autograd's bookkeeping, a visible share of a short call's host time
            if self.prepare is not None:
                inputs = self.prepare(*inputs)
            outputs = self.forward(*inputs)
        return outputs[0] if self.n_outputs == 1 else tuple(outputs[:self.n_outputs])
