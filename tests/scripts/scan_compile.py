"""Run by test_triton_scan.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
import torch
from tests.support.compile_check import compile_and_compare
from mambadyn.nn import MambaConfig, MambaLM
torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
# fused=False: eager then runs the per-op path that compiles (the fused kernels step aside under compile), so
# the two compute the same thing in the same order
m = MambaLM(MambaConfig(vocab_size=20, d_model=16, n_layer=2, d_state=4, scan_backend="triton",
                        fused=False)).to(device)
x = torch.randint(0, 20, (2, 9), device=device)
result = compile_and_compare(m, x)
g = torch.Generator().manual_seed(1)
r = lambda *s: torch.randn(*s, generator=g).to(device)
args = (r(1, 3, 6), r(1, 3, 6), -torch.rand(3, 4, generator=g).to(device), r(1, 4, 6), r(1, 4, 6), r(3), r(1, 3, 6),
        r(3), r(1, 3, 4), True, [2, 8, 1], [2, 8, 1], True)
torch.library.opcheck(torch.ops.mambadyn.triton_scan, args)
print(json.dumps(result))
