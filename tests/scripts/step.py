"""Run by test_triton_step.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import copy, json
import torch
import torch.nn.functional as F
from mambadyn.nn import MambaConfig, MambaLM
from mambadyn.fused.step import conv_step, ssm_step
dev = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g).to(dev)
worst = {}
# the kernels alone: d not a multiple of the block, n not a power of two, K = 4 and 3, bf16 inputs
for dtype in (torch.float32, torch.bfloat16):
    for b, d, n, K in ((2, 37, 5, 4), (1, 70, 16, 3)):
        x, z, dt = r(b, d).to(dtype), r(b, d).to(dtype), r(b, d).to(dtype)
        state = r(b, d, K).to(dtype)
        w, bias = r(d, 1, K), r(d)
        ref_state = torch.cat([state[..., 1:], x[..., None]], -1)
        ref = F.silu((ref_state.float() * w[:, 0].float()).sum(-1) + bias)
        out = conv_step(x, state, w, bias)
        key = f"conv-{dtype}-{d}"
        worst[key] = max(((out.float() - ref).abs().max() / ref.abs().max()).item(),
                         (state.float() - ref_state.float()).abs().max().item())
        A, B, C, D, dtb = -torch.exp(r(d, n)), r(b, n).to(dtype), r(b, n).to(dtype), r(d), r(d) * 0.1
        h = r(b, d, n)
        delta = F.softplus(dt.float() + dtb)
        h_ref = torch.exp(delta[..., None] * A) * h + (delta * x.float())[..., None] * B.float()[:, None]
        y_ref = ((h_ref * C.float()[:, None]).sum(-1) + D * x.float()) * F.silu(z.float())
        y = ssm_step(x, dt, A, B, C, D, z, dtb, h)
        worst[f"ssm-{dtype}-{d}"] = max(((y.float() - y_ref).abs().max() / y_ref.abs().max()).item(),
                                        ((h - h_ref).abs().max() / h_ref.abs().max()).item())
# the model's step: the Triton path against the PyTorch path, from the same prefilled states
torch.manual_seed(0)
m = MambaLM(MambaConfig(vocab_size=30, d_model=24, n_layer=2, d_state=5, scan_backend="triton")).to(dev)
ids = torch.randint(0, 30, (3, 7), device=dev)
_, states = m.prefill(ids)
plain = copy.deepcopy(m)
for layer in plain.backbone.layers:
    layer.mixer.scan_backend = "reference" if dev == "cpu" else "chunked"
    layer.mixer.fused = False  # the per-op path, whose scan scan_backend picks
s_plain = [tuple(t.clone() for t in s) for s in states]
tok = ids[:, -1]
for _ in range(3):
    a, b_ = m.step(tok, states), plain.step(tok, s_plain)
    worst["model-step"] = max(worst.get("model-step", 0.0), ((a - b_).abs().max() / b_.abs().max()).item())
    tok = a.argmax(-1)
print(json.dumps(worst))
