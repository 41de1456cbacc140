"""A developer's check, not part of the package: make unwritten kernel outputs visible."""

from __future__ import annotations

import torch


def poison_allocator(device, nbytes: int = 1 << 28) -> None:
    """Fill a large block of the CUDA caching allocator with NaN and free it, so a kernel output that
    ``torch.empty`` places there and the kernel fails to write shows up as NaN."""
    if torch.device(device).type != "cuda":
        return
    block = torch.empty(nbytes // 4, device=device, dtype=torch.float32)
    block.fill_(float("nan"))
    del block
