"""The elementwise parts of the selective scan that every PyTorch backend shares:
Δ's bias and softplus before the recurrence, the D skip and the SiLU gate after it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, otherwise float32 (the state is never kept in half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """delta (batch, d, L) -> softplus(delta + bias) (or without softplus)."""
    if delta_bias is not None:
        delta = delta + delta_bias.to(delta.dtype)[:, None]
    return F.softplus(delta) if softplus else delta


def finish(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """y (batch, d, L) -> (y + D u) * silu(z), cast to the input dtype."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)
