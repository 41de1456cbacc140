"""A whole training step (forward, backward, clipping, optimizer step) captured in one CUDA graph.

A step of a deep Mamba stack issues about a thousand kernel launches, and on a fast GPU the CPU issuing
them sets the pace, not the kernels (measured in results/model_gpu.md). Captured once, the step replays
with one launch.

The step must then be the same each time: a fixed batch shape, an optimizer made with ``capturable=True``,
and nothing in the step that reads a GPU value on the CPU (mambadyn's models skip their input checks
while a graph is captured). Each group's learning rate becomes a tensor the graph reads, so a scheduler
can change it (call ``keep_lr_tensors()`` after its step). ``mambadyn train ... --set run.cuda_graph=true``
trains this way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cuda_graph import capture


class GraphedTrainStep:
    """``step(x, y) -> loss``: one training step of ``model`` on the batch (x, y), replayed from a CUDA graph.

    ``loss_fn(model, x, y) -> scalar loss`` is the forward (autocast is applied around it when ``amp_dtype``
    is given). Capturing runs ``warmup`` steps first (Triton compiles, cuBLAS picks its kernels); the model's
    weights and the optimizer's state are put back afterwards, so making the step changes nothing. The
    returned loss is the graph's own tensor, overwritten by the next step: clone it to keep it.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None = torch.bfloat16,
                 grad_clip: float | None = None, warmup: int = 3):
        if not x.is_cuda:
            raise ValueError(f"a CUDA graph needs the batch on CUDA, not {x.device}")
        if not all(g.get("capturable", False) for g in optimizer.param_groups):
            raise ValueError("the optimizer must be made with capturable=True to be captured in a CUDA graph")
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.amp_dtype, self.grad_clip = amp_dtype, grad_clip
        self.x, self.y = x.clone(), y.clone()
        self.grad_norm = None  # the clipped gradients' norm before clipping, where grad_clip is given
        # the graph reads each group's lr from a tensor, which a scheduler can then change (keep_lr_tensors)
        for g in optimizer.param_groups:
            if not torch.is_tensor(g["lr"]):
                g["lr"] = torch.tensor(float(g["lr"]), device=x.device)
        self.lr = [g["lr"] for g in optimizer.param_groups]
        params = [p for p in model.parameters() if p.requires_grad]
        saved_params = [p.detach().clone() for p in params]
        saved_state = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
                       for p in params if optimizer.state.get(p)}

        def fresh_step():
            # gradients set to None: captured, they are allocated in the graph and rewritten by each replay
            optimizer.zero_grad(set_to_none=True)
            return self._step()

        self.graph, self.loss = capture(fresh_step, x.device, warmup)
        # put back what the warm-up changed, in place: the graph holds these tensors' addresses
        with torch.no_grad():
            for p, s in zip(params, saved_params):
                p.copy_(s)
            for p in params:
                before = saved_state.get(id(p))  # None: the warm-up made this state, which starts at zero
                for k, v in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(v):
                        if before is None:
                            v.zero_()
                        else:
                            v.copy_(before[k])

    def _step(self) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model, self.x, self.y)
        loss.backward()
        if self.grad_clip is not None:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def keep_lr_tensors(self) -> None:
        """After a scheduler step: put each group's new lr into the tensor the graph reads (a scheduler that
        assigns a number instead of filling the tensor would otherwise go unseen)."""
        for g, t in zip(self.optimizer.param_groups, self.lr):
            if g["lr"] is not t:
                t.fill_(float(g["lr"]))
                g["lr"] = t

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != self.x.shape or y.shape != self.y.shape:
            raise ValueError(f"the graph was captured for batches of shape {tuple(self.x.shape)} / "
                             f"{tuple(self.y.shape)}, got {tuple(x.shape)} / {tuple(y.shape)}")
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss
