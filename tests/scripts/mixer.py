"""Run by test_triton_mixer.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import copy, json
import torch
from mambadyn.nn import MambaConfig, MambaLM
interpret = os.environ.get("TRITON_INTERPRET") == "1"
dev = "cuda" if torch.cuda.is_available() and not interpret else "cpu"
worst, paths = {}, {}
cases = [dict(d_model=18, n_layer=2, d_state=5, bias=False, conv_bias=True, residual_in_fp32=True, L=37, b=2),
         dict(d_model=12, n_layer=1, d_state=4, bias=True, conv_bias=False, residual_in_fp32=False, L=9, b=1),
         # L and the strides multiples of 16: the compiled 16-bit backward flips by lane shuffles
         dict(d_model=16, n_layer=1, d_state=16, bias=False, conv_bias=True, residual_in_fp32=True, L=64, b=2)]
for dtype in (torch.float32, torch.bfloat16):
    for i, c in enumerate(cases):
        c = dict(c)
        L, b = c.pop("L"), c.pop("b")
        torch.manual_seed(i)
        fused = MambaLM(MambaConfig(vocab_size=23, scan_backend="triton", **c)).to(dev)
        ref = copy.deepcopy(fused).double()
        for layer in ref.backbone.layers:
            layer.mixer.scan_backend = "reference"
        fused = fused.to(dtype)
        # in bfloat16 the per-op path's own error is the yardstick: the fused one must not be much worse
        plain = copy.deepcopy(fused)
        for layer in plain.backbone.layers:
            layer.mixer.fused = False
        paths[str(i)] = fused.backbone.layers[0].mixer.uses_fused_kernels(torch.zeros(1, device=dev))
        ids = torch.randint(0, 23, (b, L), device=dev)
        w = torch.randn(b, L, 23, device=dev, dtype=torch.float64)
        out_ref = ref(ids)
        (out_ref * w).sum().backward()
        for tag, model in (("fused", fused), ("plain", plain)) if dtype != torch.float32 else (("fused", fused),):
            out = model(ids)
            (out.double() * w).sum().backward()
            errs = {"logits": (out.double(), out_ref)}
            for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
                errs["d:" + ".".join(name.split(".")[-2:])] = (p.grad.double(), q.grad)
            for name, (a, r) in errs.items():  # relative in norm: a max over a few dozen bf16 roundings is noise
                e = ((a - r).norm() / r.norm().clamp_min(1e-12)).item()
                key = f"{tag}-{str(dtype)[6:]}-{name}"
                worst[key] = max(worst.get(key, 0.0), e)
print(json.dumps({"worst": worst, "fused": paths}))
