"""Run by test_triton_scan.py in a fresh process (Triton's interpreter must be on before triton loads); prints JSON last."""

import os  # noqa: F401  (the scripts read TRITON_INTERPRET)

from tests.support.triton_interpret import enable_if_asked

enable_if_asked()
import json, sys
from mambadyn.scan.verify import Case, compare_with_reference
cases = [Case(**c) for c in json.loads(sys.argv[1])]
# several forward chunks per backward chunk, several of those per sequence; the backward's adjoint
# carried between chunks in registers and in memory
opts = dict(block_d=4, chunk=8, bwd_block_d=2, bwd_chunk=16)
print(json.dumps([compare_with_reference("triton", c, bwd_g_in_memory=g, **opts)
                  for c in cases for g in (False, True)]))
