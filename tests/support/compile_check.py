"""A developer's check shared by the scan backends' tests: does ``torch.compile`` take a model in one graph,
and does the compiled model compute what the eager one does, parameter gradients included?"""

from __future__ import annotations

import torch


def compile_and_compare(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """-> {"breaks", "graphs", "reasons"} from dynamo's explain, and "err": the largest absolute difference
    between compiled (aot_eager, fullgraph) and eager outputs and parameter gradients of ``model(x).sum()``."""
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    y = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.sum().backward()
    err = max([(y - ref).abs().max().item()]
              + [(g - p.grad).abs().max().item() for g, p in zip(grads, model.parameters())])
    return {"breaks": explained.graph_break_count, "graphs": explained.graph_count,
            "reasons": [str(r) for r in explained.break_reasons], "err": err}
