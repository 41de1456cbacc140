"""Run by test_triton_mixer.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
import torch
from tests.support.compile_check import compile_and_compare
from mambadyn.nn import MambaConfig, MambaLM
torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
m = MambaLM(MambaConfig(vocab_size=20, d_model=16, n_layer=2, d_state=4, scan_backend="triton", bias=True)).to(device)
x = torch.randint(0, 20, (2, 9), device=device)
result = compile_and_compare(m, x)
g = torch.Generator().manual_seed(1)
r = lambda *s: torch.randn(*s, generator=g).to(device)
b, d, L, n, R, Dm = 2, 6, 5, 3, 2, 4
xz = r(2 * d, b * L).view(2 * d, b, L).transpose(0, 1)
mixer = (xz, r(d, 4), r(d), r(R + 2 * n, d), r(d, R), r(Dm, d), None, -torch.rand(d, n, generator=g).to(device), r(d),
         r(d), [2, 8, 1], [2, 8, 1], True)
torch.library.opcheck(torch.ops.mambadyn.mixer_inner, mixer)
torch.library.opcheck(torch.ops.mambadyn.rms_norm_add, (r(7, Dm), r(7, Dm), r(Dm), 1e-5, True))
torch.library.opcheck(torch.ops.mambadyn.rms_norm_add, (r(2, 7, Dm), None, r(Dm), 1e-5, False))
# the scan op alone (the per-op path's): plain inputs, then in the fused mixer's layout (views of matrices)
A = -torch.rand(d, n, generator=g).to(device)
plain = (r(b, d, L), r(b, d, L), A, r(b, n, L), r(b, n, L), r(d), r(b, d, L), r(d), r(b, d, n), True, [2, 8, 1],
         [2, 8, 1], True)
torch.library.opcheck(torch.ops.mambadyn.triton_scan, plain)
view = lambda c: r(c, b * L).view(c, b, L).transpose(0, 1)
torch.library.opcheck(torch.ops.mambadyn.triton_scan, (view(d), view(d), A, view(n), view(n), None, None, None, None,
                                                       False, [2, 8, 1], [2, 8, 1], True))
print(json.dumps(result))
