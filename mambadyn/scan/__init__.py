"""Selective scan: ``selective_scan`` (the door), a plain reference, a chunked PyTorch scan, a fused
CPU kernel (numba) and a Triton kernel on CUDA, behind one registry.

The registry is static: every backend is registered here, the Triton one where Triton is installed (an
availability check, not a guarded import, so a broken module fails loudly instead of vanishing)."""

import importlib.util

from .api import selective_scan, validate_scan_inputs
from .chunked import selective_scan_chunked
from .numba_scan import numba_unusable_reason, selective_scan_numba
from .reference import selective_scan_ref
from .registry import available_backends, register_backend

register_backend("reference", selective_scan_ref, priority=90)
register_backend("chunked", selective_scan_chunked, priority=50)
register_backend("numba", selective_scan_numba, priority=40, unusable_reason=numba_unusable_reason)

if importlib.util.find_spec("triton") is not None:
    from .triton_scan import selective_scan_triton, triton_unusable_reason

    register_backend("triton", selective_scan_triton, priority=10, unusable_reason=triton_unusable_reason)

__all__ = [
    "available_backends",
    "register_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "validate_scan_inputs",
]
