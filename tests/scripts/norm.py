"""Run by test_triton_norm.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
import torch
from mambadyn.fused.norm import rms_norm_add
dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
g = torch.Generator().manual_seed(0)
worst = {}
# rows not a multiple of the 16 per program, D not a power of two, with and without a residual input
for dtype in ("float32", "bfloat16"):
    for shape, has_res, fp32 in (((3, 11, 24), True, True), ((37, 50), False, True), ((2, 5, 8), True, False)):
        r64 = lambda: torch.randn(*shape, generator=g, dtype=torch.float64)
        x64, res64, w64 = r64(), r64(), torch.randn(shape[-1], generator=g, dtype=torch.float64)
        gy, gr = r64(), r64()
        ref_in = [t.clone().requires_grad_(True) for t in (x64, res64, w64)]
        rr = ref_in[0] + (ref_in[1] if has_res else 0)
        yy = ref_in[2] * rr * torch.rsqrt(rr.pow(2).mean(-1, keepdim=True) + 1e-5)
        (yy * gy).sum().add_((rr * gr).sum()).backward()
        dt = getattr(torch, dtype)
        ours = [x64.to(dev, dt), res64.to(dev, dt), w64.to(dev, torch.float32)]
        ours = [t.requires_grad_(True) for t in ours]
        y, r = rms_norm_add(ours[0], ours[1] if has_res else None, ours[2], 1e-5, residual_fp32=fp32)
        (y.float() * gy.to(dev).float()).sum().add_((r.float() * gr.to(dev).float()).sum()).backward()
        pairs = {"y": (y, yy), "r": (r, rr), "dx": (ours[0].grad, ref_in[0].grad), "dw": (ours[2].grad, ref_in[2].grad)}
        if has_res:
            pairs["dres"] = (ours[1].grad, ref_in[1].grad)
        for name, (a, b) in pairs.items():
            b = b.detach()
            e = ((a.double().cpu() - b).abs().max() / b.abs().max()).item()
            worst[f"{dtype}-{name}"] = max(worst.get(f"{dtype}-{name}", 0.0), e)
print(json.dumps(worst))
