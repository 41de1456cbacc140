"""RMSNorm and the pre-norm residual block  h <- h + mixer(norm(h))."""

from __future__ import annotations

import torch
from torch import nn

from .config import MambaConfig
from .mixer import MambaMixer


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual block. Its residual stream is the token state whose dynamics across depth
    ``mambadyn.dynamics`` studies."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.rms_eps)
        self.mixer = MambaMixer(config, layer_idx)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, return_state: bool = False):
        """h (batch, L, d_model) -> (batch, L, d_model) [, mixer state]."""
        residual = h.float() if self.residual_in_fp32 else h
        out = self.mixer(self.norm(h.to(self.norm.weight.dtype)), return_state=return_state)
        out, state = out if return_state else (out, None)
        h = residual + self.drop(out)
        return (h, state) if return_state else h

    def step(self, h: torch.Tensor, state) -> torch.Tensor:
        """h (batch, d_model) -> (batch, d_model), updating ``state`` in place."""
        residual = h.float() if self.residual_in_fp32 else h
        return residual + self.mixer.step(self.norm(h.to(self.norm.weight.dtype)), state)
