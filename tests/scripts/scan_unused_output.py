"""Run by test_triton_scan.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
import torch
from mambadyn.scan import selective_scan
g = torch.Generator().manual_seed(0)
b, d, L, n = 1, 3, 20, 4
mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
inputs = (mk(b, d, L), mk(b, d, L) * 0.5 - 1, -torch.exp(mk(d, n) * 0.5), mk(b, n, L), mk(b, n, L), mk(d),
          mk(b, d, L), mk(d) * 0.1)
worst = {}
for use in ("out", "last"):  # the other output's gradient reaches the backward as None
    grads = []
    for backend, dt in (("reference", torch.float64), ("triton", torch.float32)):
        xs = [t.detach().to(dt).clone().requires_grad_(True) for t in inputs]
        out, last = selective_scan(*xs[:5], D=xs[5], z=xs[6], delta_bias=xs[7], delta_softplus=True,
                                   return_last_state=True, backend=backend,
                                   **(dict(block_d=4, chunk=8) if backend == "triton" else {}))
        (out if use == "out" else last).sum().backward()
        grads.append([torch.zeros(x.shape, dtype=torch.float64) if x.grad is None else x.grad.double()
                      for x in xs])
    ref, ours = grads
    worst[use] = max(((a - r).abs().max() / r.abs().max().clamp_min(1e-3)).item() for a, r in zip(ours, ref))
print(json.dumps(worst))
