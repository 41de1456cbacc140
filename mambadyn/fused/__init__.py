"""The model's fused CUDA path, one room above the selective scan: the mixer after in_proj as one
differentiable call (``mixer``), the causal conv with SiLU (``conv``), RMSNorm with the residual add
(``norm``) and the decoding step's conv and state updates (``step``), all Triton kernels.

``MambaConfig.fused`` chooses this path where ``usable`` says it can run; ``scan_backend`` then plays no
part (the fused mixer carries its own scan, ``scan.triton_scan``'s kernels). ``mixer.mixer_inner_ref`` is the
same computation in plain PyTorch ops, the reference the fused mixer is tested against.
"""

from __future__ import annotations

import importlib.util

import torch

TRITON = importlib.util.find_spec("triton") is not None


def unusable_reason(t: torch.Tensor) -> str | None:
    """None where the fused kernels can run on activations like ``t``, else why not: they run where the
    Triton scan they carry runs (CUDA, or Triton's interpreter; not float64)."""
    if not TRITON:
        return "Triton is not installed"
    from ..scan.triton_scan import triton_unusable_reason  # imports triton: only where it is installed

    return triton_unusable_reason(t)


def usable(t: torch.Tensor) -> bool:
    """Whether the fused kernels can run on activations like ``t``."""
    return unusable_reason(t) is None
