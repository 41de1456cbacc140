"""Selective scan: ``selective_scan`` (the door), a plain reference, a chunked PyTorch scan,
and a Triton kernel on CUDA, behind one registry."""

from .api import selective_scan, validate_scan_inputs
from .chunked import selective_scan_chunked
from .reference import selective_scan_ref
from .registry import available_backends, register_backend

register_backend("reference", selective_scan_ref, priority=90)
register_backend("chunked", selective_scan_chunked, priority=50)

try:  # the fused CPU kernel, where numba imports
    from .numba_scan import _unusable as _numba_unusable
    from .numba_scan import selective_scan_numba

    register_backend("numba", selective_scan_numba, priority=40, unusable_reason=_numba_unusable)
except ImportError:
    pass

try:  # the Triton kernel registers itself only where triton imports
    from . import triton_scan as _triton_scan  # noqa: F401
except ImportError:
    pass

__all__ = [
    "available_backends",
    "register_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "validate_scan_inputs",
]
