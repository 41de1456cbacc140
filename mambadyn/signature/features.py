"""Paths (t, u) with a zero basepoint, their truncated signatures (through pysiglib), and controls.

pysiglib was chosen over roughpy; both install from the package index here and give the same values
(``benchmarks/signature_libs.py``, ``results/signature/signature_libs.json``). pysiglib takes batched torch tensors
(batch, length, channels) directly and returns the levels concatenated in word order, so the
signature to depth k is a prefix of the one to depth 5. roughpy works one stream at a time through its
own algebra objects.
"""

from __future__ import annotations

import pysiglib
import torch


def _check_path(path: torch.Tensor) -> None:
    if not isinstance(path, torch.Tensor) or path.dim() != 3:
        raise ValueError(f"a batch of paths must be a tensor (batch, points, channels), got "
                         f"{getattr(path, 'shape', type(path).__name__)}")
    if path.shape[1] < 2:
        raise ValueError(f"a path needs at least 2 points to have increments, got {path.shape[1]}")
    if not path.is_floating_point():
        raise TypeError(f"paths must be floating point, got {path.dtype}")
    if not torch.isfinite(path).all():
        raise ValueError("the paths contain NaN or inf")


def signature_width(channels: int, depth: int) -> int:
    """Number of signature terms of levels 1..depth for a path with ``channels`` channels."""
    return sum(channels**k for k in range(1, depth + 1))


def signature(path: torch.Tensor, depth: int) -> torch.Tensor:
    """Truncated signature, levels 1..depth, of each path: (batch, points, channels) ->
    (batch, signature_width(channels, depth)) float64, words in lexicographic order within a level."""
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    _check_path(path)
    return pysiglib.signature(path.double().contiguous(), depth)


def level_prefix(sig: torch.Tensor, channels: int, depth: int) -> torch.Tensor:
    """The first ``depth`` levels of a deeper signature (batch, width) -> (batch, signature_width(c, depth))."""
    return sig[:, : signature_width(channels, depth)]


def time_path(u: torch.Tensor, basepoint: bool = True) -> torch.Tensor:
    """The path w = (t, u) of inputs u (batch, L, c): time t = k / L at sample k = 1..L in the first
    channel. With ``basepoint``, a zero point (t = 0, u = 0) is put in front. Without it, the
    signature sees only increments and cannot tell where u started. Returns (batch, L + 1, 1 + c) float64
    (or (batch, L, 1 + c))."""
    if u.dim() != 3:
        raise ValueError(f"inputs must be (batch, L, channels), got shape {tuple(u.shape)}")
    if not torch.isfinite(u).all():
        raise ValueError("the inputs contain NaN or inf")
    b, L, _ = u.shape
    t = (torch.arange(1, L + 1, dtype=torch.float64) / L).expand(b, L)[..., None]
    w = torch.cat([t, u.double()], dim=-1)
    if basepoint:
        w = torch.cat([torch.zeros(b, 1, w.shape[-1], dtype=w.dtype), w], dim=1)
    return w


def shuffled(path: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The control: each path rebuilt from its own increments in a random order (same start, same end,
    same level-1 signature, scrambled order)."""
    _check_path(path)
    inc = path.diff(dim=1)
    order = torch.argsort(torch.rand(inc.shape[:2], generator=generator), dim=1)
    inc = torch.gather(inc, 1, order[..., None].expand_as(inc))
    return torch.cat([path[:, :1], path[:, :1] + inc.cumsum(dim=1)], dim=1)


def random_features(path: torch.Tensor, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The control: ``width`` random tanh features of the flattened path (a random network of the
    signature's width that sees the whole path). (batch, width) float64."""
    _check_path(path)
    flat = path.flatten(1).double()
    flat = (flat - flat.mean(0)) / flat.std(0).clamp_min(1e-12)
    W = torch.randn(flat.shape[1], width, generator=generator, dtype=torch.float64) / flat.shape[1] ** 0.5
    b = torch.rand(width, generator=generator, dtype=torch.float64) * 2 * torch.pi
    return torch.tanh(flat @ W + b)


def pca(u: torch.Tensor, channels: int) -> torch.Tensor:
    """Project inputs u (batch, L, d) onto their first ``channels`` principal components, fitted over
    every (batch, position), scaled to unit variance per component: (batch, L, channels)."""
    b, L, d = u.shape
    if not 1 <= channels <= d:
        raise ValueError(f"PCA channels must be in 1..{d}, got {channels}")
    x = u.reshape(-1, d).double()
    x = x - x.mean(0)
    _, S, V = torch.linalg.svd(x, full_matrices=False)
    z = x @ V[:channels].T / (S[:channels] / (x.shape[0] - 1) ** 0.5).clamp_min(1e-12)
    return z.reshape(b, L, channels)
