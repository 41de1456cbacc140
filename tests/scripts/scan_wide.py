"""Run by test_triton_scan.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json
from mambadyn.scan.verify import Case, compare_with_reference
cases = [Case(2, 5, 37, 4, initial_state=True, last_state=True), Case(1, 3, 21, 4, forward_only=True)]
opts = dict(block_d=4, chunk=8, bwd_block_d=2, bwd_chunk=16, wide=True, maxnreg=168, bwd_maxnreg=168)
print(json.dumps([compare_with_reference("triton", c, **opts) for c in cases]))
