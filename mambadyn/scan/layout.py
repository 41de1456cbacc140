"""Memory layouts the Triton kernels accept without a copy."""

from __future__ import annotations

import torch


def is_dense(t: torch.Tensor) -> bool:
    """True where t's elements fill their storage span exactly, in some order of the dimensions (a
    permuted contiguous tensor): ``torch.empty_like`` then gives a buffer with t's strides."""
    if t.is_contiguous():  # the common case, without the Python walk over the dimensions
        return True
    expected = 1
    for i in sorted(range(t.dim()), key=lambda i: t.stride(i)):
        if t.shape[i] > 1 and t.stride(i) != expected:
            return False
        expected *= t.shape[i]
    return True


def is_matrix_view(t: torch.Tensor) -> bool:
    """True where t (batch, c, L) has strides (L, batch L, 1): a view of a (c, batch L) row-major matrix, the
    layout in which the fused mixer's products and kernels meet (``mambadyn.fused.mixer``)."""
    batch, _, L = t.shape
    return t.stride() == (L, batch * L, 1)
