"""Run by test_triton_conv.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
import torch
import torch.nn.functional as F
from mambadyn.fused.conv import causal_conv1d_silu
dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
g = torch.Generator().manual_seed(0)
worst = {}
# d not a multiple of block_d, L not a multiple of block_t and shorter than K - 1 once, K 4 and 3, no bias
for dtype in ("float32", "bfloat16"):
    for b, d, L, K, has_bias in ((2, 37, 100, 4, True), (1, 5, 2, 4, True), (1, 20, 33, 3, False)):
        x64 = torch.randn(b, d, L, generator=g, dtype=torch.float64)
        w64 = torch.randn(d, 1, K, generator=g, dtype=torch.float64) * 0.5
        b64 = torch.randn(d, generator=g, dtype=torch.float64) if has_bias else None
        gy = torch.randn(b, d, L, generator=g, dtype=torch.float64)
        ref_in = [t.clone().requires_grad_(True) for t in (x64, w64) + ((b64,) if has_bias else ())]
        ref = F.silu(F.conv1d(F.pad(ref_in[0], (K - 1, 0)), ref_in[1], ref_in[2] if has_bias else None, groups=d))
        ref.backward(gy)
        dt = getattr(torch, dtype)
        ours_in = [t.detach().to(dev, dt if i == 0 else torch.float32).requires_grad_(True)
                   for i, t in enumerate((x64, w64) + ((b64,) if has_bias else ()))]
        y = causal_conv1d_silu(ours_in[0], ours_in[1], ours_in[2] if has_bias else None, block_d=16, block_t=16)
        y.backward(gy.to(dev, dt))
        errs = {"y": (y.double().cpu(), ref)}
        errs.update({f"d{n}": (o.grad.double().cpu(), r.grad) for n, o, r in zip("xwb", ours_in, ref_in)})
        for name, (a, r) in errs.items():
            e = ((a - r.detach()).abs().max() / r.detach().abs().max().clamp_min(1e-6)).item()
            worst[f"{dtype}-{name}"] = max(worst.get(f"{dtype}-{name}", 0.0), e)
print(json.dumps(worst))
