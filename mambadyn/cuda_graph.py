"""Capturing a CUDA graph, for the decoding step (``nn.decode``) and the training step (``train.graphed``)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def capture(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int) -> tuple[torch.cuda.CUDAGraph, object]:
    """Run ``fn`` ``warmup`` times off the capturing stream (Triton compiles and cuBLAS picks its kernels
    there, which a capture must not see), then capture one call. Returns the graph and what that call
    returned: the tensors each replay writes."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
